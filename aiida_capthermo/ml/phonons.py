"""Harmonic and finite-temperature phonons with an MLIP on the compute side (``capthermo-mlip phonons``).

Harmonic: phonopy finite displacements of each relaxed cell, every displaced supercell of a structure evaluated in
batched model calls (:func:`aiida_capthermo.ml.mlip.batched_forces`), bands along the cubic path.

Finite temperature: Langevin MD of the phonon supercell at each temperature (every structure x temperature x replica
one system of a batched TorchSim simulation; an equilibration run with strong friction, then a production run with
the production friction whose velocities are recorded), the velocities decomposed onto the harmonic modes and a
Lorentzian fitted to each mode's power spectrum (:mod:`aiida_capthermo.core.normal_modes`). The renormalised
frequencies rebuild the supercell force constants, which give renormalised frequencies at the commensurate q points
and, through phonopy's interpolation, renormalised bands.

Units: Å, amu, fs, eV, K; frequencies THz (negative = imaginary).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field, field_validator, model_validator

from aiida_capthermo.ml.settings import ModelRunSettings

__all__ = ['PhononConfig', 'commensurate_frequencies', 'finite_temperature_phonons',
           'EV_PER_AMU_A2_FS2']

#: amu Å² / fs² in eV (kinetic energy unit of mass-weighted velocities in Å/fs).
EV_PER_AMU_A2_FS2 = 103.642697


class PhononConfig(ModelRunSettings):
    """Settings of ``capthermo-mlip phonons`` (unknown keys are rejected)."""

    supercell: list[int] = Field(default_factory=lambda: [1, 1, 1],
                                 description='Diagonal phonon supercell of each structure; also the MD cell.')
    displacement: float = Field(0.01, gt=0, le=0.1, description='Finite displacement of phonopy (Å).')
    imaginary_threshold: float = Field(-0.1, le=0, description='Frequencies below this (THz) count as imaginary.')
    band_points: int = Field(31, ge=2, description='q points per segment of the band path.')
    batch_size: int = Field(8, ge=1, description='Displaced supercells per model call (8 is fastest on one CPU thread: '
                                                 '1.24x over one by one, 64 is 0.6x; raise it on a GPU).')
    temperatures: list[float] = Field(default_factory=list,
                                      description='Temperatures (K, > 0) of the finite-temperature phonons; none: '
                                                  'harmonic only.')
    replicas: int = Field(1, ge=1, description='Independent MD runs per structure and temperature (spectra averaged).')
    equilibration_steps: int = Field(1000, ge=0, description='MD steps with the equilibration friction first.')
    equilibration_friction: float = Field(1e-2, gt=0, description='Langevin friction of the equilibration (1/fs).')
    steps: int = Field(8000, ge=16, description='Production MD steps whose velocities are decomposed.')
    timestep: float = Field(2.0, gt=0, description='MD time step (fs).')
    friction: float = Field(2e-4, gt=0, description='Langevin friction of the production run (1/fs); it broadens '
                                                    'every line by friction / 2 pi (0.03 THz at 2e-4, 0.16 THz at '
                                                    "1e-3, the thermal-gap MD's).")
    sample_stride: int = Field(4, ge=1, description='Steps between velocity samples (Nyquist frequency '
                                                    '1 / (2 stride timestep)).')
    segments: int = Field(1, ge=1, description='Spectrum averaged over this many pieces of each run.')
    fit_window: float = Field(1.0, gt=0, description='Half width (THz) of the Lorentzian fit around each peak.')
    seed: int = Field(0, ge=0, description='Seed of the velocities and of the Langevin noise.')
    stop_distance: float = Field(1.0, gt=0, description='A run with two atoms closer than this (Å) is broken.')

    @field_validator('supercell')
    @classmethod
    def _three_positive(cls, value):
        if len(value) != 3 or min(value) < 1:
            raise ValueError(f'expected three positive integers, got {value}')
        return value

    @model_validator(mode='after')
    def _sampling(self) -> 'PhononConfig':
        if any(t <= 0 for t in self.temperatures):
            raise ValueError(f'temperatures must be > 0 K, got {self.temperatures}')
        if len(set(self.temperatures)) != len(self.temperatures):
            raise ValueError(f'temperatures repeat: {self.temperatures}')
        if self.steps // self.sample_stride // self.segments < 16:
            raise ValueError(f'steps / sample_stride / segments = {self.steps // self.sample_stride // self.segments}'
                             ' samples per spectrum; need at least 16')
        return self

    @property
    def resolution(self) -> float:
        """Frequency resolution of the spectra (THz): one over the length of a segment."""
        samples = self.steps // self.sample_stride // self.segments
        return 1.0 / (samples * self.sample_stride * self.timestep * 1e-3)


def commensurate_frequencies(phonon) -> tuple[np.ndarray, np.ndarray]:
    """The q points commensurate with the supercell of ``phonon`` (reciprocal coordinates of the unit cell) and the
    frequencies there (THz) from its force constants: exact, not interpolated."""
    from phonopy.harmonic.dynmat_to_fc import get_commensurate_points

    points = np.asarray(get_commensurate_points(phonon.supercell_matrix))
    return points, np.array([np.sort(phonon.get_frequencies(q)) for q in points])


def _with_force_constants(phonon, force_constants):
    """A copy of ``phonon`` with other supercell force constants."""
    from phonopy import Phonopy

    copy = Phonopy(phonon.unitcell, supercell_matrix=phonon.supercell_matrix, primitive_matrix=np.eye(3))
    copy.force_constants = force_constants
    return copy


def finite_temperature_phonons(model, phonons: Sequence, settings: PhononConfig) -> list[dict]:
    """Renormalised phonons of every structure (``phonons``: Phonopy objects with force constants) at every
    temperature of ``settings``.

    All structure x temperature x replica runs share one batched TorchSim simulation for the equilibration and one
    for the production. Returns per structure a dict keyed by temperature (``'300.0'``) with: ``harmonic`` and
    ``renormalised`` frequencies of the supercell Γ modes (THz, harmonic order), ``linewidth`` (FWHM THz),
    ``fitted`` flags, ``acoustic`` mode indices, ``equipartition`` (mean over optical modes of <v_s^2> / k_B T,
    1 at equilibrium), ``commensurate`` q points and their renormalised frequencies, the ``phonopy`` object with the
    renormalised force constants, ``spectrum`` (frequencies THz, spectra of every mode), ``resolution`` (THz),
    ``unresolved`` (optical modes whose peak stays below max(resolution, |imaginary_threshold|): not stabilised),
    ``stabilised`` (none unresolved), ``broke`` (a run's failure, in which case nothing else is given).
    """
    import ase
    from ase import units

    from aiida_capthermo.core.displacements import SupercellModes
    from aiida_capthermo.core.normal_modes import (fit_lorentzian, power_spectrum, project_velocities,
                                                   renormalised_force_constants)
    from aiida_capthermo.ml.thermal import run_replicas

    runs = [(index, temperature, replica) for index in range(len(phonons)) for temperature in settings.temperatures
            for replica in range(settings.replicas)]
    if not runs:
        return [{} for _ in phonons]
    cells = []
    for phonon in phonons:
        supercell = phonon.supercell
        cells.append(ase.Atoms(symbols=supercell.symbols, cell=supercell.cell,
                               scaled_positions=supercell.scaled_positions, pbc=True))
    temperatures = [temperature for _, temperature, _ in runs]
    seeds = [settings.seed + number for number in range(len(runs))]
    common = {'timestep': settings.timestep, 'fix_com': True, 'stop_distance': settings.stop_distance,
              'max_temperature_ratio': 3.0}
    starts = [cells[index] for index, _, _ in runs]
    if settings.equilibration_steps:
        equilibrated = run_replicas(model, starts, temperatures, seeds, steps=settings.equilibration_steps,
                                    friction=settings.equilibration_friction, stride=settings.equilibration_steps,
                                    batch_seed=settings.seed, **common)
        starts = []
        for (index, _, _), trajectory in zip(runs, equilibrated):
            start = cells[index].copy()
            if trajectory.broke is None:
                start.positions = trajectory.positions[-1]
            starts.append(start)
        broke = [trajectory.broke for trajectory in equilibrated]
    else:
        broke = [None] * len(runs)
    production = run_replicas(model, starts, temperatures, [seed + 104729 for seed in seeds], steps=settings.steps,
                              friction=settings.friction, stride=settings.sample_stride, store_velocities=True,
                              batch_seed=settings.seed + 1, **common)
    results: list[dict] = [{} for _ in phonons]
    for index, phonon in enumerate(phonons):
        masses = np.asarray(cells[index].get_masses())
        modes = SupercellModes.from_force_constants(phonon.force_constants, masses, frequency_cutoff=0.0,
                                                    imaginary='absolute')  # translations projected out, skipped
        harmonic, eigenvectors, acoustic = modes.frequencies, modes.eigenvectors, modes.skipped
        optical = np.setdiff1d(np.arange(len(harmonic)), acoustic)
        for temperature in settings.temperatures:
            numbers = [n for n, (i, t, _) in enumerate(runs) if i == index and t == temperature]
            failures = [broke[n] or production[n].broke for n in numbers if broke[n] or production[n].broke]
            key = str(float(temperature))
            if failures:
                results[index][key] = {'broke': failures[0]}
                continue
            spectra, mean_square = [], []
            for n in numbers:
                projected = project_velocities(production[n].velocities, masses, eigenvectors)
                frequencies, spectrum = power_spectrum(projected, settings.sample_stride * settings.timestep,
                                                       settings.segments)
                spectra.append(spectrum)
                mean_square.append(np.mean(projected**2, axis=0))
            spectrum = np.mean(spectra, axis=0)
            kinetic = np.mean(mean_square, axis=0) * EV_PER_AMU_A2_FS2 / (units.kB * temperature)
            renormalised = np.zeros_like(harmonic)
            linewidth = np.zeros_like(harmonic)
            fitted = np.zeros(len(harmonic), dtype=bool)
            for mode in optical:
                fit = fit_lorentzian(frequencies, spectrum[:, mode], window=settings.fit_window,
                                     guess=abs(harmonic[mode]))
                renormalised[mode], linewidth[mode], fitted[mode] = fit.frequency, fit.linewidth, fit.fitted
            floor = max(settings.resolution, abs(settings.imaginary_threshold))
            unresolved = [int(mode) for mode in optical if renormalised[mode] < floor]
            renormalised_phonon = _with_force_constants(
                phonon, renormalised_force_constants(masses, eigenvectors, renormalised))
            points, commensurate = commensurate_frequencies(renormalised_phonon)
            results[index][key] = {
                'broke': None, 'harmonic': harmonic, 'renormalised': renormalised, 'linewidth': linewidth,
                'fitted': fitted, 'acoustic': acoustic, 'equipartition': float(np.mean(kinetic[optical])),
                'commensurate_points': points, 'commensurate_frequencies': commensurate,
                'phonopy': renormalised_phonon, 'spectrum': (frequencies, spectrum),
                'resolution': settings.resolution, 'unresolved': unresolved, 'stabilised': not unresolved,
                'mean_temperature': float(np.mean([production[n].temperature.mean() for n in numbers])),
            }
    return results
