"""The screen's ranking checked by the teacher: which configuration of a composition is its ground state.

The study's screen relaxes every configuration of a composition with the MACE potential and takes the lowest as the
ground state; Eg(0) and the thermal MD start from it. Where two configurations are close in the potential's energy,
the potential decides which one Table I describes, and two potentials trained alike can decide differently. Here
the study's low engine (the potential's own teacher) labels every relaxed configuration of the screen: its energy
(meV/atom, relative to the lowest), its largest force on the potential's relaxed cell, and the teacher's gap (the
dataset's high engine when it is the local one, else the low one). With ``--relax`` the positions are then relaxed
by the low engine itself (ASE's BFGS through the labelling engine, the cell kept: the screen relaxes positions in
Vegard's cells), and the same is reported on the engine's own minimum.

Writes JSON (``--output``: the machine, the settings, per composition the rows and both lowest configurations) and
prints a summary.

    OMP_NUM_THREADS=2 python scripts/check_ranking.py STUDY_PK --relax --output docs/figures/mid/ranking_check.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import numpy as np


def relaxed_configurations(screen) -> dict:
    """Every relaxed configuration of the screen, by composition key and configuration key."""
    from aiida.common.links import LinkType

    found: dict = {}
    for link in screen.base.links.get_outgoing(link_type=LinkType.CALL_WORK).all():
        label = link.link_label
        if not label.startswith('relax_') or 'relaxed' not in link.node.outputs:
            continue
        composition = label[len('relax_'):].rsplit('_', 1)[0]
        found.setdefault(composition, {}).update(dict(link.node.outputs.relaxed.items()))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('study', help='pk or UUID of a finished CapthermoStudyWorkChain with a screen')
    parser.add_argument('--relax', action='store_true', help='also relax the positions with the low engine')
    parser.add_argument('--fmax', type=float, default=0.05, help='eV/Å, the engine relaxation\'s force criterion')
    parser.add_argument('--steps', type=int, default=150, help='most BFGS steps per configuration')
    parser.add_argument('--output', default=None, help='JSON file to write')
    args = parser.parse_args()

    from aiida import load_profile, orm

    load_profile()
    from ase.optimize import BFGS

    from aiida_capthermo.ml.labelling import engine_calculator, single_point_function
    from aiida_capthermo.workflows.study import study_engines

    study = orm.load_node(args.study)
    screen = study.base.links.get_outgoing(link_label_filter='screen').one().node
    specs = study_engines(study)
    low_spec, teacher_spec = specs['low'], specs['teacher']
    low = single_point_function(low_spec)
    same = teacher_spec == low_spec  # no high engine: the low engine's own gap, not a second label
    teacher = None if same else single_point_function(teacher_spec)
    start = time.perf_counter()
    result = {'study_uuid': study.uuid, 'low_engine': low_spec.model_dump(), 'teacher': teacher_spec.model_dump(),
              'relax': {'fmax': args.fmax, 'steps': args.steps} if args.relax else None, 'compositions': {}}
    for composition, structures in sorted(relaxed_configurations(screen).items()):
        ranking = screen.outputs.compositions[composition]['ranking'].get_dict()
        # a reranked screen's energies are the engine's; the potential's are beside them
        potential = dict(zip(ranking['keys'], ranking.get('potential_relative_energy_per_atom',
                                                          ranking['relative_energy_per_atom'])))
        multiplicity = dict(zip(ranking['keys'], ranking['multiplicity']))
        rows = []
        for key in ranking['keys']:
            atoms = structures[key].get_ase()
            labels = low(atoms)
            row = {'key': key, 'multiplicity': multiplicity[key], 'n_atoms': len(atoms),
                   'potential_meV_per_atom': 1000 * potential[key],
                   'engine_energy_per_atom': labels['energy'] / len(atoms),
                   'engine_max_force': float(np.linalg.norm(labels['forces'], axis=1).max()),
                   'teacher_gap': float((labels if same else teacher(atoms))['gap'])}
            if args.relax:
                moved = atoms.copy()
                moved.calc = engine_calculator(low)
                optimizer = BFGS(moved, logfile=None)
                converged = bool(optimizer.run(fmax=args.fmax, steps=args.steps))
                row.update(relaxed_energy_per_atom=moved.get_potential_energy() / len(moved),
                           relaxed_converged=converged, relaxed_steps=int(optimizer.nsteps),
                           relaxed_displacement=float(np.linalg.norm(moved.positions - atoms.positions, axis=1)
                                                      .max()),
                           relaxed_teacher_gap=float((moved.calc.labels if same else teacher(moved))['gap']))
            rows.append(row)
        for name, column in (('engine_meV_per_atom', 'engine_energy_per_atom'),
                             ('relaxed_meV_per_atom', 'relaxed_energy_per_atom')):
            if column in rows[0]:
                lowest = min(row[column] for row in rows)
                for row in rows:
                    row[name] = 1000 * (row[column] - lowest)
        entry = {'potential_lowest': ranking.get('potential_lowest', ranking['lowest']),
                 'screen_lowest': ranking['lowest'], 'ranked_by': ranking.get('ranked_by', 'potential'),
                 'engine_lowest': min(rows, key=lambda row: row['engine_meV_per_atom'])['key'], 'rows': rows}
        if args.relax:
            entry['relaxed_lowest'] = min(rows, key=lambda row: row['relaxed_meV_per_atom'])['key']
        result['compositions'][composition] = entry
        print(f'{composition}: the potential ranks {entry["potential_lowest"]} lowest, the engine on its cells '
              f'{entry["engine_lowest"]}' + (f', the engine relaxed {entry["relaxed_lowest"]}' if args.relax else ''))
        for row in rows:
            line = (f'  {row["key"]} (x{row["multiplicity"]}): potential {row["potential_meV_per_atom"]:7.2f}, engine '
                    f'{row["engine_meV_per_atom"]:7.2f} meV/atom, max force {row["engine_max_force"]:.3f} eV/Å, '
                    f'teacher gap {row["teacher_gap"]:.3f} eV')
            if args.relax:
                line += (f'; engine-relaxed {row["relaxed_meV_per_atom"]:7.2f} meV/atom ({row["relaxed_steps"]} steps, '
                         f'moved {row["relaxed_displacement"]:.3f} Å), teacher gap {row["relaxed_teacher_gap"]:.3f} eV')
            print(line)
    result['seconds'] = round(time.perf_counter() - start, 1)
    result['machine'] = {'platform': platform.platform(), 'processor': platform.processor(),
                         'python': platform.python_version()}
    if args.output:
        pathlib.Path(args.output).write_text(json.dumps(result, indent=1, default=float) + '\n')


if __name__ == '__main__':
    main()
