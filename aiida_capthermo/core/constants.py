"""Physical constants of the package: CODATA 2018 (exact or recommended values), in SI and in the eV-Å-amu units of
the core.

``ase.units`` defaults to CODATA 2014 (its ``kB`` differs in the seventh digit); the core takes its constants from
here so that every module uses the same ones.
"""

from __future__ import annotations

__all__ = ['HBAR', 'KB', 'EV', 'AMU', 'ANGSTROM', 'KB_EV', 'EV_PER_A3_TO_GPA']

HBAR = 1.054571817e-34  # J s
KB = 1.380649e-23  # J / K (exact)
EV = 1.602176634e-19  # J (exact)
AMU = 1.66053906660e-27  # kg
ANGSTROM = 1e-10  # m

#: Boltzmann constant in eV/K: 8.617333262e-5.
KB_EV = KB / EV

#: 1 eV/Å^3 in GPa: 160.2176634.
EV_PER_A3_TO_GPA = EV / ANGSTROM**3 / 1e9
