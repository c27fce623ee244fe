"""`capthermo status` and the demo's progress line: a study's stages with their state, running step and jobs done,
running and waiting, counted on a hand-built provenance graph whose answer is known."""

from __future__ import annotations

import json

from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ProcessState
from aiida.schedulers.datastructures import JobState


def _process(cls, label: str, state: ProcessState, caller=None, link: str | None = None, link_type=None,
             computer=None, scheduler: JobState | None = None, exit_status: int | None = None):
    node = cls(computer=computer) if computer is not None else cls()
    node.set_process_label(label)
    node.set_process_state(state)
    if exit_status is not None:
        node.set_exit_status(exit_status)
    if caller is not None:
        node.base.links.add_incoming(caller, link_type, link)
    node.store()
    if scheduler is not None:
        node.set_scheduler_state(scheduler)
    return node


def test_status_counts_the_jobs_of_each_stage(aiida_localhost):
    """A study whose dataset stage finished (two jobs) and whose potential stage runs a refinement with one job
    running, one queued and one not yet submitted: per stage the state, the running step and the counts."""
    from click.testing import CliRunner

    from aiida_capthermo.cli.main import cli
    from aiida_capthermo.workflows.progress import progress_line, stage_status

    study = _process(orm.WorkflowNode, 'CapthermoStudyWorkChain', ProcessState.WAITING)
    dataset = _process(orm.WorkflowNode, 'PhononInformedDatasetWorkChain', ProcessState.FINISHED, study, 'dataset',
                       LinkType.CALL_WORK, exit_status=0)
    for index in range(2):
        _process(orm.CalcJobNode, 'LabelCalcJob', ProcessState.FINISHED, dataset, f'label_{index}',
                 LinkType.CALL_CALC, aiida_localhost, exit_status=0)
    mace = _process(orm.WorkflowNode, 'MlipPotentialWorkChain', ProcessState.WAITING, study, 'mace',
                    LinkType.CALL_WORK)
    _process(orm.CalcJobNode, 'FinetuneMaceCalcJob', ProcessState.FINISHED, mace, 'mace', LinkType.CALL_CALC,
             aiida_localhost, exit_status=0)
    _process(orm.CalcFunctionNode, 'merge_datasets', ProcessState.FINISHED, mace, 'CALL', LinkType.CALL_CALC,
             exit_status=0)  # a calcfunction is no step and no job
    refine = _process(orm.WorkflowNode, 'BatchLabelWorkChain', ProcessState.WAITING, mace, 'refine0_labels',
                      LinkType.CALL_WORK)
    _process(orm.CalcJobNode, 'LabelCalcJob', ProcessState.WAITING, refine, 'batch_0', LinkType.CALL_CALC,
             aiida_localhost, scheduler=JobState.RUNNING)
    _process(orm.CalcJobNode, 'LabelCalcJob', ProcessState.WAITING, refine, 'batch_1', LinkType.CALL_CALC,
             aiida_localhost, scheduler=JobState.QUEUED)
    _process(orm.CalcJobNode, 'LabelCalcJob', ProcessState.CREATED, refine, 'batch_2', LinkType.CALL_CALC,
             aiida_localhost)

    rows = {row['stage']: row for row in stage_status(study)}
    assert list(rows) == ['dataset', 'mace']
    assert rows['dataset']['state'] == 'finished' and rows['dataset']['step'] is None
    assert (rows['dataset']['done'], rows['dataset']['running'], rows['dataset']['waiting']) == (2, 0, 0)
    assert rows['mace']['state'] == 'running' and rows['mace']['step'] == 'refine0_labels/batch_2'  # the newest
    assert (rows['mace']['done'], rows['mace']['running'], rows['mace']['waiting'], rows['mace']['total']) == (
        1, 1, 2, 4)
    assert progress_line(study) == 'running mace/refine0_labels/batch_2; jobs 3 done, 1 running, 2 waiting'

    result = CliRunner().invoke(cli, ['status', str(study.pk), '--json'])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record['jobs'] == {'done': 3, 'running': 1, 'waiting': 2, 'total': 6} and not record['terminated']
    assert [row['stage'] for row in record['stages']] == ['dataset', 'mace']
    text = CliRunner().invoke(cli, ['status', str(study.pk)])
    assert text.exit_code == 0 and f'CapthermoStudyWorkChain<{study.pk}>: running' in text.output
    mace_line = next(line.split() for line in text.output.splitlines() if line.split()[:1] == ['mace'])
    assert mace_line[1] == 'running' and mace_line[3:] == ['1/1/2', 'refine0_labels/batch_2'], text.output
    wrong = CliRunner().invoke(cli, ['status', str(dataset.pk)])
    assert wrong.exit_code != 0 and 'is not a study' in wrong.output
