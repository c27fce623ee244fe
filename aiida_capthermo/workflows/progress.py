"""Where a running study is: its stages with their state, elapsed time, running step and jobs done, running and
waiting, read from the nodes (one query per look; ``capthermo status`` and the demo print it).

A job is *done* when its process has terminated, *running* when the scheduler runs it, *waiting* otherwise (not
yet submitted, queued, or between the engine's steps). A stage's running step is the newest of its processes that
has not terminated; calcfunctions, which run in one step, are left out.
"""

from __future__ import annotations

from aiida import orm
from aiida.common.links import LinkType

__all__ = ['job_counts', 'stage_status', 'total_counts', 'progress_line']

_CALLS = (LinkType.CALL_WORK, LinkType.CALL_CALC)


def job_counts(node: orm.ProcessNode) -> dict:
    """``done``, ``running``, ``waiting`` and ``total`` CalcJobs below ``node`` (itself included)."""
    from aiida.schedulers.datastructures import JobState

    jobs = [node] if isinstance(node, orm.CalcJobNode) else []
    jobs += [child for child in node.called_descendants if isinstance(child, orm.CalcJobNode)]
    done = sum(job.is_terminated for job in jobs)
    running = sum(not job.is_terminated and job.get_scheduler_state() == JobState.RUNNING for job in jobs)
    return {'done': done, 'running': running, 'waiting': len(jobs) - done - running, 'total': len(jobs)}


def _running_step(node: orm.ProcessNode) -> str | None:
    """The call link label of the newest unfinished process below ``node`` (``refine0_md_00``), or None."""
    steps = [link for link in node.base.links.get_outgoing(link_type=_CALLS).all()
             if not link.node.is_terminated and not isinstance(link.node, orm.CalcFunctionNode)]
    if not steps:
        return None
    newest = max(steps, key=lambda link: link.node.ctime)
    deeper = _running_step(newest.node) if isinstance(newest.node, orm.WorkflowNode) else None
    return f'{newest.link_label}/{deeper}' if deeper else newest.link_label


def stage_status(node: orm.ProcessNode) -> list[dict]:
    """One row per stage (process called by ``node``, oldest first, calcfunctions left out): ``stage`` (its call
    link label), ``process`` (label and pk), ``state`` (``running``, ``finished``, ``failed [status]``,
    ``killed``, ``excepted``), ``seconds`` (from its creation to now, or to its end), ``step`` (the running step,
    when running) and the :func:`job_counts`."""
    from aiida.common import timezone

    rows = []
    for link in sorted(node.base.links.get_outgoing(link_type=_CALLS).all(), key=lambda link: link.node.ctime):
        stage = link.node
        if isinstance(stage, orm.CalcFunctionNode):
            continue
        if not stage.is_terminated:
            state = 'running'
        elif stage.is_finished_ok:
            state = 'finished'
        elif stage.is_finished:
            state = f'failed [{stage.exit_status}]'
        else:
            state = stage.process_state.value if stage.process_state else 'unknown'
        end = timezone.now() if not stage.is_terminated else stage.mtime
        rows.append({'stage': link.link_label, 'process': f'{stage.process_label}<{stage.pk}>', 'state': state,
                     'seconds': round((end - stage.ctime).total_seconds(), 1),
                     'step': _running_step(stage) if not stage.is_terminated else None, **job_counts(stage)})
    return rows


def total_counts(rows: list[dict]) -> dict:
    """The :func:`job_counts` of a study summed over its :func:`stage_status` rows (a study runs its jobs through its
    stages: no second walk over every descendant)."""
    return {name: sum(row[name] for row in rows) for name in ('done', 'running', 'waiting', 'total')}


def progress_line(node: orm.ProcessNode) -> str:
    """One line: the running stages with their running step, and the jobs done/running/waiting below ``node``."""
    rows = stage_status(node)
    running = [f'{row["stage"]}/{row["step"]}' if row['step'] else row['stage']
               for row in rows if row['state'] == 'running']
    jobs = total_counts(rows)
    return (f'running {", ".join(running) or "-"}; jobs {jobs["done"]} done, {jobs["running"]} running, '
            f'{jobs["waiting"]} waiting')
