"""Thermal averages of correlated MD series and frozen-phonon displacements (paper eqs. 5-6, Figure 8).

Statistics of a time series ``A(t)`` sampled every ``stride`` MD steps: the start of the equilibrated region is detected
(pymbar's ``timeseries.detect_equilibration``, which maximises the number of effectively uncorrelated samples;
:func:`equilibration_start`, which also says whether what it keeps still drifts, by :func:`trend`; the thermal stage
takes the later of the starts of the gap and of the potential energy), the statistical inefficiency ``g`` of the
production region is estimated (``timeseries.statistical_inefficiency``), the mean comes from the production region and
its standard error is ``std(A) sqrt(g / N)``; ``N / g`` is the number of independent samples. Replicas with independent
seeds are combined in :func:`combine_replicas`, which reports both the error propagated from the decorrelated samples
and the spread over the seeds.

Frozen phonons: mode ``nu`` of the mass-weighted dynamical matrix, frequency ``f`` (THz, ``omega = 2 pi f``), is
displaced by its thermal amplitude ``Q = sqrt(hbar (1 + 2 n(omega, T)) / (2 omega))`` (amu^1/2 Å), which is the
root-mean-square of the normal coordinate in the harmonic quantum canonical ensemble; atom ``j`` moves by
``Q e_nu(j) / sqrt(m_j)`` (Å). ``1 + 2n = coth(hbar omega / 2 kT)``. Each mode is frozen with both signs, and
:func:`pair_frozen_modes` keeps the even part of the gap's response, ``(Eg(+Q) + Eg(-Q)) / 2 - Eg(0)``: for
``Eg(Q) = Eg(0) + a Q + b Q^2 + ...`` that is ``b Q^2`` (plus higher even orders), the linear term cancels.

No AiiDA and no torch here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Sequence

import numpy as np

from aiida_capthermo.core.displacements import SupercellModes, mode_amplitudes

__all__ = ['SeriesStatistics', 'series_statistics', 'trend', 'equilibration_start', 'replica_statistics',
           'combine_replicas',
           'frozen_mode_displacements', 'pair_frozen_modes', 'species_participation']


def _timeseries():
    """pymbar's ``timeseries`` module (its import prints a banner about optional JAX acceleration; swallowed)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from pymbar import timeseries
    return timeseries


@dataclasses.dataclass
class SeriesStatistics:
    """Mean of a correlated series after its equilibration, with its standard error.

    ``start`` is the first sample of the production region, ``n_samples`` its length, ``inefficiency`` the
    statistical inefficiency g (>= 1; samples ``g`` apart are uncorrelated), ``n_independent = n_samples / g``.
    """

    mean: float
    stderr: float
    std: float
    start: int
    n_samples: int
    inefficiency: float
    n_independent: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def series_statistics(series: Sequence[float], start: int | None = None,
                      max_start_fraction: float = 0.5) -> SeriesStatistics:
    """Statistics of a correlated series.

    Parameters
    ----------
    series
        [n] samples in time order (e.g. the GNN gap of every recorded MD frame).
    start
        First sample of the production region; detected when None.
    max_start_fraction
        The detected equilibration never discards more than this fraction of the series (a drifting series
        would otherwise be cut to a few samples that look converged).
    """
    values = np.asarray(series, dtype=float).reshape(-1)
    if values.size < 4:
        raise ValueError(f'a series needs at least 4 samples for its statistics, got {values.size}')
    if not np.all(np.isfinite(values)):
        raise ValueError('the series contains NaN or inf')
    timeseries = _timeseries()
    if start is None:
        start = equilibration_start(values, max_start_fraction)[0]
    production = values[start:]
    n = production.size
    if np.ptp(production) == 0:
        inefficiency = 1.0
    else:
        inefficiency = max(1.0, float(timeseries.statistical_inefficiency(production, fast=False, mintime=3)))
    std = float(np.std(production, ddof=1))
    return SeriesStatistics(mean=float(np.mean(production)), stderr=std * float(np.sqrt(inefficiency / n)), std=std,
                            start=int(start), n_samples=int(n), inefficiency=inefficiency,
                            n_independent=float(n / inefficiency))


#: |z| of the linear trend of what is kept of a series above which it is still drifting (:func:`trend`).
DRIFT_Z = 3.0


