"""Harmonic and finite-temperature phonons with an MLIP on the compute side (``capthermo-mlip phonons``).

Harmonic: phonopy finite displacements of each relaxed cell, every displaced supercell of a structure evaluated in
batched model calls (:func:`aiida_capthermo.ml.mlip.batched_forces`), bands along the cubic path.

Finite temperature: Langevin MD of the phonon supercell at each temperature through the package's MD engine
(:func:`aiida_capthermo.ml.thermal.run_replicas`: every structure x temperature x replica one system of a batched
TorchSim simulation; an equilibration run with strong friction, then a production run with the production friction
whose velocities are recorded), the velocities decomposed onto the harmonic modes and a
Lorentzian fitted to each mode's power spectrum (:mod:`aiida_capthermo.core.normal_modes`). The renormalised
frequencies rebuild the supercell force constants, which give renormalised frequencies at the commensurate q points
and, through phonopy's interpolation, renormalised bands.

The settings, :class:`~aiida_capthermo.ml.settings.PhononConfig`, live in the torch-free
:mod:`aiida_capthermo.ml.settings`. Units: Å, amu, fs, eV, K; frequencies THz (negative = imaginary).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aiida_capthermo.ml.settings import PhononConfig

__all__ = ['commensurate_frequencies', 'finite_temperature_phonons', 'EV_PER_AMU_A2_FS2']

#: amu Å² / fs² in eV (kinetic energy unit of mass-weighted velocities in Å/fs).
EV_PER_AMU_A2_FS2 = 103.642697


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

    All structure x temperature x replica runs share one batched simulation of the MD engine
    (:func:`aiida_capthermo.ml.thermal.run_replicas`) for the equilibration and one for the production. Returns per
    structure a dict keyed by temperature (``'300.0'``) with: ``harmonic`` and ``renormalised`` frequencies of the
    supercell Γ modes (THz, harmonic order), ``linewidth`` (FWHM THz), ``fitted`` flags, ``acoustic`` mode indices,
    ``equipartition`` (mean over optical modes of <v_s^2> / k_B T, 1 at equilibrium), ``commensurate`` q points and
    their renormalised frequencies, the ``phonopy`` object with the renormalised force constants, ``spectrum``
    (frequencies THz, spectra of every mode), ``resolution`` (THz), ``imaginary_harmonic`` (optical modes below
    ``imaginary_threshold`` at 0 K) with their ``displacement_ratio`` (:func:`~aiida_capthermo.core.normal_modes.
    displacement_ratio`), ``trapped`` (those of them the MD holds about a displaced structure: a well, not the
    reference), ``unresolved`` (optical modes whose peak stays below max(resolution, |imaginary_threshold|), and the
    trapped ones: not stabilised), ``stabilised`` (none unresolved), ``broke`` (a run's failure, in which case
    nothing else is given).
    """
    from aiida_capthermo.core.displacements import SupercellModes

    runs = [(index, temperature, replica) for index in range(len(phonons)) for temperature in settings.temperatures
            for replica in range(settings.replicas)]
    results: list[dict] = [{} for _ in phonons]
    if not runs:
        return results
    cells = [_supercell_atoms(phonon) for phonon in phonons]
    trajectories, broke = _phonon_md(model, cells, runs, settings)
    for index, phonon in enumerate(phonons):
        masses = np.asarray(cells[index].get_masses())
        modes = SupercellModes.from_force_constants(phonon.force_constants, masses, frequency_cutoff=0.0,
                                                    imaginary='absolute')  # translations projected out, skipped
        for temperature in settings.temperatures:
            numbers = [n for n, (i, t, _) in enumerate(runs) if i == index and t == temperature]
            failures = [broke[n] for n in numbers if broke[n]]
            results[index][str(float(temperature))] = {'broke': failures[0]} if failures else _renormalised(
                phonon, modes, masses, cells[index].positions, [trajectories[n] for n in numbers], temperature,
                settings)
    return results


def _supercell_atoms(phonon):
    """The phonon supercell of ``phonon`` as ``ase.Atoms`` (periodic): the MD cell."""
    import ase

    supercell = phonon.supercell
    return ase.Atoms(symbols=supercell.symbols, cell=supercell.cell, scaled_positions=supercell.scaled_positions,
                     pbc=True)


