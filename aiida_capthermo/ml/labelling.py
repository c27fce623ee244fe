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

HARTREE_TO_EV = 27.211386245988


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

    def make_calculator(self):
        if self.name == 'emt':
            from ase.calculators.emt import EMT

            return EMT()
        from tblite.ase import TBLite

        return TBLite(method=self.method, accuracy=self.accuracy, electronic_temperature=self.electronic_temperature,
                      max_iterations=self.max_iterations, mixer_damping=self.mixer_damping, verbosity=0)


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


def label_structures(structures: LabelledSet, spec: CalculatorSpec) -> tuple[LabelledSet, list[dict]]:
    """Label every structure of ``structures``; return the labelled set (NaN rows for failures) and per-structure records.

    Each record is ``{'index', 'status': 'ok'|'failed', 'error', 'seconds'}``.
    """
    n = len(structures)
    energy, gap, vbm, cbm = (np.full(n, np.nan) for _ in range(4))
    stress = np.full((n, 6), np.nan)
    forces = np.full((int(structures.n_atoms.sum()), 3), np.nan)
    offsets = structures.offsets
    records = []
    for index in range(n):
        atoms = structures.atoms(index, with_labels=False)
        atoms.calc = spec.make_calculator()
        start = time.perf_counter()
        record = {'index': index, 'status': 'ok', 'error': None}
        try:
            if 'energy' in spec.properties:
                energy[index] = atoms.get_potential_energy()
            if 'forces' in spec.properties:
                forces[offsets[index]:offsets[index + 1]] = atoms.get_forces()
            if 'stress' in spec.properties:
                stress[index] = atoms.get_stress(voigt=True)
            if 'gap' in spec.properties and spec.name == 'tblite':
                if atoms.calc._res is None:  # gap only requested: run the single point
                    atoms.get_potential_energy()
                result = atoms.calc._res
                gap[index], vbm[index], cbm[index] = gap_from_orbitals(
                    result.get('orbital-energies') * HARTREE_TO_EV, result.get('orbital-occupations'))
        except Exception as exception:  # noqa: BLE001 - a failed structure is recorded, the batch goes on
            record.update(status='failed', error=f'{type(exception).__name__}: {exception}')
            energy[index] = gap[index] = vbm[index] = cbm[index] = np.nan
            stress[index] = np.nan
            forces[offsets[index]:offsets[index + 1]] = np.nan
        record['seconds'] = time.perf_counter() - start
        records.append(record)
    labelled = LabelledSet(numbers=structures.numbers, positions=structures.positions, cells=structures.cells,
                           n_atoms=structures.n_atoms, energy=energy, forces=forces, stress=stress, gap=gap, vbm=vbm,
                           cbm=cbm, x=structures.x, temperature=structures.temperature, origin=structures.origin,
                           structure_uuid=structures.structure_uuid)
    return labelled, records
