#!/usr/bin/env python
"""Test double for the VASP executable (MOCK: VASP cannot run here).

Run in a folder holding ``POSCAR``, ``INCAR`` and ``KPOINTS`` (as aiida-vasp writes them), it writes
VASP-format outputs (``vasprun.xml``, ``OUTCAR``, ``CONTCAR`` and VASP-like stdout) whose numbers
come from a simple, independent model, so that a test can check the labels the workflow extracts:

- energy, forces and stress: a Lennard-Jones pair potential (``ase.calculators.lj``), written in
  VASP's units and signs (eV, eV/Å, kBar with positive = compressive, i.e. ``-`` ASE's stress);
  the three VASP energies are made distinct (``e_fr_energy`` = LJ energy, ``e_wo_entrp`` = LJ + TS,
  ``e_0_energy`` = LJ + TS/2 with a made-up TS), so a test sees which one was picked;
- band structure: 8 bands, 4 occupied, on the k-point mesh of ``KPOINTS`` (all points, equal
  weights); the valence-band maximum sits at Gamma and the conduction-band minimum at the last
  k-point, with values from :func:`model_band_edges` (a smooth function of the Ag-S distances);
  ``LHFCALC = .TRUE.`` (a hybrid run) opens the gap by :data:`HYBRID_GAP_OPENING`.

:func:`model_labels` returns the numbers the files encode, in the package's units and sign
convention (ASE), for the tests to compare with. The file layouts follow real VASP 6 outputs.

It is used through aiida-vasp's ``mock-vasp``: with ``MOCK_VASP_VASP_CMD`` pointing at this script,
``mock-vasp`` runs it for inputs it has not seen and records inputs and outputs in the registry at
``MOCK_VASP_REG_BASE``; later runs with the same inputs are answered from the registry.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

#: Lennard-Jones parameters of the model (eV, Å, Å).
LJ_EPSILON, LJ_SIGMA, LJ_CUTOFF = 0.05, 2.6, 6.0
#: Made-up electronic entropy term T*S per atom (eV) so the three VASP energies differ.
ENTROPY_PER_ATOM = 2.0e-4
#: Extra gap of a hybrid-functional (LHFCALC) run over the semilocal one (eV).
HYBRID_GAP_OPENING = 0.75
#: 1 kBar in eV/Å^3.
KBAR = 1.0e-1 * 6.241509074460763e-3
N_BANDS, N_OCCUPIED = 8, 4


# ---------------------------------------------------------------------------------------------- model
def model_band_edges(atoms, hybrid: bool) -> tuple[float, float]:
    """Return (VBM, CBM) in eV of the toy band model for ``atoms``.

    The gap shrinks as the mean Ag-S nearest distance departs from 2.45 Å; the VBM follows the
    mean Ag-S distance. Plain numpy on the minimum-image distances.
    """
    symbols = np.array(atoms.get_chemical_symbols())
    ag = np.flatnonzero(symbols == 'Ag')
    s = np.flatnonzero(symbols == 'S')
    if len(ag) and len(s):
        distances = atoms.get_distances(ag[0], s, mic=True) if len(ag) == 1 else np.concatenate(
            [atoms.get_distances(i, s, mic=True) for i in ag])
        d_mean = float(np.mean(np.sort(distances)[:max(1, len(ag))]))
    else:
        d_mean = 2.45
    gap = 1.4 * np.exp(-4.0 * (d_mean - 2.45) ** 2) + 0.3
    if hybrid:
        gap += HYBRID_GAP_OPENING
    vbm = 2.0 + 0.5 * (d_mean - 2.45)
    return float(vbm), float(vbm + gap)


def model_labels(atoms, hybrid: bool = False) -> dict:
    """Labels the double writes for ``atoms``, in the package's convention.

    Returns
    -------
    dict
        ``energy_free``, ``energy_no_entropy``, ``energy_extrapolated`` (eV), ``forces`` [n, 3] (eV/Å),
        ``stress`` Voigt [6] (eV/Å^3, ASE sign: positive = tensile), ``vbm``, ``cbm``, ``gap`` (eV).
    """
    from ase.calculators.lj import LennardJones

    atoms = atoms.copy()
    atoms.calc = LennardJones(epsilon=LJ_EPSILON, sigma=LJ_SIGMA, rc=LJ_CUTOFF, smooth=True)
    energy = float(atoms.get_potential_energy())
    ts = ENTROPY_PER_ATOM * len(atoms)
    vbm, cbm = model_band_edges(atoms, hybrid)
    return {
        'energy_free': energy,
        'energy_no_entropy': energy + ts,
        'energy_extrapolated': energy + 0.5 * ts,
        'forces': atoms.get_forces(),
        'stress': atoms.get_stress(voigt=True),
        'vbm': vbm,
        'cbm': cbm,
        'gap': cbm - vbm,
    }


# ---------------------------------------------------------------------------------------------- inputs
def read_incar(path: pathlib.Path) -> dict:
    """Parse ``KEY = value`` lines of an INCAR into a dict with upper-case keys and string values."""
    tags = {}
    for line in path.read_text().splitlines():
        line = line.split('#')[0].split('!')[0]
        for statement in line.split(';'):
            if '=' in statement:
                key, value = statement.split('=', 1)
                tags[key.strip().upper()] = value.strip()
    return tags


def read_kpoints_mesh(path: pathlib.Path) -> tuple[list[int], bool]:
    """Return the divisions of an automatic-mesh KPOINTS and whether it is Gamma-centred."""
    lines = path.read_text().splitlines()
    if int(lines[1].split()[0]) != 0:
        raise ValueError('the double only handles automatic (mesh) KPOINTS files')
    style = lines[2].strip()[0].upper()
    divisions = [int(v) for v in lines[3].split()[:3]]
    return divisions, style == 'G'


def is_true(value: str | None) -> bool:
    return value is not None and value.strip().strip('.').upper().startswith('T')


def mesh_points(divisions: list[int], gamma: bool) -> np.ndarray:
    """All points of the mesh in fractional reciprocal coordinates [n_k, 3]."""
    axes = []
    for n in divisions:
        shift = 0.0 if gamma or n % 2 == 1 else 0.5
        axes.append((np.arange(n) + shift) / n)
    grid = np.array(np.meshgrid(*axes, indexing='ij')).reshape(3, -1).T
    return grid - np.round(grid)


def band_energies(kpoints: np.ndarray, vbm: float, cbm: float) -> np.ndarray:
    """Eigenvalues [n_k, n_bands]: VBM at the first k-point, CBM at the last one."""
    n_k = len(kpoints)
    weight = np.linspace(0.0, 1.0, n_k) if n_k > 1 else np.zeros(1)  # 0 at the first k-point, 1 at the last
    occupied = np.array([vbm - 0.1 * weight - 1.5 * (N_OCCUPIED - 1 - b) - 0.05 * (b == 0) for b in range(N_OCCUPIED)])
    empty = np.array([cbm + 0.1 * (weight[-1] - weight) + 1.2 * b for b in range(N_BANDS - N_OCCUPIED)])
    return np.concatenate([occupied, empty]).T


# ---------------------------------------------------------------------------------------------- writers
def _v(values, fmt: str = '%16.8f') -> str:
    return '<v>' + ' '.join(fmt % v for v in values) + ' </v>'


def _structure_xml(name: str | None, cell: np.ndarray, scaled: np.ndarray) -> list[str]:
    header = f' <structure name="{name}" >' if name else '  <structure>'
    lines = [header, '  <crystal>', '   <varray name="basis" >']
    lines += ['    ' + _v(row) for row in cell]
    lines += ['   </varray>', f'   <i name="volume">{abs(np.linalg.det(cell)):16.8f} </i>',
              '   <varray name="rec_basis" >']
    lines += ['    ' + _v(row) for row in np.linalg.inv(cell).T]
    lines += ['   </varray>', '  </crystal>', '  <varray name="positions" >']
    lines += ['   ' + _v(row) for row in scaled]
    lines += ['  </varray>', ' </structure>']
    return lines


def write_vasprun(path: pathlib.Path, atoms, incar: dict, divisions: list[int], gamma: bool, labels: dict,
                  kpoints: np.ndarray, eigenvalues: np.ndarray) -> None:
    """Write a VASP 6 style ``vasprun.xml`` for a static run (NSW = 0) with one SCF cycle."""
    symbols = atoms.get_chemical_symbols()
    species = list(dict.fromkeys(symbols))
    cell = np.asarray(atoms.cell)
    scaled = atoms.get_scaled_positions(wrap=False)
    stress_kbar = -np.asarray(atoms_stress_matrix(labels['stress'])) / KBAR
    e_fr, e_wo, e_0 = labels['energy_free'], labels['energy_no_entropy'], labels['energy_extrapolated']
    out = ['<?xml version="1.0" encoding="ISO-8859-1"?>', '<modeling>', ' <generator>',
           '  <i name="program" type="string">vasp </i>', '  <i name="version" type="string">6.4.2  </i>',
           '  <i name="subversion" type="string">aiida-capthermo test double (not VASP) </i>',
           '  <i name="platform" type="string">LinuxGNU </i>', '  <i name="date" type="string">2024 01 01 </i>',
           '  <i name="time" type="string">00:00:00 </i>', ' </generator>', ' <incar>']
    for key, value in incar.items():
        out.append(f'  <i type="string" name="{key}">{value}</i>')
    out += [' </incar>', ' <kpoints>', f'  <generation param="{"Gamma" if gamma else "Monkhorst-Pack"}">',
            '   <v type="int" name="divisions">' + ' '.join(f'{n:8d}' for n in divisions) + ' </v>',
            '   <v name="usershift">      0.00000000       0.00000000       0.00000000 </v>', '  </generation>',
            '  <varray name="kpointlist" >']
    out += ['   ' + _v(k) for k in kpoints]
    out += ['  </varray>', '  <varray name="weights" >']
    out += ['   ' + _v([1.0 / len(kpoints)]) for _ in kpoints]
    nelm = int(incar.get('NELM', 60))
    out += ['  </varray>', ' </kpoints>', ' <parameters>', '  <separator name="general" >',
            '   <i type="string" name="SYSTEM">unknown system</i>', '  </separator>',
            '  <separator name="electronic" >', f'   <i type="int" name="NBANDS">{N_BANDS:6d}</i>',
            f'   <i name="NELECT">{2.0 * N_OCCUPIED:16.8f}</i>', '   <separator name="electronic spin" >',
            '    <i type="int" name="ISPIN">     1</i>', '    <i type="logical" name="LNONCOLLINEAR"> F  </i>',
            '    <i type="logical" name="LSORBIT"> F  </i>', '   </separator>',
            '   <separator name="electronic convergence" >', f'    <i type="int" name="NELM">{nelm:6d}</i>',
            '   </separator>', '  </separator>', '  <separator name="ionic" >',
            '   <i type="int" name="NSW">     0</i>', '   <i type="int" name="IBRION">    -1</i>',
            '  </separator>', ' </parameters>', ' <atominfo>', f'  <atoms>{len(atoms):8d} </atoms>',
            f'  <types>{len(species):8d} </types>', '  <array name="atoms" >',
            '   <dimension dim="1">ion</dimension>', '   <field type="string">element</field>',
            '   <field type="int">atomtype</field>', '   <set>']
    out += [f'    <rc><c>{s:2s}</c><c>{species.index(s) + 1:4d}</c></rc>' for s in symbols]
    out += ['   </set>', '  </array>', '  <array name="atomtypes" >', '   <dimension dim="1">type</dimension>',
            '   <field type="int">atomspertype</field>', '   <field type="string">element</field>',
            '   <field>mass</field>', '   <field>valence</field>', '   <field type="string">pseudopotential</field>',
            '   <set>']
    from ase.data import atomic_masses, atomic_numbers

    for s in species:
        out.append(f'    <rc><c>{symbols.count(s):4d}</c><c>{s:2s}</c><c>{atomic_masses[atomic_numbers[s]]:16.8f}</c>'
                   f'<c>{1.0:16.8f}</c><c> FAKE {s} test double                    </c></rc>')
    out += ['   </set>', '  </array>', ' </atominfo>']
    out += _structure_xml('initialpos', cell, scaled)
    out += [' <calculation>']
    for delta in (1.0e-1, 1.0e-4, 0.0):
        out += ['  <scstep>', '   <time name="dav">    0.01    0.01</time>', '   <energy>',
                f'    <i name="e_fr_energy">{e_fr + delta:16.8f} </i>',
                f'    <i name="e_wo_entrp">{e_wo + delta:16.8f} </i>',
                f'    <i name="e_0_energy">{e_0 + delta:16.8f} </i>', '   </energy>', '  </scstep>']
    out += ['  ' + line for line in _structure_xml(None, cell, scaled)]
    out += ['  <varray name="forces" >'] + ['   ' + _v(f) for f in labels['forces']] + ['  </varray>']
    out += ['  <varray name="stress" >'] + ['   ' + _v(s) for s in stress_kbar] + ['  </varray>']
    out += ['  <energy>', f'   <i name="e_fr_energy">{e_fr:16.8f} </i>', f'   <i name="e_wo_entrp">{e_wo:16.8f} </i>',
            f'   <i name="e_0_energy">{e_0:16.8f} </i>', '  </energy>',
            '  <time name="totalsc">    0.03    0.03</time>', '  <eigenvalues>', '   <array>',
            '    <dimension dim="1">band</dimension>', '    <dimension dim="2">kpoint</dimension>',
            '    <dimension dim="3">spin</dimension>', '    <field>eigene</field>', '    <field>occ</field>',
            '    <set>', '     <set comment="spin 1">']
    for ik, bands in enumerate(eigenvalues):
        out.append(f'      <set comment="kpoint {ik + 1}">')
        out += [f'       <r>{e:10.4f}{1.0 if b < N_OCCUPIED else 0.0:10.4f} </r>' for b, e in enumerate(bands)]
        out.append('      </set>')
    efermi = 0.5 * (labels['vbm'] + labels['cbm'])
    out += ['     </set>', '    </set>', '   </array>', '  </eigenvalues>', '  <dos>',
            f'   <i name="efermi">{efermi:16.8f} </i>', '  </dos>', ' </calculation>']
    out += _structure_xml('finalpos', cell, scaled)
    out += ['</modeling>', '']
    path.write_text('\n'.join(out))


def atoms_stress_matrix(voigt) -> np.ndarray:
    """3x3 matrix of a Voigt (xx, yy, zz, yz, xz, xy) stress."""
    xx, yy, zz, yz, xz, xy = voigt
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def write_outcar(path: pathlib.Path, atoms, incar: dict, n_kpoints: int, labels: dict) -> None:
    """Write the parts of an ``OUTCAR`` that aiida-vasp reads (run status and timings)."""
    nelm = int(incar.get('NELM', 60))
    lines = [' vasp.6.4.2 (aiida-capthermo test double, not VASP)', ' executed on             LinuxGNU date 2024.01.01',
             '', f'   k-points           NKPTS = {n_kpoints:6d}   k-points in BZ     NKDIM = {n_kpoints:6d}'
             f'   number of bands    NBANDS= {N_BANDS:6d}',
             f'   NELM   = {nelm:6d};   NELMIN=  2; NELMDL= -5     # of ELM steps',
             '   NSW    =      0    number of steps for IOM',
             '   IBRION =     -1    ionic relax: 0-MD 1-quasi-New 2-CG',
             '']
    for step in range(1, 4):
        lines += [f'--------------------------------------- Iteration      1({step:4d})  '
                  '---------------------------------------', '']
    lines += ['  FREE ENERGIE OF THE ION-ELECTRON SYSTEM (eV)', '  ---------------------------------------------------',
              f'  free  energy   TOTEN  = {labels["energy_free"]:18.8f} eV', '',
              f'  energy  without entropy={labels["energy_no_entropy"]:18.8f}'
              f'  energy(sigma->0) ={labels["energy_extrapolated"]:18.8f}', '',
              ' General timing and accounting informations for this job:',
              ' ========================================================', '',
              '                  Total CPU time used (sec):        0.050',
              '                            User time (sec):        0.040',
              '                          System time (sec):        0.010',
              '                         Elapsed time (sec):        0.060', '',
              '                   Maximum memory used (kb):       10000.',
              '                   Average memory used (kb):          N/A', '']
    path.write_text('\n'.join(lines))


def write_stdout(labels: dict) -> None:
    """Print VASP-like standard output (mock-vasp captures it as ``vasp_output``)."""
    e_fr, e_0 = labels['energy_free'], labels['energy_extrapolated']
    print(' running on    1 total cores')
    print(' vasp.6.4.2 (aiida-capthermo test double, not VASP)')
    print(' POSCAR, INCAR and KPOINTS ok, starting setup')
    print(' entering main loop')
    print('       N       E                     dE             d eps       ncg     rms          rms(c)')
    for step, delta in enumerate((1.0e-1, 1.0e-4, 0.0), start=1):
        print(f'DAV: {step:3d}    {e_fr + delta: .12E}   {-delta: .5E}   {-delta: .5E}   100   0.100E-01')
    print(f'   1 F= {e_fr: .8E} E0= {e_0: .8E}  d E =0.000000E+00')


def run(folder: str | pathlib.Path = '.') -> dict:
    """Read the VASP inputs in ``folder``, write the outputs there and return the model labels."""
    from ase.io import read

    folder = pathlib.Path(folder)
    atoms = read(folder / 'POSCAR', format='vasp')
    incar = read_incar(folder / 'INCAR')
    divisions, gamma = read_kpoints_mesh(folder / 'KPOINTS')
    labels = model_labels(atoms, hybrid=is_true(incar.get('LHFCALC')))
    kpoints = mesh_points(divisions, gamma)
    eigenvalues = band_energies(kpoints, labels['vbm'], labels['cbm'])
    write_vasprun(folder / 'vasprun.xml', atoms, incar, divisions, gamma, labels, kpoints, eigenvalues)
    write_outcar(folder / 'OUTCAR', atoms, incar, len(kpoints), labels)
    (folder / 'CONTCAR').write_text((folder / 'POSCAR').read_text())
    write_stdout(labels)
    return labels


if __name__ == '__main__':
    run(sys.argv[1] if len(sys.argv) > 1 else '.')
