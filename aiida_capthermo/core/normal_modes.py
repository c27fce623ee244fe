"""Finite-temperature phonons from molecular dynamics by normal-mode decomposition of the velocities (the method of
DynaPhoPy, Carreras, Togo and Tanaka, Comput. Phys. Commun. 221, 221 (2017); paper eqs. 2-4).

The MD cell is the phonon supercell, so its Γ modes (:class:`aiida_capthermo.core.displacements.SupercellModes`)
are the phonons of every commensurate q point of the unit cell.
The mass-weighted velocities of a trajectory are projected onto the harmonic eigenvectors of the supercell
(eq. 2: ``v_s(t) = sum_j sqrt(m_j) e_s,j . v_j(t)``; real eigenvectors, since the supercell's dynamical matrix at Γ
is real), the power spectrum of each projection is the Fourier transform of its autocorrelation (eq. 3, Wiener-
Khinchin: ``|FFT|^2``), and a Lorentzian (eq. 4) fitted around its peak gives the renormalised frequency (peak) and
the linewidth (FWHM). The renormalised supercell force constants ``M^1/2 E diag(omega~^2) E^T M^1/2`` give
renormalised phonons at every commensurate q point and, Fourier-interpolated by phonopy, renormalised bands.

A power spectrum only says how fast a mode oscillates, not about which structure: an atom trapped in one well of a
double well oscillates at a real frequency too, about a displaced structure. So an imaginary harmonic mode counts as
stabilised only when the MD also oscillates about the reference structure along it:
:func:`project_displacements` gives the mode amplitudes ``Q_s(t)`` and :func:`displacement_ratio` the ratio of the
mean amplitude to its spread, small about the reference, large in a well (:data:`TRAPPED_RATIO`).

A Langevin thermostat of friction gamma broadens every line by gamma / (2 pi) (FWHM, in cycles per time): with
1e-3 1/fs that is 0.16 THz; the fitted linewidth includes it.

Units: Å, amu, fs, eV; frequencies in THz (cycles per ps), negative = imaginary.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from aiida_capthermo.core.displacements import EV_PER_A2_AMU_TO_THZ

__all__ = ['project_velocities', 'project_displacements', 'displacement_ratio', 'TRAPPED_RATIO', 'power_spectrum',
           'LorentzianFit', 'fit_lorentzian', 'renormalised_force_constants', 'lorentzian']

#: A mode whose mean amplitude exceeds this many standard deviations of its amplitude (averaged over the replicas)
#: oscillates about a displaced structure: trapped in a well, not stabilised. About the reference the ratio is
#: about 1/sqrt(independent samples): under 0.3 for 10 or more.
TRAPPED_RATIO = 1.0


def project_velocities(velocities: np.ndarray, masses: np.ndarray, eigenvectors: np.ndarray) -> np.ndarray:
    """Mode velocities ``v_s(t) = sum_j sqrt(m_j) e_s,j . v_j(t)`` (amu^1/2 Å/fs) of a trajectory.

    ``velocities`` [F, N, 3] (Å/fs) of F frames, ``masses`` [N] (amu), ``eigenvectors`` [3N, M] (columns);
    returns [F, M]. The sum over modes of ``<v_s^2>`` is twice the kinetic energy, so at equilibrium every mode
    carries ``<v_s^2> = k_B T`` (equipartition).
    """
    velocities = np.asarray(velocities, dtype=float)
    frames, n, _ = velocities.shape
    weighted = (velocities * np.sqrt(np.asarray(masses, dtype=float))[None, :, None]).reshape(frames, 3 * n)
    return weighted @ np.asarray(eigenvectors)


def project_displacements(positions: np.ndarray, reference: np.ndarray, cell: np.ndarray, masses: np.ndarray,
                          eigenvectors: np.ndarray) -> np.ndarray:
    """Mode amplitudes ``Q_s(t) = sum_j sqrt(m_j) e_s,j . u_j(t)`` (amu^1/2 Å) of a trajectory, ``u`` the
    minimum-image displacement of ``positions`` [F, N, 3] (Å, wrapped or not) from ``reference`` [N, 3] in the fixed
    ``cell`` [3, 3] (rows are lattice vectors); ``masses`` [N] amu, ``eigenvectors`` [3N, M]; returns [F, M]."""
    cell = np.asarray(cell, dtype=float)
    fractional = (np.asarray(positions, dtype=float) - np.asarray(reference, dtype=float)[None]) @ np.linalg.inv(cell)
    return project_velocities((fractional - np.round(fractional)) @ cell, masses, eigenvectors)


def displacement_ratio(amplitudes) -> np.ndarray:
    """Per mode, ``|<Q_s>| / std(Q_s)`` of each replica's amplitudes (a sequence of [F, M] series), averaged over
    the replicas (replicas may sit in opposite wells, so their series are not pooled). About 1/sqrt(independent
    samples) for a mode oscillating about the reference; ``Q_min / sigma`` in a well of a double well."""
    ratios = [np.abs(series.mean(axis=0)) / np.maximum(series.std(axis=0), 1e-300) for series in amplitudes]
    return np.mean(ratios, axis=0)


def power_spectrum(series: np.ndarray, timestep_fs: float, segments: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One-sided power spectrum of each column of ``series`` [F, M] sampled every ``timestep_fs`` fs.

    The Fourier transform of the autocorrelation (Wiener-Khinchin) is ``|FFT|^2``; with ``segments`` > 1 the series
    is cut into that many equal pieces whose spectra are averaged (Bartlett: less noise, resolution 1 / segment
    length). Normalised so that the integral over positive frequencies (THz) is the mean square ``<v^2>``.

    Returns the frequencies [K] (THz, from 0 to the Nyquist frequency) and the spectra [K, M].
    """
    series = np.asarray(series, dtype=float)
    if series.ndim == 1:
        series = series[:, None]
    length = series.shape[0] // segments
    if length < 4:
        raise ValueError(f'{series.shape[0]} frames cut into {segments} segments leave too few frames per segment')
    spectra = []
    for index in range(segments):
        piece = series[index * length:(index + 1) * length]
        spectra.append(np.abs(np.fft.rfft(piece, axis=0)) ** 2)
    spectrum = np.mean(spectra, axis=0)
    spectrum[1:] *= 2.0  # one-sided: fold the negative frequencies
    if length % 2 == 0:
        spectrum[-1] /= 2.0  # the Nyquist bin has no mirror
    frequencies = np.fft.rfftfreq(length, d=timestep_fs * 1e-3)  # THz
    resolution = frequencies[1]
    return frequencies, spectrum / (length**2 * resolution)