def trend(series: Sequence[float]) -> tuple[float, float]:
    """Linear trend of a correlated series: its change over the series (least-squares slope times its length, in
    the series' units) and the slope over its standard error, ``z``. The error counts the statistical inefficiency
    of the residuals about the line, so a slow but stationary fluctuation is not a trend.

    A stationary series gives ``|z| > 3`` rarely: on what :func:`equilibration_start` keeps of 200 AR(1) series of
    200 samples with correlation times of 1, 5 and 10 samples, 1, 4 and 15 times (``tests/test_thermal.py``).
    """
    values = np.asarray(series, dtype=float).reshape(-1)
    if values.size < 4:
        raise ValueError(f'a trend needs at least 4 samples, got {values.size}')
    t = np.arange(values.size) - (values.size - 1) / 2
    slope = float(t @ (values - values.mean()) / (t @ t))
    residuals = values - values.mean() - slope * t
    spread = float(residuals.std(ddof=2))
    if spread == 0:
        return slope * values.size, 0.0 if slope == 0 else float(np.sign(slope) * np.inf)
    inefficiency = float(_timeseries().statistical_inefficiency(residuals, fast=False))
    return slope * values.size, slope / (spread * np.sqrt(inefficiency / (t @ t)))


def equilibration_start(series: Sequence[float], max_start_fraction: float = 0.5) -> tuple[int, bool]:
    """First sample of the equilibrated region of a series, and whether what is kept from there is still drifting.

    pymbar's ``detect_equilibration`` picks the start that maximises the number of effectively uncorrelated
    samples after it. A series that relaxes over most of the run (a replica that leaves its starting basin late)
    would be cut to a short tail that looks converged, so the start is capped at ``max_start_fraction`` of the
    series. ``drifting`` is True when the part kept from the start still has a linear trend of more than
    ``DRIFT_Z`` standard errors (:func:`trend`) that changes it by more than its standard deviation: the average
    still holds part of a relaxation larger than the series' own fluctuation. A detected start
    beyond the cap is no such sign by itself: on a stationary but slowly fluctuating series the detection often
    lands late by chance (65 of 200 AR(1) series of 200 samples with a correlation time of 10 samples, against 15
    for the trend).

    Returns
    -------
    tuple
        ``(start, drifting)``.
    """
    start, drifting, _ = _equilibration(series, max_start_fraction)
    return start, drifting


