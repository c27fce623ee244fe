"""One number, one meaning: the exit status of every failure of every capthermo process.

Every process declares its exit codes with the numbers of :data:`EXIT_CODES` (``spec.exit_code(EXIT_CODES[name],
name, message=...)``), so a status means the same thing wherever it appears: 540 is "an MD job failed" in the
potential's refinement and in the thermal stage alike, and ``verdi process list -S 540`` finds both. Messages
may say more in one process than in another; the name and the number do not change.

Ranges:

* 300-349: a job's own outputs (the parsers): the script crashed, wrote nothing usable, or said why it stopped.
* 400-419: a job stopped by a limit (walltime, memory) or with nothing done (no structure labelled).
* 500-599: a workchain whose step or stage failed; the tens name the stage (50x phonons and sweeps, 51x dataset,
  52x GNN, 53x potential, 54x thermal MD, 56x screen, 57x thermal stage, 59x validation).

aiida-core's own numbers are not reused: ``BaseRestartWorkChain`` (301, 302, 401, 402) and ``CalcJob`` (100-199).
``python -m aiida_capthermo.exit_codes`` prints the table of ``docs/exit-codes.md`` from the processes
themselves (a test checks that the page is current and that no number has two names).
"""

from __future__ import annotations

__all__ = ['TABLE', 'EXIT_CODES', 'RESERVED', 'process_exit_codes', 'markdown']

#: Per name: the exit status and its meaning, for every process of the package.
TABLE: dict[str, tuple[int, str]] = {
    # the job's outputs
    'ERROR_UNRECOVERABLE_FAILURE': (300, 'a restart workchain gave up: its job failed in a way no retry mends'),
    'ERROR_SUMMARY_MISSING': (303, 'the console script wrote no summary: it crashed (or was killed) before finishing'),
    'ERROR_SUMMARY_UNPARSABLE': (304, 'the summary could not be read'),
    'ERROR_OUTPUT_FILES_MISSING': (305, 'an output file the summary names was not retrieved'),
    'ERROR_SCRIPT_FAILED': (310, 'the console script reported an error'),
    'ERROR_NO_STRUCTURE_RELAXED': (311, 'no structure could be relaxed'),
    'ERROR_NO_REPLICA_RAN': (312, 'no MD replica could run'),
    'ERROR_REPLICAS_BROKE': (313, 'some MD replicas blew up; the others finished and are attached'),
    'ERROR_MD_BROKE': (314, 'the phonon MD broke; the harmonic results are attached'),
    'ERROR_NO_TRAINING_DATA': (320, 'no usable training data'),
    'ERROR_INVALID_INPUT': (321, 'the console script rejected its input'),
    'ERROR_MODEL_FILE_MISSING': (322, 'training finished without writing the model file'),
    'ERROR_LOG_MISSING': (323, 'the log or results file of the training was not retrieved'),
    'ERROR_MISSING_LABELS': (324, 'the training data lack energy, force or stress labels'),
    'ERROR_FOUNDATION_NOT_OBTAINABLE': (330, 'the named foundation model could not be obtained on the computer'),
    'ERROR_REMOTE_RESOLUTION_FAILED': (331, 'resolving the device or foundation model on the computer failed'),
    'ERROR_NAN_LOSS': (340, 'the training loss became NaN or infinite'),
    # limits, nothing done
    'ERROR_OUT_OF_WALLTIME': (
        400, 'the job ran out of walltime (its script stopped itself, or the scheduler killed it)'),
    'ERROR_OUT_OF_MEMORY': (405, 'the job ran out of GPU or host memory'),
    'ERROR_NO_STRUCTURE_LABELLED': (410, 'no structure could be labelled'),
    'ERROR_BATCH_SIZE_ONE_OUT_OF_MEMORY': (411, 'even a batch of one structure ran out of memory'),
    # workchain steps and stages
    'ERROR_PHONONS_FAILED': (500, 'a phonon calculation failed'),
    'ERROR_NO_MODE_TO_SAMPLE': (501, 'a parent has no phonon mode above the frequency cutoff'),
    'ERROR_FORCES_FAILED': (502, 'the forces of displaced supercells could not be computed'),
    'ERROR_ALL_RUNS_FAILED': (503, 'every training run of a sweep failed'),
    'ERROR_DATASET_FAILED': (510, 'the dataset stage failed'),
    'ERROR_PARENT_RELAX_FAILED': (511, 'the end members could not be relaxed with the engine'),
    'ERROR_GNN_FAILED': (520, 'GNN training (or the GNN stage) failed'),
    'ERROR_MD_LABELLING_FAILED': (521, 'the high-fidelity labelling of MD frames failed'),
    'ERROR_MACE_FAILED': (530, 'MACE training (or the potential stage) failed'),
    'ERROR_REFINE_LABELS_FAILED': (531, 'no MD frame of the refinement could be labelled'),
    'ERROR_EVALUATION_FAILED': (532, 'the evaluation of the MACE potential failed'),
    'ERROR_MD_FAILED': (540, 'an MD job failed'),
    'ERROR_RELAX_FAILED': (541, 'the relaxation failed'),
    'ERROR_PREDICTION_FAILED': (542, 'a GNN prediction job failed'),
    'ERROR_MODES_FAILED': (543, 'the frozen-mode job failed'),
    'ERROR_REPLICAS_LOST': (544, 'replicas still blew up after every restart; the gaps of the others are attached'),
    'ERROR_SCREEN_FAILED': (560, 'the screen (its relaxations, or the stage) failed'),
    'ERROR_FINITE_TEMPERATURE_FAILED': (561, 'the finite-temperature phonon job failed'),
    'ERROR_RERANK_FAILED': (562, "the engine labelled none of the screen's configurations it was to rank"),
    'ERROR_THERMAL_FAILED': (570, 'the thermal-gap stage failed'),
    'ERROR_VALIDATION_FAILED': (590, 'the validation stage failed'),
    'ERROR_NO_FRAMES': (591, 'no production frame could be picked from the MD'),
    'ERROR_LOW_LABELLING_FAILED': (592, 'the low-fidelity labelling of the validation frames failed'),
    'ERROR_HIGH_LABELLING_FAILED': (593, 'the high-fidelity labelling of the validation frames failed'),
    'ERROR_NO_TEACHER_GAP': (594, 'no validation frame has a teacher gap'),
}

