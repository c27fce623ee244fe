"""The validation frames of a finished study, frame by frame, and the thermal stage's replicas, as JSON.

Read from the study's nodes, nothing rerun. Per validation frame: x, T (K), atoms, the replica (MD job key:replica
id) and the frame's index in its MD job, the low engine's energy (eV per cell, the validation's low labels), the
potential's (its MACE evaluation of the same frames) and the teacher's gap (eV, the high labels; the low gap when
the study has no high engine). dU = engine - potential is what the validation's sampling term is made of.

Per replica of the thermal stage: its MD attempt and id, structure key, x, T, the equilibration starts of its gap and of
its potential energy and the later one (recorded frames), whether its energy still drifted through its average by the
study's own test (``drifting``; with ``energy_trend``, the trend's change in eV and z, where the study recorded it), its
samples, statistical inefficiency and mean gap; and ``energy_block_means``: its potential energy averaged over each
tenth of its recorded frames less the lowest of those ten means (eV per cell), which shows a relaxation at a glance.

    python scripts/validation_frames.py STUDY_PK --output docs/figures/mid/validation_frames.json
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('study', help='pk or UUID of a finished CapthermoStudyWorkChain with a validation stage')
    parser.add_argument('--output', default=None, help='JSON file to write')
    args = parser.parse_args()

    from aiida import load_profile, orm
    from aiida.common.links import LinkType

    load_profile()

    study = orm.load_node(args.study)
    thermal = study.base.links.get_outgoing(link_label_filter='thermal').one().node
    table = next(node for node in study.called_descendants if node.process_label == 'validation_table')
    uuids = table.inputs.settings['structure_uuids']
    position = {uuid: index for index, uuid in enumerate(uuids)}
    frames = table.inputs.frames
    picked = frames.base.attributes.get('picked')
    labelled = frames.get_labelled_set()
    n = len(labelled)
    low = table.inputs.low.get_labelled_set()
    parity = table.inputs.parity
    engine, potential, teacher = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    rows = [position[uuid] for uuid in low.structure_uuid]
    engine[rows], potential[rows] = parity.get_array('energy_ref'), parity.get_array('energy_pred')
    high = table.inputs.high.get_labelled_set() if 'high' in table.inputs else low
    teacher[[position[uuid] for uuid in high.structure_uuid]] = high.gap
    records = []
    for index, record in enumerate(picked):
        if labelled.temperature[index] == 0:
            continue  # the relaxed structures, not MD frames
        records.append({'x': float(labelled.x[index]), 'temperature': float(labelled.temperature[index]),
                        'n_atoms': int(labelled.n_atoms[index]), 'replica': record['replica'],
                        'frame': int(record['index']), 'engine_energy': float(engine[index]),
                        'potential_energy': float(potential[index]), 'teacher_gap': float(teacher[index])})

    jobs = {link.link_label: link.node for link in thermal.base.links.get_outgoing(
        link_type=LinkType.CALL_CALC, link_label_filter='md_%').all() if 'series' in link.node.outputs}
    replicas = []
    for row in thermal.outputs.replicas.get_dict()['replicas']:
        job = jobs.get(f'md_{row["attempt"]}')
        blocks = None
        if job is not None:
            energy = np.asarray(job.outputs.series.get_array(f'potential_energy_{row["replica"]}'), dtype=float)
            means = np.array([part.mean() for part in np.array_split(energy, 10)])
            blocks = [round(float(value), 4) for value in means - means.min()]
        fields = ('attempt', 'replica', 'key', 'x', 'temperature', 'start', 'start_gap', 'start_energy', 'drifting',
                  'energy_trend', 'n_samples', 'inefficiency', 'mean')
        replicas.append({name: row.get(name) for name in fields}
                        | {'energy_block_means': blocks})
    result = {'what': __doc__.split('\n\n')[1].replace('\n', ' ') + ' ' + __doc__.split('\n\n')[2].replace('\n', ' '),
              'study_uuid': study.uuid, 'frames': records, 'replicas': replicas}
    drifting = sum(bool(r['drifting']) for r in replicas)
    print(f'{len(records)} validation frames; {len(replicas)} replicas, {drifting} drifting')
    if args.output:
        pathlib.Path(args.output).write_text(json.dumps(result, indent=1) + '\n')


if __name__ == '__main__':
    main()