def _equilibration(series: Sequence[float], max_start_fraction: float) -> tuple[int, bool, list[float] | None]:
    """:func:`equilibration_start` and the :func:`trend` of what it keeps (change, z; None for fewer than 4 samples
    kept), computed once."""
    values = np.asarray(series, dtype=float).reshape(-1)
    if values.size < 4 or not np.all(np.isfinite(values)):
        raise ValueError(f'equilibration needs at least 4 finite samples, got {values.size}')
    cap = int(values.size * max_start_fraction)
    if np.ptp(values) == 0:
        return 0, False, [0.0, 0.0]
    nskip = max(1, values.size // 200)
    start = min(int(_timeseries().detect_equilibration(values, fast=True, nskip=nskip)[0]), cap)
    kept = values[start:]
    if kept.size < 4:
        return start, False, None
    change, z = trend(kept)
    return start, bool(abs(z) > DRIFT_Z and abs(change) > kept.std()), [float(change), float(z)]


def replica_statistics(gaps: np.ndarray, energy: np.ndarray | None) -> tuple[SeriesStatistics, dict]:
    """Statistics of one replica's gap series, from the later of the equilibration starts of its gap and of its
    potential energy (the potential energy is the sharper probe of a replica still relaxing from its start: a gap
    the GNN barely moves can look stationary while the structure is leaving its starting basin).

    Returns the :class:`SeriesStatistics` of the gaps and a dict ``start_gap``, ``start_energy`` (None without
    energies), ``drifting`` (the energy kept from its start still has a trend: the average still contains the
    replica's relaxation) and ``energy_trend`` (the energy's change over what is kept of it by its linear trend,
    eV, and that trend's z; None without energies).
    """
    start_gap = equilibration_start(gaps)[0]
    start_energy, drifting, change = _equilibration(energy, 0.5) if energy is not None else (None, False, None)
    stats = series_statistics(gaps, start=max(start_gap, start_energy or 0))
    return stats, {'start_gap': start_gap, 'start_energy': start_energy, 'drifting': bool(drifting),
                   'energy_trend': change}


def combine_replicas(statistics: Sequence[SeriesStatistics]) -> dict:
    """Combine independent replicas (seeds) of one (composition, temperature).

    The mean weights each replica by its number of independent samples. ``stderr_decorrelated`` propagates the
    replicas' own standard errors; ``stderr_seeds`` is the standard error from the spread of the replica means
    (None for a single replica); ``stderr`` is the larger of the two, so an error bar is never smaller than either
    estimate says.
    """
    if not statistics:
        raise ValueError('no replica to combine')
    means = np.array([s.mean for s in statistics])
    errors = np.array([s.stderr for s in statistics])
    weights = np.array([s.n_independent for s in statistics])
    weights = weights / weights.sum()
    mean = float(np.sum(weights * means))
    decorrelated = float(np.sqrt(np.sum(weights**2 * errors**2)))
    seeds = float(np.std(means, ddof=1) / np.sqrt(len(means))) if len(means) > 1 else None
    return {'mean': mean, 'stderr': max(decorrelated, seeds or 0.0), 'stderr_decorrelated': decorrelated,
            'stderr_seeds': seeds, 'n_independent': float(sum(s.n_independent for s in statistics)),
            'n_replicas': len(statistics), 'replica_means': means.tolist()}


def frozen_mode_displacements(modes: SupercellModes, temperature: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Displacement pattern of every active mode frozen at its thermal amplitude at ``temperature``.

    Returns
    -------
    tuple
        ``indices`` [n] of the active modes (skipped ones, e.g. translations, are left out), ``amplitudes`` [n]
        the root-mean-square normal coordinates ``sqrt(hbar (1 + 2n) / (2 omega))`` in amu^1/2 Å, and
        ``displacements`` [n, N, 3] in Å (add or subtract them from the reference positions).
    """
    indices = modes.active
    amplitudes = np.sqrt(mode_amplitudes(modes, temperature)[indices])  # [n] amu^1/2 Å
    vectors = modes.eigenvectors[:, indices].T.reshape(len(indices), modes.n_atoms, 3)  # [n, N, 3]
    displacements = amplitudes[:, None, None] * vectors / np.sqrt(modes.masses)[None, :, None]
    return indices, amplitudes, displacements


def pair_frozen_modes(gaps: Sequence[float], reference: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mode-resolved gap shifts from the cells of :func:`frozen_mode_displacements` taken with both signs.

    Parameters
    ----------
    gaps
        [2n] eV: the gaps of n frozen modes, ``+`` then ``-`` for each mode (the order of the modes job).
    reference
        Eg(0) of the undistorted cell, eV.

    Returns
    -------
    tuple
        ``gap_plus`` [n], ``gap_minus`` [n] and ``shift`` [n] = ``(Eg(+Q) + Eg(-Q)) / 2 - Eg(0)`` in eV: the even part
        of the gap's response at the frozen amplitude Q, ``b Q^2 + O(Q^4)`` for ``Eg = Eg(0) + a Q + b Q^2 + ...``
        (``2 shift / Q^2`` estimates the curvature ``d^2 Eg / dQ^2 = 2b``); the linear term cancels.
    """
    gaps = np.asarray(gaps, dtype=float).reshape(-1)
    if gaps.size % 2:
        raise ValueError(f'frozen modes come in + / - pairs: got an odd number of gaps ({gaps.size}).')
    pairs = gaps.reshape(-1, 2)  # [n, 2] eV: +, -
    return pairs[:, 0], pairs[:, 1], pairs.mean(axis=1) - float(reference)


def species_participation(modes: SupercellModes, symbols: Sequence[str]) -> dict[str, np.ndarray]:
    """Share of each mode's (mass-weighted) eigenvector norm carried by each species: ``{symbol: [3N]}``,
    summing to one over the species for every mode (which atoms move in the mode)."""
    weights = (modes.eigenvectors**2).reshape(modes.n_atoms, 3, -1).sum(axis=1)  # [N, 3N]
    symbols = np.asarray(symbols)
    return {symbol: weights[symbols == symbol].sum(axis=0) for symbol in sorted(set(symbols.tolist()))}