#: Exit status by name (what ``spec.exit_code`` takes).
EXIT_CODES: dict[str, int] = {name: status for name, (status, _) in TABLE.items()}

#: Numbers aiida-core's processes use, which the package leaves to them.
RESERVED = frozenset(range(100, 200)) | {301, 302, 401, 402}


def process_exit_codes() -> list[dict]:
    """Every exit code a capthermo process declares itself (not those it inherits from aiida-core), sorted by
    status: ``status``, ``name``, ``process`` (entry point) and ``message``."""
    from importlib.metadata import entry_points

    rows = []
    for group in ('aiida.calculations', 'aiida.workflows'):
        for point in sorted(entry_points(group=group), key=lambda p: p.name):
            if not point.name.startswith('capthermo.'):
                continue
            process = point.load()
            inherited = next(base for base in process.__mro__[1:]
                             if hasattr(base, 'spec') and not base.__module__.startswith('aiida_capthermo'))
            theirs = inherited.spec().exit_codes
            for name, code in process.spec().exit_codes.items():
                if name not in theirs:
                    rows.append({'status': code.status, 'name': name, 'process': point.name,
                                 'message': code.message})
    return sorted(rows, key=lambda row: (row['status'], row['process']))


def markdown() -> str:
    """The page ``docs/exit-codes.md``: one row per number with its name, its meaning and the processes that use
    it (their messages may add the details of the case)."""
    by_status: dict[int, dict] = {}
    for row in process_exit_codes():
        entry = by_status.setdefault(row['status'], {'names': set(), 'processes': []})
        entry['names'].add(row['name'])
        entry['processes'].append(row['process'].removeprefix('capthermo.'))
    lines = ['# Exit codes', '',
             'One number, one meaning, in every process of the package (`aiida_capthermo/exit_codes.py`): 300-349 a',
             "job's own outputs, 400-419 a job stopped by a limit or with nothing done, 500-599 a workchain's step or",
             "stage. aiida-core's own numbers (`CalcJob` 100-199, `BaseRestartWorkChain` 301, 302, 401, 402) keep",
             "their meaning. `verdi process show PK` gives a failed process's message; `verdi process list -S N`",
             'finds every process that ended with N. Generated by `python -m aiida_capthermo.exit_codes`.', '',
             '| status | name | meaning | processes |', '|---|---|---|---|']
    for status, entry in sorted(by_status.items()):
        names = ' / '.join(sorted(entry['names']))
        meaning = '; '.join(TABLE[name][1] for name in sorted(entry['names']) if name in TABLE)
        lines.append(f'| {status} | `{names}` | {meaning} | {", ".join(entry["processes"])} |')
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    print(markdown(), end='')
