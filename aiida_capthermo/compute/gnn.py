"""``capthermo-gnn``: train, predict with and explain the band-gap GNN on the compute side.

Subcommands
-----------
``train``    datasets (``LabelledSet`` ``.npz``) + hyper-parameter file (JSON/YAML) [+ parent model dir] ->
             ``model.pt``, ``model.json``, ``metrics.json``, ``parity.npz``, ``parity.png``, ``parity.pdf``,
             ``training_curve.json``, ``checkpoint.pt``, ``summary.json``.
``predict``  model dir (+ ``--member`` dirs) + dataset -> ``predictions.npz`` (``values`` in the target's units:
             the mean of the models; with members also ``members`` [n_models, n_structures], the model first),
             ``summary.json``.
``explain``  model dir + dataset -> ``explanation.json`` (edge importance per bond type), ``explanation.png``.

Every run writes ``summary.json`` (inputs, units, outputs, timings; ``error`` and ``error_kind`` on failure:
``invalid_input``, ``no_data``, ``nan_loss``, ``walltime``, ``out_of_memory``, ``exception``) and exits non-zero
when it fails.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
import traceback

TRAIN_OUTPUTS = ('model.pt', 'model.json', 'metrics.json', 'parity.npz', 'parity.png', 'parity.pdf',
                 'training_curve.json')


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='capthermo-gnn', description='Band-gap GNN: train, predict, explain.')
    parser.add_argument('--summary', default='summary.json', help='Where to write the machine-readable summary.')
    sub = parser.add_subparsers(dest='command', required=True)

    train = sub.add_parser('train', help='Train (or fine-tune from --parent-model) a GNN.')
    train.add_argument('--dataset', action='append', required=True,
                       help='LabelledSet .npz; repeat to concatenate several datasets.')
    train.add_argument('--hyperparameters', required=True, help='JSON or YAML file of GnnHyperparameters.')
    train.add_argument('--parent-model', default=None, help='Directory with model.pt/model.json of the first stage.')
    train.add_argument('--restart', default=None, help='checkpoint.pt of an interrupted run to continue.')
    train.add_argument('--time-limit', type=float, default=None,
                       help='Seconds; stop cleanly with a checkpoint before exceeding it.')
    train.add_argument('--output-dir', default='.', help='Directory for the output files.')

    predict = sub.add_parser('predict', help='Predict the target for every structure of a dataset.')
    predict.add_argument('--model', required=True, help='Model directory (model.pt + model.json).')
    predict.add_argument('--member', action='append', default=[],
                         help='Directory of another member of an ensemble (same target); repeat. `values` is then the '
                              'mean of all the models, `members` each one\'s.')
    predict.add_argument('--dataset', required=True, help='LabelledSet .npz of the structures.')
    predict.add_argument('--batch-size', type=int, default=256, help='Structures per batch.')
    predict.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'), help='Torch device.')
    predict.add_argument('--output', default='predictions.npz', help='Output .npz (array `values`).')

    explain = sub.add_parser('explain', help='Edge importance per bond type (GNNExplainer).')
    explain.add_argument('--model', required=True, help='Model directory (model.pt + model.json).')
    explain.add_argument('--dataset', required=True, help='LabelledSet .npz of the structures to explain.')
    explain.add_argument('--epochs', type=int, default=100, help='GNNExplainer optimisation epochs per structure.')
    explain.add_argument('--max-structures', type=int, default=None, help='Explain only the first N structures.')
    explain.add_argument('--seed', type=int, default=0, help='Seed of the explainer.')
    explain.add_argument('--output', default='explanation.json', help='Output JSON.')
    return parser


def _read_config(path: str) -> dict:
    text = pathlib.Path(path).read_text()
    if path.endswith(('.yaml', '.yml')):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f'{path} must hold a mapping of hyper-parameters')
    return data


def run_train(args, summary: dict) -> None:
    import numpy as np

    from aiida_capthermo.core.dataset import LabelledSet
    from aiida_capthermo.ml.gnn.config import GnnHyperparameters
    from aiida_capthermo.ml.gnn.metrics import plot_parity
    from aiida_capthermo.ml.gnn.training import load_model, save_model, train_gnn

    output = pathlib.Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    hp = GnnHyperparameters.model_validate(_read_config(args.hyperparameters))
    datasets = [LabelledSet.load(path) for path in args.dataset]
    labelled = LabelledSet.concatenate(datasets) if len(datasets) > 1 else datasets[0]
    parent = load_model(args.parent_model) if args.parent_model else None
    summary['datasets'] = [{'path': path, 'n_structures': len(ds)} for path, ds in zip(args.dataset, datasets)]
    summary['checkpoint'] = str(output / 'checkpoint.pt')
    result = train_gnn(labelled, hp, parent=parent, checkpoint_path=output / 'checkpoint.pt',
                       restart_from=args.restart, time_limit=args.time_limit,
                       log=lambda line: print(line, flush=True))
    save_model(output, result.loaded)
    (output / 'metrics.json').write_text(json.dumps(result.metrics, indent=2))
    np.savez(output / 'parity.npz', **result.parity)
    (output / 'training_curve.json').write_text(json.dumps({k: v.tolist() for k, v in result.curve.items()}))
    stage = 'stage 2: all weights fine-tuned from the stage-1 model' if parent else 'stage 1: trained from scratch'
    plot_parity(result.parity, result.metrics, str(output / 'parity.png'), result.metrics['target'],
                result.metrics['units'], title=f'GNN {stage}, {len(labelled)} structures')
    summary.update(hyperparameters=result.loaded.metadata['hyperparameters'], device=result.device,
                   units={'target': result.metrics['units'], 'loss': 'MSE of the min-max normalised target'},
                   metrics=result.metrics, parent=result.loaded.metadata['parent'],
                   outputs=list(TRAIN_OUTPUTS), seconds_per_epoch=float(np.mean(result.curve['seconds'])))


def run_predict(args, summary: dict) -> None:
    import numpy as np

    from aiida_capthermo.core.dataset import LabelledSet
    from aiida_capthermo.ml.gnn.predict import predict_ensemble
    from aiida_capthermo.ml.gnn.training import load_model, select_device

    device = select_device(args.device)
    loaded = load_model(args.model, device=device)
    members = [load_model(path, device=device) for path in args.member]
    for path, member in zip(args.member, members):
        if member.target != loaded.target:
            raise ValueError(f'member {path} predicts {member.target!r}, the model {loaded.target!r}')
    labelled = LabelledSet.load(args.dataset)
    start = time.perf_counter()
    each = predict_ensemble([loaded, *members], labelled, batch_size=args.batch_size, device=device)
    values = each.mean(axis=0)
    seconds = time.perf_counter() - start
    outside = np.zeros(len(labelled), dtype=bool)  # flagged, not refused: MD frames are predicted all the same
    reasons: dict[str, int] = {}
    if loaded.metadata.get('domain'):
        from aiida_capthermo.core.domain import domain_violations, violation_kind

        for index in range(len(labelled)):
            found = domain_violations(loaded.metadata['domain'], labelled.atoms(index, with_labels=False))
            outside[index] = bool(found)
            for kind in map(violation_kind, found):
                reasons[kind] = reasons.get(kind, 0) + 1
    arrays = {'members': each} if members else {}
    np.savez(args.output, values=values, x=labelled.x, temperature=labelled.temperature, outside_domain=outside,
             **arrays)
    summary.update(target=loaded.target, units={'values': loaded.metadata['units']}, n_structures=len(labelled),
                   n_models=len(each), member_sha256=[member.metadata['sha256'] for member in members],
                   device=str(device), model_sha256=loaded.metadata['sha256'], outputs=[args.output],
                   prediction_seconds=seconds, structures_per_second=len(labelled) / seconds if seconds else None,
                   n_outside_domain=int(outside.sum()), outside_domain_reasons=reasons)


def run_explain(args, summary: dict) -> None:
    from aiida_capthermo.core.dataset import LabelledSet
    from aiida_capthermo.ml.gnn.explain import explain_bond_types
    from aiida_capthermo.ml.gnn.metrics import plot_bond_importance
    from aiida_capthermo.ml.gnn.training import load_model

    loaded = load_model(args.model)
    labelled = LabelledSet.load(args.dataset)
    if args.max_structures is not None:
        labelled = labelled.subset(range(min(args.max_structures, len(labelled))))
    importance = explain_bond_types(loaded, labelled, epochs=args.epochs, seed=args.seed)
    pathlib.Path(args.output).write_text(json.dumps(importance, indent=2))
    image = str(pathlib.Path(args.output).with_suffix('.png'))
    plot_bond_importance(importance, image)
    summary.update(bond_importance=importance, n_structures=len(labelled), model_sha256=loaded.metadata['sha256'],
                   outputs=[args.output, image])


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``capthermo-gnn``; returns 1 (after writing the summary) when the run failed."""
    from aiida_capthermo.compute.summary import summary_writer

    args = _parser().parse_args(argv)
    try:
        with summary_writer(args.summary, f'gnn.{args.command}', dict(vars(args))) as summary:
            {'train': run_train, 'predict': run_predict, 'explain': run_explain}[args.command](args, summary)
    except Exception:  # noqa: BLE001  every failure is in the summary (error, error_kind, traceback)
        traceback.print_exc()
        return 1
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