def lorentzian(frequency: np.ndarray, area: float, centre: float, width: float) -> np.ndarray:
    """Eq. 4: ``area / (pi width/2 (1 + ((f - centre) / (width/2))^2))``; ``width`` is the FWHM."""
    half = 0.5 * width
    return area / (np.pi * half * (1.0 + ((frequency - centre) / half) ** 2))


@dataclasses.dataclass
class LorentzianFit:
    """Lorentzian fit of one mode's power spectrum."""

    frequency: float  # THz, peak position = renormalised frequency
    linewidth: float  # THz, FWHM
    area: float  # amu Å^2 / fs^2, = <v^2> of the mode when the line holds all its power
    fitted: bool  # False: the fit did not converge and the numbers are the spectrum's maximum and a bin width


def fit_lorentzian(frequencies: np.ndarray, spectrum: np.ndarray, window: float = 1.0,
                   guess: float | None = None) -> LorentzianFit:
    """Fit eq. 4 to ``spectrum`` within ``window`` THz of its highest point (or of ``guess`` when the spectrum's
    maximum is near it, for a mode whose harmonic frequency is known).

    The window holds at least 8 frequency bins. Non-converged fits return the maximum and the bin width with
    ``fitted=False``.
    """
    from scipy.optimize import curve_fit

    frequencies = np.asarray(frequencies, dtype=float)
    spectrum = np.asarray(spectrum, dtype=float)
    resolution = frequencies[1] - frequencies[0]
    peak = float(frequencies[int(np.argmax(spectrum))])
    if guess is not None and guess > 0 and abs(peak - guess) > window:
        lo, hi = np.searchsorted(frequencies, [guess - window, guess + window])
        if hi - lo > 0 and spectrum[lo:hi].max() > 0.2 * spectrum.max():
            peak = float(frequencies[lo + int(np.argmax(spectrum[lo:hi]))])
    half_window = max(window, 8 * resolution)
    mask = np.abs(frequencies - peak) <= half_window
    x, y = frequencies[mask], spectrum[mask]
    area0 = float(y.sum() * resolution)  # uniform grid: the starting area of the fit
    above = x[y >= 0.5 * y.max()]
    width0 = max(float(above.max() - above.min()), resolution)
    try:
        (area, centre, width), _ = curve_fit(
            lorentzian, x, y, p0=[max(area0, 1e-30), peak, width0],
            bounds=([0.0, max(0.0, peak - half_window), resolution / 10],
                    [np.inf, peak + half_window, 4 * half_window]),
            maxfev=5000)
        return LorentzianFit(float(centre), float(width), float(area), True)
    except (RuntimeError, ValueError):
        return LorentzianFit(peak, resolution, area0, False)


def renormalised_force_constants(masses: np.ndarray, eigenvectors: np.ndarray, frequencies: np.ndarray) -> np.ndarray:
    """Supercell force constants [N, N, 3, 3] (eV/Å²) whose Γ modes are ``eigenvectors`` [3N, 3N] with
    ``frequencies`` [3N] (THz; negative values give negative eigenvalues): ``M^1/2 E diag(omega^2) E^T M^1/2``."""
    masses = np.asarray(masses, dtype=float)
    n = len(masses)
    omega = np.asarray(frequencies, dtype=float) / EV_PER_A2_AMU_TO_THZ
    eigenvalues = np.sign(omega) * omega**2
    dynamical = (eigenvectors * eigenvalues[None, :]) @ eigenvectors.T
    root = np.repeat(np.sqrt(masses), 3)
    phi = dynamical * root[:, None] * root[None, :]
    phi = 0.5 * (phi + phi.T)
    return phi.reshape(n, 3, n, 3).transpose(0, 2, 1, 3)
