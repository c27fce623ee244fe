"""Generate the structures of a phonon-informed (or random-displacement) training set.

One call makes a batch of chemically disordered, thermally displaced supercells of a binary
solid solution host_(1-x) guest_x on one sublattice: compositions drawn per structure, sites
decorated at random, the cell and fractional coordinates interpolated between the two end members'
supercells by Vegard's law, and displacements drawn from the
parents' harmonic phonons (paper eq. 1, ``uniform``; canonical normal modes, ``gaussian``) or
uniformly at random (second paper eq. 2). Pure numpy/ase: the AiiDA calcfunctions call it and
the benchmark times it.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import ase
import numpy as np

from aiida_capthermo.core.displacements import (
    SupercellModes,
    sample_mixed_phonon_displacements,
    sample_random_displacements,
)
from aiida_capthermo.core.solid_solution import draw_compositions, random_configuration
from aiida_capthermo.core.structures import vegard_structure

__all__ = ['GenerationSpec', 'GeneratedStructure', 'generate_structures']


@dataclasses.dataclass(frozen=True)
class GenerationSpec:
    """What to generate (the end members' cells come with the reference supercells)."""

    host: str  # species on the disordered sublattice at x = 0 (e.g. I)
    guest: str  # substituting species (e.g. Br)
    n_structures: int
    seed: int
    scheme: Literal['phonon', 'random', 'equilibrium'] = 'phonon'
    distribution: Literal['uniform', 'gaussian'] = 'uniform'
    temperature: float = 300.0  # K, for the phonon scheme
    amplitude: float = 0.1  # Å, for the random scheme
    composition_mode: Literal['grid', 'binomial'] = 'grid'
    x_values: tuple[float, ...] | None = None  # grid of compositions (default: every k/n_sites)
    stratum: int = 0  # index of this batch (temperature) in the stratified (x, T) design of the composition grid

    def __post_init__(self) -> None:
        if self.n_structures < 1:
            raise ValueError(f'n_structures must be at least 1, got {self.n_structures}')
        if self.scheme not in ('phonon', 'random', 'equilibrium'):
            raise ValueError(f"scheme must be 'phonon', 'random' or 'equilibrium', got {self.scheme!r}")
        if self.distribution not in ('uniform', 'gaussian'):
            raise ValueError(f"distribution must be 'uniform' or 'gaussian', got {self.distribution!r}")
        if self.temperature < 0 or not np.isfinite(self.temperature):
            raise ValueError(f'temperature must be a finite number >= 0 K, got {self.temperature}')
        if self.amplitude <= 0 and self.scheme == 'random':
            raise ValueError(f'the random amplitude must be positive, got {self.amplitude}')


@dataclasses.dataclass
class GeneratedStructure:
    atoms: ase.Atoms
    x: float
    temperature: float  # K; NaN for the random scheme
    origin: str


def generate_structures(spec: GenerationSpec, reference: ase.Atoms, modes_host: SupercellModes | None = None,
                        modes_guest: SupercellModes | None = None,
                        guest_reference: ase.Atoms | None = None) -> list[GeneratedStructure]:
    """Generate ``spec.n_structures`` structures from the reference supercell (all host on the sublattice).

    Parameters
    ----------
    spec
        What to generate.
    reference
        The undisplaced parent supercell at x = 0, in the atom order of the phonon modes (phonopy's supercell).
    guest_reference
        The undisplaced x = 1 end member's supercell in the same atom order (every host site taken by the guest).
        A structure of composition x gets the cell and fractional coordinates of
        :func:`~aiida_capthermo.core.structures.vegard_structure` between the two. None: the reference's cell at
        every x.
    modes_host, modes_guest
        Harmonic modes of the x = 0 and x = 1 parents in that supercell. For the phonon scheme at least one is
        needed; with both, a structure of composition x draws from their mixture with weights (1 - x, x)
        (see :func:`~aiida_capthermo.core.displacements.sample_mixed_phonon_displacements`); with one, it is
        used at every composition.

    Returns
    -------
    list of GeneratedStructure
        Reproducible for a given ``spec.seed``.
    """
    sites = np.flatnonzero(np.array(reference.get_chemical_symbols()) == spec.host)
    if len(sites) == 0:
        raise ValueError(f'the reference supercell has no {spec.host} site to substitute')
    if spec.scheme == 'phonon' and modes_host is None and modes_guest is None:
        raise ValueError('the phonon scheme needs the harmonic modes of at least one parent')
    for modes in (modes_host, modes_guest):
        if modes is not None and modes.n_atoms != len(reference):
            raise ValueError(f'phonon modes are for {modes.n_atoms} atoms, the reference supercell has '
                             f'{len(reference)}')

    rng = np.random.default_rng(spec.seed)
    counts = draw_compositions(spec.n_structures, len(sites), spec.composition_mode, rng, spec.x_values,
                               stratum=spec.stratum)
    if guest_reference is None:
        guest_reference = reference.copy()
        guest_reference.symbols[sites] = spec.guest
    symbols = np.array(reference.get_chemical_symbols())
    generated = []
    for count in counts:
        x = count / len(sites)
        mask = random_configuration(len(sites), int(count), rng)
        new_symbols = symbols.copy()
        new_symbols[sites[mask]] = spec.guest
        ideal = vegard_structure(reference, guest_reference, x)
        cell = ideal.cell.array  # [3, 3] Å
        positions = ideal.positions  # [N, 3] Å
        temperature = float('nan')
        if spec.scheme == 'phonon':
            mix = [(m, w) for m, w in ((modes_host, 1.0 - x), (modes_guest, x)) if m is not None]
            if len(mix) == 1:
                mix = [(mix[0][0], 1.0)]
            mix = [(m, w) for m, w in mix if w > 0]
            positions = positions + sample_mixed_phonon_displacements(mix, spec.temperature, 1, spec.distribution,
                                                                      rng)[0]
            temperature = float(spec.temperature)
        elif spec.scheme == 'random':
            positions = positions + sample_random_displacements(len(reference), spec.amplitude, 1, rng)[0]
        else:
            temperature = 0.0
        atoms = ase.Atoms(symbols=new_symbols.tolist(), positions=positions, cell=cell, pbc=True)
        generated.append(GeneratedStructure(atoms=atoms, x=float(x), temperature=temperature, origin=spec.scheme))
    return generated
