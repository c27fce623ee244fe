"""Does weighting the energy in a retraining bring the potential's energies closer to the engine's on thermal frames?

From a finished study with a refined potential and a validation stage. Every arm continues the study's final potential
for ``--epochs`` on what one more refinement round would train on (the final training set plus the last round's
frames, which the final potential was evaluated on and never trained on), with the study's own hyper-parameters, one
``energy_weight`` (the forces keep theirs) and one seed, through the study's own ``FinetuneMaceWorkChain`` and code.
Each potential, and the final one as it is, is then evaluated by ``MaceEvaluateCalcJob`` on the validation stage's
low labels: the engine's energies and forces of decorrelated frames of the thermal MD (T > 0), which no potential
trained on. Per arm and (x, T): the force MAE (eV/Å), the energy MAE (eV/atom), ``std_dU`` (eV per cell, dU =
U_engine - U_MLIP, a constant offset cancelling) and ``beta_sigma`` = std(dU) / kT, the measure of the validation's
sampling term (``docs/thermal.md``). Only the weight differs between the arms of one seed: same data, same start.

The runs are stored in the study's profile (labelled ``energy_weight_check``); nothing of the study changes.

    python scripts/energy_weight_check.py STUDY_PK --weights 1 1000 --seeds 0 1 --output F
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import numpy as np


def points(labelled, parity) -> list[dict]:
    """Force MAE, energy MAE per atom and the energy spread of a potential per (x, T > 0) of the frames."""
    from aiida_capthermo.core.validation import energy_spread, force_errors

    energy_ref, energy_pred = parity.get_array('energy_ref'), parity.get_array('energy_pred')
    forces_ref, forces_pred = parity.get_array('forces_ref'), parity.get_array('forces_pred')
    spreads = {(r['x'], r['temperature']): r for r in energy_spread(labelled.x, labelled.temperature, energy_ref,
                                                                    energy_pred)}
    rows = []
    for (x, temperature), spread in sorted(spreads.items()):  # T > 0 only
        frames = np.flatnonzero(np.isclose(labelled.x, x, atol=1e-6) & np.isclose(labelled.temperature, temperature))
        atoms = np.concatenate([np.arange(labelled.offsets[k], labelled.offsets[k + 1]) for k in frames])
        per_atom = (energy_ref[frames] - energy_pred[frames]) / labelled.n_atoms[frames]
        rows.append({'x': x, 'temperature': temperature, 'n': spread['n'],
                     'force_mae': force_errors(forces_ref[atoms], forces_pred[atoms])['mae'],
                     'energy_per_atom_mae': float(np.abs(per_atom).mean()), 'std_dU': spread['std_dU'],
                     'beta_sigma': spread['beta_sigma']})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('study', help='pk or UUID of a finished study (refined potential, validation)')
    parser.add_argument('--weights', type=float, nargs='+', default=[1.0, 1000.0], help='energy weights, one arm each')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0], help='training seeds, every weight with each')
    parser.add_argument('--epochs', type=int, default=None,
                        help='epochs of each continuation (default: the refinement\'s finetune_epochs)')
    parser.add_argument('--output', default=None, help='JSON file to write')
    args = parser.parse_args()

    from aiida import engine, load_profile, orm

    load_profile()
    from aiida_capthermo.calculations.mace import MaceEvaluateCalcJob
    from aiida_capthermo.workflows.functions import merge_datasets
    from aiida_capthermo.workflows.mace import FinetuneMaceWorkChain

    study = orm.load_node(args.study)
    stage = study.base.links.get_outgoing(link_label_filter='mace').one().node
    trainings = sorted((n for n in stage.called if n.process_label == 'FinetuneMaceWorkChain'), key=lambda n: n.ctime)
    last = trainings[-1]
    if last.outputs.model.uuid != stage.outputs.model.uuid:
        raise SystemExit('the potential stage\'s final model is not its last training\'s')
    rounds = sorted((link for link in stage.base.links.get_outgoing().all()
                     if link.link_label.startswith('refine') and link.link_label.endswith('_labels')),
                    key=lambda link: int(link.link_label[len('refine'):-len('_labels')]))
    if not rounds:
        raise SystemExit('the study\'s potential has no refinement round')
    if (stage.outputs.learning_curve.get_dict().get('final') or {}).get('trained_on_last_round'):
        raise SystemExit('the final potential trained on the last round\'s frames already (refine.train_on_last): '
                         'there is no round left to continue on')
    fresh = rounds[-1].node.outputs.labels
    train = merge_datasets(orm.Dict({'subset': 'low+md', 'energy_weight_check': True}),
                           training_set=stage.outputs.training_set, md_frames=fresh)
    refine = stage.inputs.refine.get_dict()
    epochs = args.epochs or refine.get('finetune_epochs') or 8
    hyper = last.inputs.mace.hyperparameters.get_dict() if 'hyperparameters' in last.inputs.mace else {}
    validation = study.base.links.get_outgoing(link_label_filter='validation').one().node
    table = next(node for node in validation.called_descendants if node.process_label == 'validation_table')
    frames = table.inputs.low  # with the 0 K structures, which `points` leaves out (no spread at T = 0)
    labelled = frames.get_labelled_set()
    evaluate_code = study.inputs.mace.evaluate_code
    # the study's own scheduler options of the training and of the evaluation jobs
    job = next(n for n in reversed(last.called) if n.process_label == 'FinetuneMaceCalcJob')
    options = {key: value for key, value in job.get_options().items() if value is not None}
    evaluation = next(link.node for link in stage.base.links.get_outgoing().all()
                      if link.link_label.endswith('_evaluation'))
    evaluate_options = {key: value for key, value in evaluation.get_options().items() if value is not None}

    def evaluate(model) -> list[dict]:
        _, node = engine.run_get_node(MaceEvaluateCalcJob, code=evaluate_code, model=model, dataset=frames,
                                      metadata={'options': evaluate_options, 'label': 'energy_weight_check'})
        if not node.is_finished_ok:
            raise SystemExit(f'evaluation failed: [{node.exit_status}] {node.exit_message}')
        return points(labelled, node.outputs.parity)

    arms = [{'arm': 'final potential (no continuation)', 'energy_weight': hyper.get('energy_weight', 1.0),
             'seed': None, 'seconds': None, 'points': evaluate(stage.outputs.model)}]
    for seed in args.seeds:
        for weight in args.weights:
            inputs = {'code': last.inputs.mace.code, 'train': train, 'valid': stage.outputs.validation_set,
                      'foundation_model': stage.outputs.model,
                      'hyperparameters': orm.Dict({**hyper, 'energy_weight': weight, 'seed': seed,
                                                   'max_num_epochs': epochs}),
                      'metadata': {'options': options}}
            start = time.perf_counter()
            _, node = engine.run_get_node(FinetuneMaceWorkChain, mace=inputs,
                                          metadata={'label': 'energy_weight_check'})
            if not node.is_finished_ok:
                raise SystemExit(f'training with energy weight {weight} failed: [{node.exit_status}] '
                                 f'{node.exit_message}')
            arms.append({'arm': f'energy weight {weight:g}, seed {seed}', 'energy_weight': weight, 'seed': seed,
                         'seconds': round(time.perf_counter() - start, 1), 'model_uuid': node.outputs.model.uuid,
                         'points': evaluate(node.outputs.model)})
            worst = max(p['beta_sigma'] for p in arms[-1]['points'])
            print(f'{arms[-1]["arm"]}: force MAE '
                  f'{min(p["force_mae"] for p in arms[-1]["points"]):.3f}-'
                  f'{max(p["force_mae"] for p in arms[-1]["points"]):.3f} eV/Å, largest beta*std(dU) {worst:.2f}')
    result = {'what': __doc__.split('\n\n')[0].replace('\n', ' ') + ' ' + __doc__.split('\n\n')[1].replace('\n', ' '),
              'study_uuid': study.uuid, 'epochs': epochs, 'n_train': train.n_structures,
              'n_frames': int((labelled.temperature > 0).sum()), 'hyperparameters': hyper,
              'machine': platform.machine(), 'cpu_count': os.cpu_count(), 'arms': arms}
    for arm in arms:
        print(arm['arm'] + ': ' + '; '.join(f'x = {p["x"]:g}, {p["temperature"]:.0f} K: {p["force_mae"]:.3f} eV/Å, '
                                            f'{p["beta_sigma"]:.2f}' for p in arm['points']))
    if args.output:
        pathlib.Path(args.output).write_text(json.dumps(result, indent=1))


if __name__ == '__main__':
    main()
