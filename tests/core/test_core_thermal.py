"""The ± pairing of frozen-mode gaps (``aiida_capthermo.core.thermal.pair_frozen_modes``) against polynomials of the
mode amplitude, and against a gap that is a known quadratic form of the atomic displacements."""

import numpy as np
import pytest

from aiida_capthermo.core.displacements import SupercellModes
from aiida_capthermo.core.thermal import frozen_mode_displacements, pair_frozen_modes

EG0 = 1.8  # eV


def _interleave(plus, minus):
    return np.stack([plus, minus], axis=1).reshape(-1)  # [2n]: +, - per mode (the modes job's order)


def test_quadratic_gap_gives_the_curvature_and_cancels_the_linear_term():
    """Eg(Q) = Eg0 + a Q + b Q^2: the shift is b Q^2 whatever a is, so 2 shift / Q^2 is the curvature 2b."""
    amplitude = np.array([0.05, 0.2, 0.7])  # amu^1/2 Å
    b = np.array([0.3, -1.2, 0.04])  # eV / (amu Å^2)
    for a in (np.zeros(3), np.array([2.0, -5.0, 0.5])):  # eV / (amu^1/2 Å)
        def gap(q, a=a):
            return EG0 + a * q + b * q**2

        plus, minus, shift = pair_frozen_modes(_interleave(gap(amplitude), gap(-amplitude)), EG0)
        np.testing.assert_allclose(plus, gap(amplitude), rtol=1e-15)
        np.testing.assert_allclose(minus, gap(-amplitude), rtol=1e-15)
        np.testing.assert_allclose(shift, b * amplitude**2, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(2 * shift / amplitude**2, 2 * b, rtol=1e-10)
        # the one-sided difference would carry the linear term: the pairing is what removes it
        if np.any(a):
            assert not np.allclose(plus - EG0, b * amplitude**2)


def test_odd_orders_cancel_even_orders_stay():
    """Eg(Q) = Eg0 + a Q + b Q^2 + c Q^3 + d Q^4: the shift is b Q^2 + d Q^4 exactly."""
    q = np.array([0.1, 0.4])
    a, b, c, d = 1.5, -0.8, 3.0, 0.25
    gap_plus = EG0 + a * q + b * q**2 + c * q**3 + d * q**4
    gap_minus = EG0 - a * q + b * q**2 - c * q**3 + d * q**4
    _, _, shift = pair_frozen_modes(_interleave(gap_plus, gap_minus), EG0)
    np.testing.assert_allclose(shift, b * q**2 + d * q**4, rtol=1e-12)


def test_pairing_of_frozen_modes_of_an_anisotropic_oscillator():
    """One atom in a harmonic well with three distinct stiffnesses along x, y, z, and a gap Eg(u) = Eg0 + g.u + u.H.u
    of its displacement u (Å). Mode nu moves the atom by Q_nu / sqrt(m) along its axis, so by hand the shift of mode
    nu is H_nu,nu Q_nu^2 / m; the gradient g (linear coupling) drops out."""
    mass = 79.904  # amu (Br)
    fc = np.zeros((1, 1, 3, 3))
    fc[0, 0] = np.diag([1.0, 2.0, 4.0])  # eV/Å^2: modes ordered x, y, z by frequency
    modes = SupercellModes.from_force_constants(fc, [mass], [35], skip_translations=False)
    indices, amplitudes, displacements = frozen_mode_displacements(modes, 300.0)
    assert indices.tolist() == [0, 1, 2]
    hessian = np.array([[0.5, 0.1, 0.0], [0.1, -0.3, 0.2], [0.0, 0.2, 0.9]])  # eV/Å^2
    gradient = np.array([0.7, -0.4, 1.1])  # eV/Å

    def gap(u):
        return EG0 + gradient @ u + u @ hessian @ u

    gaps = [gap(sign * d[0]) for d in displacements for sign in (1.0, -1.0)]
    _, _, shift = pair_frozen_modes(gaps, EG0)
    by_hand = np.diag(hessian) * amplitudes**2 / mass  # eV
    np.testing.assert_allclose(shift, by_hand, rtol=1e-10)


def test_gaps_must_come_in_pairs():
    with pytest.raises(ValueError, match='pairs'):
        pair_frozen_modes([1.0, 1.1, 1.2], EG0)
