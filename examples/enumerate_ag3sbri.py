"""Print the symmetry-inequivalent Br/I configurations of the 2x2x2 Ag3SBr_xI_(1-x) supercell.

Usage::

    python examples/enumerate_ag3sbri.py            # Markdown table for k = 0..8
    python examples/enumerate_ag3sbri.py --cells 3  # 3x3x3 cell: class counts by Burnside only

For each number k of Br atoms on the 8 halide sites it prints the number of inequivalent classes
(from the enumeration and, independently, from Burnside's lemma), their multiplicities (class sizes)
and checks that the multiplicities add up to C(8, k).
"""

import argparse
import math

from aiida_capthermo.core.solid_solution import count_inequivalent, enumerate_configurations, site_permutations
from aiida_capthermo.core.structures import antiperovskite, sublattice_indices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cells', type=int, default=2, help='supercell size n of the n x n x n cell (default 2)')
    args = parser.parse_args()

    supercell = antiperovskite('Ag', 'S', 'I').repeat((args.cells,) * 3)
    sites = sublattice_indices(supercell, 'I')
    permutations = site_permutations(supercell, sites)
    n_sites = len(sites)
    print(f'{args.cells}x{args.cells}x{args.cells} cell: {len(supercell)} atoms, {n_sites} halide sites, '
          f'{len(permutations)} distinct site permutations\n')
    if n_sites > 8:
        print('| k (Br) | x | C(n, k) | inequivalent classes (Burnside) |')
        print('|---|---|---|---|')
        for k in range(n_sites + 1):
            print(f'| {k} | {k / n_sites:.3f} | {math.comb(n_sites, k)} | {count_inequivalent(permutations, k)} |')
        return
    print('| k (Br) | x | C(8, k) | classes | Burnside | multiplicities |')
    print('|---|---|---|---|---|---|')
    total = 0
    for k in range(n_sites + 1):
        configurations = enumerate_configurations(permutations, k)
        multiplicities = [c.multiplicity for c in configurations]
        assert sum(multiplicities) == math.comb(n_sites, k)
        total += len(configurations)
        print(
            f'| {k} | {k / n_sites:.3f} | {math.comb(n_sites, k)} | {len(configurations)} | '
            f'{count_inequivalent(permutations, k)} | {", ".join(map(str, sorted(multiplicities)))} |'
        )
    print(f'\nTotal: {total} inequivalent configurations out of {2**n_sites}.')


if __name__ == '__main__':
    main()
