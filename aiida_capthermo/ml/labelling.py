"""Label structures with an ASE calculator on the compute side: energy, forces, stress and a Γ-point band gap.

This is the ``local`` labelling engine (DESIGN.md §3): tblite's GFN1-xTB / GFN2-xTB / IPEA1-xTB, or ASE's EMT
for quick mechanics checks. A structure whose SCF does not converge is recorded as failed with its error and
does not stop the batch.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from aiida_capthermo.core.dataset import LabelledSet

__all__ = ['CalculatorSpec', 'label_structures', 'gap_from_orbitals']

class CalculatorSpec(BaseModel):
    """Which calculator labels the structures, and how. Unknown keys are rejected."""

    model_config = ConfigDict(extra='forbid')

    name: Literal['tblite', 'emt'] = Field('tblite', description='ASE calculator: tblite (xTB) or emt (metals only, no gap).')
    method: Literal['GFN1-xTB', 'GFN2-xTB', 'IPEA1-xTB'] = Field('GFN1-xTB', description='tblite Hamiltonian.')
    accuracy: float = Field(1.0, gt=0, description='tblite numerical accuracy (smaller is tighter).')
    electronic_temperature: float = Field(300.0, gt=0, description='Fermi smearing temperature in K.')
    max_iterations: int = Field(250, gt=0, description='Maximum number of SCF iterations.')
    mixer_damping: float = Field(0.4, gt=0, le=1, description='Broyden mixer damping.')
    properties: list[Literal['energy', 'forces', 'stress', 'gap']] = Field(
        default_factory=lambda: ['energy', 'forces', 'stress', 'gap'], description='Labels to compute.')


def gap_from_orbitals(orbital_energies: np.ndarray, occupations: np.ndarray) -> tuple[float, float, float]:
    """Γ-point band gap, VBM and CBM (eV) from orbital energies (eV) and occupations (0..2 per orbital).

    The number of doubly occupied states is fixed by the electron count (closed shell), so fractional Fermi
    occupations from the electronic temperature do not move the band edges.
    """
    energies = np.sort(np.asarray(orbital_energies, dtype=float))
    n_electrons = float(np.sum(occupations))
    n_occupied = int(round(n_electrons / 2.0))
    if n_occupied < 1 or n_occupied >= len(energies):
        raise ValueError(f'cannot place the band edges: {n_electrons} electrons in {len(energies)} orbitals')
    vbm, cbm = energies[n_occupied - 1], energies[n_occupied]
    return float(cbm - vbm), float(vbm), float(cbm)


def _tblite_single_point(atoms, spec: CalculatorSpec) -> dict:
    """One tblite single point through its public ``interface``: energy (eV), forces (eV/Å), stress (eV/Å^3, Voigt,
    ASE sign), and the Γ-point gap, VBM and CBM (eV) from the orbital energies and occupations."""
    from ase.units import Bohr, Hartree, kB
    from tblite.interface import Calculator

    calculator = Calculator(spec.method, atoms.numbers, atoms.positions / Bohr, lattice=np.asarray(atoms.cell) / Bohr,
                            periodic=np.asarray(atoms.pbc))
    calculator.set('accuracy', spec.accuracy)
    calculator.set('temperature', spec.electronic_temperature * kB / Hartree)
    calculator.set('max-iter', spec.max_iterations)
    calculator.set('mixer-damping', spec.mixer_damping)
    calculator.set('verbosity', 0)
    result = calculator.singlepoint()
    virial = result.get('virial') * Hartree / atoms.get_volume()  # [3, 3]
    gap, vbm, cbm = gap_from_orbitals(result.get('orbital-energies') * Hartree, result.get('orbital-occupations'))
    return {'energy': float(result.get('energy')) * Hartree, 'forces': -result.get('gradient') * Hartree / Bohr,
            'stress': virial.flat[[0, 4, 8, 5, 2, 1]], 'gap': gap, 'vbm': vbm, 'cbm': cbm}


def _emt_single_point(atoms, spec: CalculatorSpec) -> dict:
    """Energy, forces and stress from ASE's EMT (metals only, no band edges)."""
    from ase.calculators.emt import EMT

    atoms.calc = EMT()
    return {'energy': atoms.get_potential_energy(), 'forces': atoms.get_forces(),
            'stress': atoms.get_stress(voigt=True)}


def label_structures(structures: LabelledSet, spec: CalculatorSpec) -> tuple[LabelledSet, list[dict]]:
    """Label every structure of ``structures``; return the labelled set (NaN rows for failures) and per-structure records.

    Each record is ``{'index', 'status': 'ok'|'failed', 'error', 'seconds'}``. Only the requested properties are
    stored; the others stay NaN.
    """
    n = len(structures)
    labels = {name: np.full(n, np.nan) for name in ('energy', 'gap', 'vbm', 'cbm')}
    stress = np.full((n, 6), np.nan)
    forces = np.full((int(structures.n_atoms.sum()), 3), np.nan)
    offsets = structures.offsets
    single_point = _tblite_single_point if spec.name == 'tblite' else _emt_single_point
    wanted = set(spec.properties) | ({'vbm', 'cbm'} if 'gap' in spec.properties else set())
    records = []
    for index in range(n):
        atoms = structures.atoms(index, with_labels=False)
        start = time.perf_counter()
        record = {'index': index, 'status': 'ok', 'error': None}
        try:
            result = single_point(atoms, spec)
        except Exception as exception:  # noqa: BLE001 - a failed structure is recorded, the batch goes on
            record.update(status='failed', error=f'{type(exception).__name__}: {exception}')
        else:
            for name in labels:
                if name in wanted and name in result:
                    labels[name][index] = result[name]
            if 'forces' in wanted:
                forces[offsets[index]:offsets[index + 1]] = result['forces']
            if 'stress' in wanted:
                stress[index] = result['stress']
        record['seconds'] = time.perf_counter() - start
        records.append(record)
    labelled = LabelledSet(numbers=structures.numbers, positions=structures.positions, cells=structures.cells,
                           n_atoms=structures.n_atoms, forces=forces, stress=stress, x=structures.x,
                           temperature=structures.temperature, origin=structures.origin,
                           structure_uuid=structures.structure_uuid, **labels)
    return labelled, records
