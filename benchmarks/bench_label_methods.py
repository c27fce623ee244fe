"""Benchmark: the `local` engine's candidate methods on the same Ag3S(Br,I) structures.

For each method, in one run on the same machine:
  * max |F| on the ideal cubic 40-atom (2x2x2) cells of Ag3SBr and Ag3SI (Pm-3m symmetry makes it zero);
  * the zero-pressure lattice parameter of the cubic 40-atom cell (pressure from the method's stress, root found by
    Brent's method between 4.5 and 5.2 Å per 5-atom cell; Γ-point of 40 atoms, i.e. 2x2x2 k-points per primitive cell);
  * the Γ-point HOMO-LUMO gap of the ideal cells (tblite methods; CHGNet takes it from GFN1-xTB-noXB);
  * seconds per label (energy, forces, stress, gap) over thermally displaced mixed 40-atom cells, one thread, and how
    many of those failed (SCF not converged).
Writes ``benchmarks/bench_label_methods.json`` (kept in the repository, like the other figures) and prints a Markdown
table (docs/dataset.md holds one).

    OMP_NUM_THREADS=1 python benchmarks/bench_label_methods.py [--n-displaced 4] [--methods GFN1-xTB-noXB,...]
        [--tiny] [--output FILE]

``--tiny`` (the test suite's smoke run; its numbers mean nothing): the lattice root found to 0.05 Å instead of
0.001 Å, one displaced cell unless ``--n-displaced`` is given, and only GFN1-xTB-noXB unless ``--methods`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import numpy as np

#: name -> CalculatorSpec fields
METHODS = {
    'GFN1-xTB': {'name': 'tblite', 'method': 'GFN1-xTB', 'halogen_bond': True},
    'GFN1-xTB-noXB': {'name': 'tblite', 'method': 'GFN1-xTB'},
    'IPEA1-xTB-noXB': {'name': 'tblite', 'method': 'IPEA1-xTB'},
    'GFN2-xTB': {'name': 'tblite', 'method': 'GFN2-xTB'},
    'CHGNet-0.3.0': {'name': 'chgnet', 'properties': ['energy', 'forces', 'stress']},  # no gap of its own
}
LATTICE = {'Br': 4.793, 'I': 4.869}  # Å, the prototype's experimental-like end-member values


def ideal(halide: str, lattice: float):
    from aiida_capthermo.core.structures import antiperovskite

    return antiperovskite(a='Ag', b='S', x=halide, lattice_parameter=lattice).repeat((2, 2, 2))


def displaced_cells(n: int, seed: int = 7) -> list:
    """Mixed (x = 1/2) 40-atom cells with uniform displacements of 0.1 Å amplitude, as thermal cells at ~300 K."""
    from aiida_capthermo.core.generation import GenerationSpec, generate_structures

    spec = GenerationSpec(host='I', guest='Br', n_structures=n, seed=seed, scheme='random', amplitude=0.1,
                          x_values=(0.5,))
    return [item.atoms for item in generate_structures(spec, ideal('I', LATTICE['I']),
                                                       guest_reference=ideal('Br', LATTICE['Br']))]


def zero_pressure_lattice(single_point, halide: str, xtol: float = 1e-3) -> float:
    """Cubic lattice parameter (Å per 5-atom cell) where the mean diagonal stress of the 40-atom cell vanishes."""
    from scipy.optimize import brentq

    def pressure(a: float) -> float:
        return float(np.mean(single_point(ideal(halide, a))['stress'][:3]))

    return float(brentq(pressure, 4.5, 5.2, xtol=xtol))


def measure(name: str, spec_fields: dict, n_displaced: int, xtol: float = 1e-3) -> dict:
    from aiida_capthermo.ml.labelling import CalculatorSpec, single_point_function

    spec = CalculatorSpec(**spec_fields)
    single_point = single_point_function(spec)
    row: dict = {'method': name, 'describe': spec.describe()}
    for halide, label in (('Br', 'Ag3SBr'), ('I', 'Ag3SI')):
        result = single_point(ideal(halide, LATTICE[halide]))
        row[f'max_force_ideal_{label}'] = float(np.abs(result['forces']).max())
        row[f'gap_ideal_{label}'] = result.get('gap')
        try:
            row[f'lattice_{label}'] = zero_pressure_lattice(single_point, halide, xtol)
        except Exception as exception:  # noqa: BLE001 - a method that cannot be relaxed is reported as such
            row[f'lattice_{label}'] = None
            row[f'lattice_error_{label}'] = f'{type(exception).__name__}: {exception}'
    seconds, failed = [], 0
    for atoms in displaced_cells(n_displaced):
        start = time.perf_counter()
        try:
            single_point(atoms)
        except Exception:  # noqa: BLE001 - SCF failures are counted
            failed += 1
        seconds.append(time.perf_counter() - start)
    row.update(seconds_per_label=float(np.median(seconds)), n_displaced=n_displaced, n_failed_displaced=failed)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--n-displaced', type=int, default=None,
                        help='Displaced 40-atom cells timed per method (default 4, 1 with --tiny).')
    parser.add_argument('--methods', default=None, help='Comma-separated subset of ' + ', '.join(METHODS)
                        + ' (default: all, GFN1-xTB-noXB with --tiny).')
    parser.add_argument('--tiny', action='store_true', help='tiny sizes, a smoke run (see above)')
    parser.add_argument('--output', default=str(pathlib.Path(__file__).parent / 'bench_label_methods.json'),
                        help='JSON file to write.')
    args = parser.parse_args()
    if args.n_displaced is None:
        args.n_displaced = 1 if args.tiny else 4
    if args.methods is None:
        args.methods = 'GFN1-xTB-noXB' if args.tiny else ','.join(METHODS)
    unknown = sorted(set(args.methods.split(',')) - set(METHODS))
    if unknown:
        parser.error(f'unknown methods {unknown}; known: {list(METHODS)}')
    rows = [measure(name, METHODS[name], args.n_displaced, 0.05 if args.tiny else 1e-3)
            for name in args.methods.split(',')]
    machine = {'platform': platform.platform(), 'processor': platform.processor(), 'cpus': os.cpu_count(),
               'omp_num_threads': os.environ.get('OMP_NUM_THREADS')}
    output = pathlib.Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({'machine': machine, 'rows': rows}, indent=2))

    def fmt(value, spec):
        return 'n/a' if value is None else format(value, spec)

    print('| method | max abs F ideal Ag3SBr / Ag3SI (eV/Å) | a(P=0) Ag3SBr / Ag3SI (Å) | gap Ag3SBr / Ag3SI (eV) '
          '| s per label | failed displaced |')
    print('|---|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['method']} | {fmt(r['max_force_ideal_Ag3SBr'], '.2g')} / {fmt(r['max_force_ideal_Ag3SI'], '.2g')} "
              f"| {fmt(r['lattice_Ag3SBr'], '.3f')} / {fmt(r['lattice_Ag3SI'], '.3f')} "
              f"| {fmt(r['gap_ideal_Ag3SBr'], '.2f')} / {fmt(r['gap_ideal_Ag3SI'], '.2f')} "
              f"| {r['seconds_per_label']:.2f} | {r['n_failed_displaced']}/{r['n_displaced']} |")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
