"""Calcfunctions that transform datasets (join labelled batches, turn MD frames into structures, merge and split) and
build the end members of a solid solution.

Thin Data-in/Data-out steps shared by the stage workchains (dataset, batch labelling, MLIP potential); the arrays
and their statistics are :class:`~aiida_capthermo.core.dataset.LabelledSet`'s.
"""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.data.dataset import DatasetData
from aiida_capthermo.data.structures import set_structure_metadata

__all__ = ['assemble_dataset', 'build_end_members', 'frames_to_structures', 'md_trajectories', 'merge_datasets',
           'split_dataset']


@calcfunction
def assemble_dataset(attributes: orm.Dict, **labels) -> DatasetData:
    """Join the labelled batches of one fidelity into a dataset; ``attributes`` become its attributes.

    ``attributes['failed_in_failed_jobs']`` lists the structures of batches whose whole labelling job failed; they
    count as failed together with the structures the successful jobs could not label.
    """
    nodes = [labels[key] for key in sorted(labels)]
    labelled = LabelledSet.concatenate([node.get_labelled_set() for node in nodes])
    extra = attributes.get_dict()
    failed = sorted({key for node in nodes for key in node.base.attributes.get('failed')}
                    | set(extra.pop('failed_in_failed_jobs', [])))
    return _dataset_like(nodes[0], labelled, n_failed=len(failed), failed_structures=failed, **extra)


@calcfunction
def frames_to_structures(frames: DatasetData) -> dict:
    """One StructureData per frame of an (unlabelled) MD frames dataset, with its x, temperature and origin."""
    labelled = frames.get_labelled_set()
    outputs = {}
    for index in range(len(labelled)):
        structure = orm.StructureData(ase=labelled.atoms(index, with_labels=False))
        set_structure_metadata(structure, x=float(labelled.x[index]), temperature=float(labelled.temperature[index]),
                               origin=str(labelled.origin[index]))
        outputs[f'structure_{index:05d}'] = structure
    return outputs


@calcfunction
def md_trajectories(frames: DatasetData, results: orm.Dict, series: orm.ArrayData) -> dict:
    """One ``TrajectoryData`` per finished replica of a thermal MD job (``MlipThermalCalcJob``: its ``frames``,
    ``results`` and ``series``), so that ``verdi data core.trajectory`` lists, shows and exports them.

    Each trajectory holds the replica's recorded frames (positions and cells in Å), their times (fs, from the
    series) and MD steps (time / time step), and the attributes ``key`` (the structure), ``x``, ``temperature``
    (K, the target), ``seed``, ``timestep`` (fs) and ``replica``. Output ``replica_<r>``.
    """
    from ase.data import chemical_symbols

    labelled = frames.get_labelled_set()
    offsets = labelled.offsets
    outputs = {}
    for record in results['replicas']:
        if record.get('broke') or not record.get('n_frames'):
            continue
        first, count = int(record['frame_offset']), int(record['n_frames'])
        atoms = slice(offsets[first], offsets[first + count])
        n_atoms = int(labelled.n_atoms[first])
        times = np.asarray(series.get_array(f'time_fs_{record["replica"]}'), dtype=float)
        if len(times) != count or np.any(labelled.n_atoms[first:first + count] != n_atoms):
            raise ValueError(f'replica {record["replica"]}: {count} frames of {n_atoms} atoms do not match its '
                             f'series of {len(times)} times')
        trajectory = orm.TrajectoryData()
        trajectory.set_trajectory(
            symbols=[chemical_symbols[z] for z in labelled.numbers[offsets[first]:offsets[first] + n_atoms]],
            positions=labelled.positions[atoms].reshape(count, n_atoms, 3),
            cells=labelled.cells[first:first + count],
            stepids=np.rint(times / float(record['timestep'])).astype(int), times=times)
        for name in ('key', 'x', 'temperature', 'seed', 'timestep', 'replica'):
            if name in record:
                trajectory.base.attributes.set(name, record[name])
        outputs[f'replica_{int(record["replica"])}'] = trajectory
    return outputs


@calcfunction
def merge_datasets(attributes: orm.Dict, **datasets) -> DatasetData:
    """Concatenate labelled datasets (sorted by key) into one; ``attributes`` and the sources' uuids become attributes.

    The first dataset's ``engine``, ``method``, ``gap_method`` and ``fidelity`` are kept: merge only sets labelled
    the same way.
    """
    nodes = [datasets[key] for key in sorted(datasets)]
    methods = {node.base.attributes.get('method', None) for node in nodes}
    if len(methods) > 1:
        raise ValueError(f'cannot merge datasets labelled by different methods: {sorted(map(str, methods))}')
    labelled = LabelledSet.concatenate([node.get_labelled_set() for node in nodes])
    return _dataset_like(nodes[0], labelled, sources=[node.uuid for node in nodes], **attributes.get_dict())


def _dataset_like(node: DatasetData, labelled: LabelledSet, **attributes) -> DatasetData:
    """A new dataset labelled like ``node`` (engine, method, gap_method, calculator, fidelity kept; ``attributes``
    add to or override them)."""
    source = node.base.attributes
    kept = {key: source.get(key, None) for key in ('engine', 'method', 'gap_method', 'calculator', 'fidelity')}
    return DatasetData.from_labelled_set(labelled, **{**kept, **attributes})


@calcfunction
def split_dataset(dataset: DatasetData, settings: orm.Dict) -> dict:
    """Split a dataset at random into ``train`` and ``valid`` (``settings``: valid_fraction, seed).

    At least one structure goes to each part; the same seed gives the same split.
    """
    s = settings.get_dict()
    labelled = dataset.get_labelled_set()
    if len(labelled) < 2:
        raise ValueError(f'cannot split a dataset of {len(labelled)} structure(s) into train and validation')
    n_valid = min(len(labelled) - 1, max(1, int(round(s['valid_fraction'] * len(labelled)))))
    order = np.random.default_rng(s['seed']).permutation(len(labelled))
    parts = {'valid': np.sort(order[:n_valid]), 'train': np.sort(order[n_valid:])}
    return {name: _dataset_like(dataset, labelled.subset(indices), split=name, source=dataset.uuid,
                                subset=dataset.base.attributes.get('subset', None))
            for name, indices in parts.items()}


@calcfunction
def spread_subset(dataset: DatasetData, settings: orm.Dict) -> DatasetData:
    """``settings['n']`` structures of ``dataset`` spread evenly over its (x, T) points, drawn at random within
    each (``settings['seed']``; :func:`aiida_capthermo.core.validation.spread_subset`)."""
    from aiida_capthermo.core.validation import spread_subset as indices

    labelled = dataset.get_labelled_set()
    chosen = indices(labelled.x, labelled.temperature, int(settings['n']), int(settings.get('seed', 0)))
    return _dataset_like(dataset, labelled.subset(chosen), source=dataset.uuid, picked=chosen,
                         subset=dataset.base.attributes.get('subset', None))


@calcfunction
def build_end_members(prototype: orm.Dict, **parents: orm.StructureData) -> dict:
    """The end members ``host`` (x = 0) and ``guest`` (x = 1) of the solid solution ``prototype``, from the
    ``parents`` given (none, ``host``, or both): :func:`aiida_capthermo.core.structures.end_members`."""
    from aiida_capthermo.core.structures import end_members

    host, guest = end_members(prototype.get_dict(), *(parents[r].get_ase() if r in parents else None
                                                      for r in ('host', 'guest')))
    return {'host': orm.StructureData(ase=host), 'guest': orm.StructureData(ase=guest)}
