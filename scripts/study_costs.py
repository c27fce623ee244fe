"""What each study protocol runs, counted from the protocol files (no profile, nothing computed but counts).

    python scripts/study_costs.py            # markdown table for docs/study.md

Labels: single points of the labelling engine (low = energy/forces/stress/gap, high = gap only); relaxations: one
per symmetry-inequivalent configuration (Burnside count, capped by max_configurations); replica-steps: MD steps x
replicas of the 40-atom cell (the phonon supercell for the finite-temperature phonons). The parents' finite
displacements and the MACE refinement frames are not counted.
"""

from __future__ import annotations

import numpy as np

from aiida_capthermo.core.solid_solution import count_inequivalent, site_permutations
from aiida_capthermo.core.structures import antiperovskite
from aiida_capthermo.workflows.dataset import PhononInformedDatasetWorkChain
from aiida_capthermo.workflows.gnn import GnnTwoStageWorkChain
from aiida_capthermo.workflows.mlip_potential import MlipPotentialWorkChain
from aiida_capthermo.workflows.screen import SolidSolutionScreenWorkChain
from aiida_capthermo.workflows.study import CapthermoStudyWorkChain
from aiida_capthermo.workflows.thermal import ThermalGapWorkChain


def costs(protocol: str) -> dict:
    def stage(process, name):
        return CapthermoStudyWorkChain.stage_protocol_inputs(protocol, name, process)

    dataset = stage(PhononInformedDatasetWorkChain, 'dataset')
    screen = stage(SolidSolutionScreenWorkChain, 'screen')
    thermal = stage(ThermalGapWorkChain, 'thermal')
    prototype = screen['prototype']
    supercell = np.array(dataset['supercell'])
    cell = antiperovskite(prototype['a'], prototype['b'], prototype['host'], prototype['a_host']).repeat(supercell)
    sites = [i for i, s in enumerate(cell.get_chemical_symbols()) if s == prototype['host']]
    permutations = site_permutations(cell, sites)
    relaxations = sum(min(count_inequivalent(permutations, round(x * len(sites))), screen['max_configurations'])
                      for x in screen['compositions'])
    phonons = screen['phonons']
    hot = [t for t in thermal['temperatures'] if t > 0]
    md = thermal['md']
    mace = stage(MlipPotentialWorkChain, 'mace')
    gnn = stage(GnnTwoStageWorkChain, 'gnn')
    refine = mace.get('refine') or {}
    low = len(dataset['temperatures']) * dataset['structures_per_temperature']
    equilibration = md.get('equilibration_steps', 0)
    md_steps = equilibration + md['steps']
    return {
        'labels (low + equilibrium + high)': f'{low} + {dataset["n_equilibrium"]} + {dataset["high_structures"]}',
        'engine (low / high)': ' / '.join(str(dataset.get(f, {}).get('engine', 'local')) for f in ('low', 'high')),
        'MACE': (f'{mace.get("foundation_name", "from scratch")}, {mace["hyperparameters"].get("max_num_epochs")}'
                 ' epochs' + (f'; up to {refine.get("rounds", 1)} active-learning rounds '
                              f'({len(refine["compositions"]) * len(refine["temperatures"])} x '
                              f'{refine.get("equilibration_steps", 0) + refine["steps"]} MD '
                              f'steps of {refine.get("timestep", 1.0):g} fs each, then '
                              f'{refine.get("finetune_epochs") or "all"} epochs'
                              + (', the last round\'s frames too' if refine.get('train_on_last') else '') + ')'
                              if refine else '')),
        'GNN epochs (low, high) x models': f'{gnn["hyperparameters"].get("max_epochs")}, '
                                           f'{gnn.get("finetune_hyperparameters", {}).get("max_epochs", "same")} x '
                                           f'{gnn.get("members", 1)}',
        'screen relaxations': f'{relaxations} ({len(screen["compositions"])} compositions)',
        'finite-T phonons per unstable structure': (
            f'{len(screen["temperatures"])} T x {phonons.get("replicas", 1)} x '
            f'{phonons.get("equilibration_steps", 1000) + phonons["steps"]} steps of '
            f'{40 * int(np.prod(phonons.get("supercell", [1, 1, 1])))} atoms'),
        'thermal MD replica-steps': (f'{len(screen["compositions"]) * len(hot) * md["replicas"] * md_steps:,} '
                                     f'({len(screen["compositions"])} x {len(hot)} T x {md["replicas"]} x '
                                     f'{md_steps * md.get("timestep", 1.0) / 1000:g} ps'
                                     + (f', {equilibration * md.get("timestep", 1.0) / 1000:g} of them not averaged)'
                                        if equilibration else ')')),
    }


def main() -> None:
    protocols = ['demo', 'mid', 'fast', 'paper']
    table = {name: costs(name) for name in protocols}
    rows = list(table['demo'])
    print('| | ' + ' | '.join(protocols) + ' |')
    print('|---' * (len(protocols) + 1) + '|')
    for row in rows:
        print(f'| {row} | ' + ' | '.join(table[name][row] for name in protocols) + ' |')


if __name__ == '__main__':
    main()
