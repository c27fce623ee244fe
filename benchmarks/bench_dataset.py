"""Benchmark: generating N displaced 40-atom structures (sampling vs storing nodes) and local-engine labelling.

Times, in one run on the same machine:
  1. sampling only: ``core.generation.generate_structures`` (compositions, decoration, Vegard, eq. 1 displacements);
  2. sampling + storing: the ``generate_structures`` calcfunction of the dataset workchain, which stores every
     structure as a ``StructureData`` node with its provenance (an isolated SQLite profile made by ``verdi presto``);
  3. labelling throughput of the local engine (``ml.labelling.label_structures``) per structure.
Force constants: a nearest-neighbour spring model of the 40-atom Ag3SI cell (the timing depends on the atom count,
not on the physics). Writes ``benchmarks/bench_dataset.json`` and prints a Markdown table.

    python benchmarks/bench_dataset.py [--n 1000] [--n-label 4] [--method GFN1-xTB] [--output FILE]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import default_output, machine, write_result


def spring_phonopy(parent_atoms, supercell=(2, 2, 2), k: float = 1.0):
    """Phonopy object of the supercell with nearest-neighbour central springs (eV/Å^2) as force constants."""
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    unit = PhonopyAtoms(symbols=parent_atoms.get_chemical_symbols(), cell=parent_atoms.cell[:],
                        positions=parent_atoms.positions)
    phonon = Phonopy(unit, supercell_matrix=np.diag(supercell))
    sc = phonon.supercell
    n = len(sc)
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    atoms = Atoms(symbols=sc.symbols, positions=sc.positions, cell=sc.cell, pbc=True)
    i, j, d = neighbor_list('ijD', atoms, 3.0)
    fc = np.zeros((n, n, 3, 3))
    for a, b, vec in zip(i, j, d):
        block = k * np.outer(vec, vec) / np.dot(vec, vec)
        fc[a, b] -= block
        fc[a, a] += block
    phonon.force_constants = fc
    return phonon


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--n', type=int, default=1000, help='Structures to generate.')
    parser.add_argument('--n-label', type=int, default=4, help='Structures to label with the local engine.')
    parser.add_argument('--method', default='GFN1-xTB', help='tblite method for the labelling throughput '
                        '(GFN1/IPEA1 without the halogen-bond term, the local engine default).')
    parser.add_argument('--output', default=default_output('dataset'), help='JSON file to write.')
    args = parser.parse_args()

    from aiida_capthermo.core.displacements import SupercellModes
    from aiida_capthermo.core.generation import GenerationSpec, generate_structures
    from aiida_capthermo.core.structures import antiperovskite

    parent = antiperovskite(x='I')
    phonon = spring_phonopy(parent)
    modes = SupercellModes.from_phonopy(phonon)
    reference = phonon.supercell
    from ase import Atoms

    reference = Atoms(symbols=reference.symbols, positions=reference.positions, cell=reference.cell, pbc=True)
    spec = GenerationSpec(host='I', guest='Br', n_structures=args.n, seed=1, temperature=300.0)
    guest_reference = reference.copy()
    guest_reference.symbols[guest_reference.symbols == 'I'] = 'Br'
    guest_reference.set_cell(reference.cell * 4.793 / 4.869, scale_atoms=True)
    start = time.perf_counter()
    generated = generate_structures(spec, reference, modes, modes, guest_reference)
    sampling = (time.perf_counter() - start) / args.n

    # Sampling + storing through the calcfunction on an isolated presto profile.
    tmp = tempfile.mkdtemp(prefix='capthermo-bench-')
    os.environ['AIIDA_PATH'] = tmp
    verdi = pathlib.Path(sys.executable).parent / 'verdi'
    subprocess.run([str(verdi), 'presto', '--use-zeromq', '--profile-name', 'bench'], check=True,
                   stdout=subprocess.DEVNULL)
    from aiida import load_profile, orm

    load_profile('bench')
    from aiida_capthermo.workflows.dataset import generate_structures as generate_calcfunction

    fc_node = _force_constants_node(phonon, parent)
    settings = orm.Dict({'host': 'I', 'guest': 'Br', 'supercell': [2, 2, 2],
                         'n_structures': args.n, 'seed': 1, 'scheme': 'phonon', 'distribution': 'uniform',
                         'temperature': 300.0, 'composition_mode': 'grid', 'frequency_cutoff': 0.1})
    host = orm.StructureData(ase=parent).store()
    guest = orm.StructureData(ase=antiperovskite(x='Br', lattice_parameter=4.793)).store()
    start = time.perf_counter()
    outputs = generate_calcfunction(host, guest, settings, host=fc_node, guest=fc_node)
    storing = (time.perf_counter() - start) / args.n
    assert len(outputs) == args.n

    # Labelling throughput of the local engine.
    from aiida_capthermo.core.dataset import LabelledSet
    from aiida_capthermo.ml.labelling import CalculatorSpec, label_structures

    batch = LabelledSet.from_atoms_list([g.atoms for g in generated[:args.n_label]])
    start = time.perf_counter()
    _, records = label_structures(batch, CalculatorSpec(method=args.method))
    labelling = (time.perf_counter() - start) / args.n_label
    n_ok = sum(r['status'] == 'ok' for r in records)

    result = {
        'machine': machine(1),
        'n_structures': args.n, 'atoms_per_structure': len(reference),
        'sampling_ms_per_structure': sampling * 1e3,
        'sampling_and_storing_ms_per_structure': storing * 1e3,
        'storing_over_sampling': storing / sampling,
        'labelling_method': CalculatorSpec(method=args.method).describe()['method'],
        'labelling_s_per_structure': labelling,
        'labelling_converged': f'{n_ok}/{args.n_label}',
    }
    write_result(result, args.output)
    print('| quantity | value |\n|---|---|')
    for key, value in result.items():
        print(f'| {key} | {value:.4g} |' if isinstance(value, float) else f'| {key} | {value} |')
    shutil.rmtree(tmp, ignore_errors=True)  # the isolated presto profile
    return 0


def _force_constants_node(phonon, parent):
    from aiida.plugins import DataFactory

    ForceConstantsData = DataFactory('phonopy.force_constants')
    from aiida import orm

    node = ForceConstantsData(structure=orm.StructureData(ase=parent), supercell_matrix=[[2, 0, 0], [0, 2, 0],
                                                                                         [0, 0, 2]])
    node.set_force_constants(phonon.force_constants)
    return node.store()


if __name__ == '__main__':
    raise SystemExit(main())