def _phonon_md(model, cells: list, runs: list[tuple], settings: PhononConfig) -> tuple[list, list]:
    """Equilibration (strong friction, last frame kept) then production (velocities every ``sample_stride``
    steps) of every (structure, temperature, replica) of ``runs``, each stage one batched simulation of the MD
    engine. Returns the production trajectories and, per run, why it broke in either stage (or None)."""
    from aiida_capthermo.ml.thermal import run_replicas

    temperatures = [temperature for _, temperature, _ in runs]
    seeds = [settings.seed + number for number in range(len(runs))]
    common = {'timestep': settings.timestep, 'fix_com': True, 'stop_distance': settings.stop_distance,
              'max_temperature_ratio': 3.0}
    starts = [cells[index] for index, _, _ in runs]
    broke = [None] * len(runs)
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
    production = run_replicas(model, starts, temperatures, [seed + 104729 for seed in seeds], steps=settings.steps,
                              friction=settings.friction, stride=settings.sample_stride, store_velocities=True,
                              batch_seed=settings.seed + 1, **common)
    return production, [before or trajectory.broke for before, trajectory in zip(broke, production)]


def _renormalised(phonon, modes, masses: np.ndarray, reference: np.ndarray, trajectories: list, temperature: float,
                  settings: PhononConfig) -> dict:
    """Renormalised phonons of one structure at one temperature (K) from the production ``trajectories`` of its
    replicas: the velocities projected on the harmonic ``modes``, their power spectra averaged over the replicas,
    a Lorentzian fitted to every optical mode; the positions of the imaginary modes projected too, to tell
    oscillation about the ``reference`` supercell positions from oscillation in a well; the entry of
    :func:`finite_temperature_phonons`."""
    from ase import units

    from aiida_capthermo.core.normal_modes import (
        TRAPPED_RATIO,
        displacement_ratio,
        fit_lorentzian,
        power_spectrum,
        project_displacements,
        project_velocities,
        renormalised_force_constants,
    )

    harmonic, eigenvectors, acoustic = modes.frequencies, modes.eigenvectors, modes.skipped
    optical = np.setdiff1d(np.arange(len(harmonic)), acoustic)
    spectra, mean_square = [], []
    for trajectory in trajectories:
        projected = project_velocities(trajectory.velocities, masses, eigenvectors)
        frequencies, spectrum = power_spectrum(projected, settings.sample_stride * settings.timestep,
                                               settings.segments)
        spectra.append(spectrum)
        mean_square.append(np.mean(projected**2, axis=0))
    spectrum = np.mean(spectra, axis=0)
    kinetic = np.mean(mean_square, axis=0) * EV_PER_AMU_A2_FS2 / (units.kB * temperature)
    renormalised, linewidth = np.zeros_like(harmonic), np.zeros_like(harmonic)
    fitted = np.zeros(len(harmonic), dtype=bool)
    for mode in optical:
        fit = fit_lorentzian(frequencies, spectrum[:, mode], window=settings.fit_window, guess=abs(harmonic[mode]))
        renormalised[mode], linewidth[mode], fitted[mode] = fit.frequency, fit.linewidth, fit.fitted
    imaginary = [int(mode) for mode in optical if harmonic[mode] < settings.imaginary_threshold]
    ratio = displacement_ratio([project_displacements(trajectory.positions, reference, trajectory.cells[0], masses,
                                                      eigenvectors[:, imaginary]) for trajectory in trajectories])
    trapped = [mode for mode, value in zip(imaginary, ratio) if value > TRAPPED_RATIO]
    floor = max(settings.resolution, abs(settings.imaginary_threshold))
    unresolved = sorted({int(mode) for mode in optical if renormalised[mode] < floor} | set(trapped))
    renormalised_phonon = _with_force_constants(phonon, renormalised_force_constants(masses, eigenvectors,
                                                                                     renormalised))
    points, commensurate = commensurate_frequencies(renormalised_phonon)
    return {'broke': None, 'harmonic': harmonic, 'renormalised': renormalised, 'linewidth': linewidth,
            'fitted': fitted, 'acoustic': acoustic, 'equipartition': float(np.mean(kinetic[optical])),
            'commensurate_points': points, 'commensurate_frequencies': commensurate, 'phonopy': renormalised_phonon,
            'spectrum': (frequencies, spectrum), 'resolution': settings.resolution, 'imaginary_harmonic': imaginary,
            'displacement_ratio': [float(value) for value in ratio], 'trapped': trapped, 'unresolved': unresolved,
            'stabilised': not unresolved,
            'mean_temperature': float(np.mean([trajectory.temperature.mean() for trajectory in trajectories]))}
