"""Table I of a finished study recomputed with this checkout's statistics, validation rows and error budget.

Nothing is rerun: the MD, the validation stage's labels, the GNN's predictions and the MACE evaluation stay as the
study stored them; the calcfunctions ``thermal_gaps`` (each replica's equilibration and drift), ``validation_table``
and ``table_one`` run again on those nodes without storing anything. Use it to see what a change of the statistics
or of the error budget does to a study that ran before it (the nodes of the study are unchanged).

Writes the replicas' statistics, the validation rows and Table I (the rows and the CSV) as JSON (``--output``) and
prints the text table.

    python scripts/recompute_table.py STUDY_PK --output table.json
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('study', help='pk or UUID of a finished CapthermoStudyWorkChain with a validation stage')
    parser.add_argument('--output', default=None, help='JSON file to write')
    args = parser.parse_args()

    from aiida import load_profile, orm

    load_profile()
    from aiida_capthermo.workflows.report import table_one, table_rows, table_text
    from aiida_capthermo.workflows.thermal import thermal_gaps
    from aiida_capthermo.workflows.thermal_validation import validation_table

    study = orm.load_node(args.study)
    stored = next(node for node in study.called_descendants if node.process_label == 'validation_table')
    inputs = {name: stored.inputs[name] for name in stored.inputs}
    validation = validation_table(**inputs, metadata={'store_provenance': False})['validation']
    averaged = next(node for node in study.called_descendants if node.process_label == 'thermal_gaps')
    gaps = thermal_gaps(**{name: averaged.inputs[name] for name in averaged.inputs},
                        metadata={'store_provenance': False})
    tabulated = next(node for node in study.called_descendants if node.process_label == 'table_one')
    table_inputs = {name: tabulated.inputs[name] for name in tabulated.inputs if name not in ('validation', 'table')}
    report = table_one(**table_inputs, table=gaps['table'], validation=validation,
                       metadata={'store_provenance': False})
    rows = report['table'].get_dict()['rows']
    print(table_text(rows) if rows and 'temperatures' in rows[0] else table_text(table_rows(rows)))
    if args.output:
        with open(args.output, 'w') as handle:
            json.dump({'study_uuid': study.uuid, 'replicas': gaps['replicas'].get_dict()['replicas'],
                       'validation': validation.get_dict()['rows'],
                       'table': rows, 'csv': report['csv'].get_content()}, handle, indent=1)


if __name__ == '__main__':
    main()
