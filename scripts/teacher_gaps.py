"""The demo's teacher on undisplaced and rattled cells: the GFN1-xTB-noXB (low) and IPEA1-xTB-noXB (high) Γ-point gaps
of the 40-atom Ag3S(Br_x I_1-x) cells the demo screens (x = 0, 1/2 in two arrangements, 1) at Vegard lattice
parameters, undisplaced and rattled by 0.1 and 0.2 Å (one seed each). docs/study.md compares the demo's Eg(0) with
the undisplaced column. Prints a Markdown table and writes it as JSON (``--output``, default
``docs/figures/teacher_gaps.json``, the file the docs quote).

    python scripts/teacher_gaps.py          # about 15 s on one core
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
from ase import Atoms

from aiida_capthermo.ml.labelling import CalculatorSpec, single_point_function

A_HOST, A_GUEST = 4.869, 4.793  # Å, the demo prototype's end members


def cell(guest_sites: list[int]) -> Atoms:
    """The 2x2x2 Ag3SI cell with Br on ``guest_sites`` of the 8 halide sites, at the Vegard lattice parameter."""
    primitive = Atoms('Ag3SI', scaled_positions=[(0.5, 0, 0), (0, 0.5, 0), (0, 0, 0.5), (0, 0, 0), (0.5, 0.5, 0.5)],
                      cell=[A_HOST] * 3, pbc=True)
    atoms = primitive.repeat(2)
    symbols = np.array(atoms.get_chemical_symbols())
    sites = np.flatnonzero(symbols == 'I')
    symbols[sites[guest_sites]] = 'Br'
    x = len(guest_sites) / len(sites)
    atoms.set_chemical_symbols(symbols.tolist())
    atoms.set_cell(atoms.cell * ((1 - x) * A_HOST + x * A_GUEST) / A_HOST, scale_atoms=True)
    return atoms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--output', default=str(pathlib.Path(__file__).parents[1] / 'docs/figures/teacher_gaps.json'))
    args = parser.parse_args()
    methods = {'low': 'GFN1-xTB', 'high': 'IPEA1-xTB'}
    functions = {name: single_point_function(CalculatorSpec(name='tblite', method=method, properties=['gap']))
                 for name, method in methods.items()}
    cases = {'x = 0': [], 'x = 1/2 (layered)': [0, 1, 2, 3], 'x = 1/2 (mixed)': [0, 3, 5, 6],
             'x = 1': list(range(8))}
    rows = []
    print('| cell | rattle (Å) | GFN1-xTB-noXB gap (eV) | IPEA1-xTB-noXB gap (eV) |')
    print('|---|---|---|---|')
    for name, guest_sites in cases.items():
        for seed, amplitude in enumerate((0.0, 0.1, 0.2)):
            atoms = cell(guest_sites)
            if amplitude:
                atoms.rattle(amplitude, seed=seed)
            gaps = [functions[key](atoms.copy())['gap'] for key in methods]
            print(f'| {name} | {amplitude:.1f} | {gaps[0]:.3f} | {gaps[1]:.3f} |')
            rows.append({'cell': name, 'rattle_A': amplitude, 'seed': seed, 'gap_low_eV': gaps[0],
                         'gap_high_eV': gaps[1]})
    pathlib.Path(args.output).write_text(json.dumps({'methods': {'low': 'GFN1-xTB-noXB', 'high': 'IPEA1-xTB-noXB'},
                                                     'lattice_parameters_A': [A_HOST, A_GUEST], 'rows': rows},
                                                    indent=1) + '\n')


if __name__ == '__main__':
    main()
