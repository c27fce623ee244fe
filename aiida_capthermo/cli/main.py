"""``capthermo`` (also ``verdi data capthermo``): set up codes, submit workchains from protocols, query results."""

from __future__ import annotations

import pathlib
import sys

import click

VALUE_TYPES = (int, float)


def _parse_override(items: tuple[str, ...]) -> dict:
    """``key.sub=value`` pairs into a nested dict; values parsed as YAML (numbers, lists, booleans)."""
    import yaml

    overrides: dict = {}
    for item in items:
        if '=' not in item:
            raise click.BadParameter(f'{item!r} is not of the form key=value', param_hint='--override')
        key, value = item.split('=', 1)
        target = overrides
        *parents, last = key.split('.')
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise click.BadParameter(f'{item!r}: {parent!r} was given a value above and cannot hold {last!r}',
                                         param_hint='--override')
        try:
            target[last] = yaml.safe_load(value)
        except yaml.YAMLError as exception:
            reason = str(exception).splitlines()[0]
            raise click.BadParameter(f'{item!r}: the value is not valid YAML ({reason})', param_hint='--override')
    return overrides


def _protocol_files() -> dict:
    """The protocol files of the workchains ``capthermo submit`` builds, read without loading a profile."""
    import yaml

    folder = pathlib.Path(__file__).parent.parent / 'workflows' / 'protocols'
    return {workflow: yaml.safe_load((folder / f'{workflow}.yaml').read_text())
            for workflow in ('study', 'dataset', 'screen')}


def _protocols_help() -> str:
    names = '; '.join(f'{workflow}: {", ".join(data["protocols"])} (default {data["default_protocol"]})'
                      for workflow, data in _protocol_files().items())
    return f'Protocol ({names}); `capthermo protocols` describes them.'


@click.group('capthermo')
@click.option('-p', '--profile', default=None, help='AiiDA profile to use (default: the default profile).')
def cli(profile):
    """aiida-capthermo: phonon-informed datasets, MACE and band-gap GNNs as AiiDA provenance."""


def needs_profile(function):
    """Load the profile (``-p`` or the default) before the command runs, so that ``--help`` needs none; an unknown
    profile is a one-line error."""
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from aiida import load_profile
        from aiida.common.exceptions import ConfigurationError
        from aiida.manage import get_manager

        group = click.get_current_context().parent  # the capthermo group (also under `verdi data`)
        profile = group.params.get('profile') if group is not None else None
        if get_manager().get_profile() is None or profile:
            try:
                load_profile(profile, allow_switch=True)
            except ConfigurationError as exception:  # unknown profile, no default profile, unreadable config
                raise click.ClickException(f'cannot load the AiiDA profile {profile or "(default)"}: {exception}')
        return function(*args, **kwargs)

    return wrapper


@cli.command('protocols')
@click.argument('workflow', required=False, type=click.Choice(['study', 'dataset', 'screen']))
def list_protocols(workflow):
    """The protocols of the study, dataset and screen workchains with their descriptions."""
    for name, data in _protocol_files().items():
        if workflow in (None, name):
            click.echo(f'{name} (default: {data["default_protocol"]})')
            for protocol, entry in data['protocols'].items():
                click.echo(f'  {protocol:9s} {" ".join(entry["description"].split())}')


CODES = {
    'capthermo-label': 'capthermo.label',
    'capthermo-gnn': 'capthermo.gnn_train',
    'capthermo-mace': 'capthermo.mace_evaluate',
    'capthermo-mlip': 'capthermo.mlip_md',
    'mace_run_train': 'capthermo.mace_finetune',
}


def ensure_codes(computer: str = 'localhost', bin_dir: str | None = None) -> dict:
    """Load or create the InstalledCodes ``name@computer`` of :data:`CODES`; return name -> (code, created)."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    node = orm.load_computer(computer)
    folder = pathlib.Path(bin_dir) if bin_dir else pathlib.Path(sys.executable).parent
    codes = {}
    for name, plugin in CODES.items():
        try:
            codes[name] = (orm.load_code(f'{name}@{computer}'), False)
        except NotExistent:
            codes[name] = (orm.InstalledCode(computer=node, filepath_executable=str(folder / name), label=name,
                                             default_calc_job_plugin=plugin).store(), True)
    return codes


@cli.command('setup-codes')
@click.option('--computer', default='localhost', show_default=True, help='Computer (label) the codes run on.')
@click.option('--bin-dir', default=None, help='Folder of the executables on that computer (default: this Python).')
@needs_profile
def setup_codes(computer, bin_dir):
    """Create InstalledCodes for the package's console scripts and mace_run_train (label: name@computer)."""
    for code, created in ensure_codes(computer, bin_dir).values():
        click.echo(f'{"created " if created else "exists  "} {code.full_label} (pk {code.pk}) -> '
                   f'{code.filepath_executable}')


@cli.command('submit')
@click.argument('workflow', type=click.Choice(['dataset', 'study', 'screen']))
@click.option('--protocol', default=None, help=_protocols_help())
@click.option('--model', 'model_pk', type=int, default=None, help='screen: pk of the MACE model node (default: the '
              'newest MACE model).')
@click.option('--computer', default='localhost', show_default=True, help='Computer of the codes set up by '
              '`capthermo setup-codes`.')
@click.option('--override', '-o', multiple=True, help='Override a protocol input: key.sub=value (YAML value), '
              'e.g. -o temperatures=[300,600] -o low.calculator.method=GFN2-xTB.')
@click.option('--dry-run', is_flag=True, help='Build and validate the inputs, submit nothing.')
@needs_profile
def submit_workflow(workflow, protocol, computer, override, dry_run, model_pk):
    """Submit the dataset, study or screen workchain to the daemon, built from a protocol. Every mistake (unknown
    protocol, override or code, invalid input) is a one-line error before anything is submitted."""
    from aiida.engine import submit

    overrides = _parse_override(override)
    try:
        builder = _build(workflow, protocol, computer, overrides, model_pk)
        error = builder._process_class.spec().inputs.validate(builder._inputs(prune=True))
        if error is not None:
            raise ValueError(str(error))
        if dry_run:
            click.echo('inputs are valid; nothing submitted')
            return
        node = submit(builder)
    except ValueError as exception:
        raise click.ClickException(f'invalid {workflow} inputs: {" ".join(str(exception).split())}')
    click.echo(f'submitted {node.process_label}<{node.pk}>; follow with `verdi process status {node.pk}`')


def _build(workflow, protocol, computer, overrides, model_pk):
    """The builder of ``workflow`` from the protocol, the overrides and the codes set up on ``computer``."""
    from aiida_capthermo.workflows.protocols import load_code

    def code(name):
        return load_code(f'{name}@{computer}')

    label_code = code('capthermo-label')
    if workflow == 'screen':
        from aiida_capthermo.workflows.screen import SolidSolutionScreenWorkChain

        builder = SolidSolutionScreenWorkChain.get_builder_from_protocol(
            code('capthermo-mlip'), _mace_model(model_pk), protocol=protocol, overrides=overrides)
    elif workflow == 'dataset':
        from aiida_capthermo.workflows.dataset import PhononInformedDatasetWorkChain

        builder = PhononInformedDatasetWorkChain.get_builder_from_protocol(label_code, protocol=protocol,
                                                                           overrides=overrides)
    else:
        from aiida_capthermo.workflows.study import CapthermoStudyWorkChain

        builder = CapthermoStudyWorkChain.get_builder_from_protocol(
            label_code, code('capthermo-gnn'), code('mace_run_train'), protocol=protocol, overrides=overrides,
            mlip_code=code('capthermo-mlip'), evaluate_code=code('capthermo-mace'))
    return builder


def _mace_model(pk: int | None):
    """The MACE model node ``pk``, or the newest one."""
    from aiida import orm
    from aiida.plugins import DataFactory

    if pk is not None:
        node = orm.load_node(pk)
        if getattr(node, 'kind', None) != 'mace':
            raise click.ClickException(f'node {pk} is not a MACE model (ModelData of kind "mace")')
        return node
    query = orm.QueryBuilder().append(DataFactory('capthermo.model'), filters={'attributes.kind': 'mace'},
                                      tag='model').order_by({'model': {'id': 'desc'}}).limit(1)
    if not query.count():
        raise click.ClickException('no MACE model in this profile: train one (capthermo submit study) or give --model')
    return query.first()[0]


@cli.command('report')
@click.argument('identifier')
@click.option('-o', '--output', 'output', default=None, help='Folder for the CSV and the figures (default: '
              'capthermo-report-<pk>).')
@needs_profile
def report(identifier, output):
    """Print the study's Table I and write its CSV and figures (IDENTIFIER: pk or UUID of the study); reads stored
    nodes only (also after an archive import), nothing is re-run."""
    from aiida import orm

    from aiida_capthermo.workflows.report import write_report

    node = orm.load_node(identifier)
    pk = node.pk
    outputs = node.outputs
    if 'table' not in outputs:
        raise click.ClickException(f'{node.process_label}<{pk}> has no `table` output (state: '
                                   f'{node.process_state.value if node.process_state else "?"}, exit status '
                                   f'{node.exit_status}): the thermal stage has not finished')
    text, files = write_report(node, output or f'capthermo-report-{pk}')
    click.echo(f'Table I of {node.process_label}<{pk}> (Eg in eV, error bars = standard errors):')
    click.echo(text)
    click.echo(f'{len(files)} files in {output or f"capthermo-report-{pk}"}/: {", ".join(files)}')


@cli.command('datasets')
@click.option('--fidelity', type=click.Choice(['low', 'high']), default=None, help='Only this fidelity.')
@needs_profile
def list_datasets(fidelity):
    """List the datasets: size, fidelity, method, scheme, temperatures, compositions, gap statistics."""
    from aiida import orm
    from aiida.plugins import DataFactory

    filters = {'attributes.fidelity': fidelity} if fidelity else {}
    query = orm.QueryBuilder().append(DataFactory('capthermo.dataset'), filters=filters, project='*',
                                      tag='dataset').order_by({'dataset': {'id': 'asc'}})
    click.echo(f'{"pk":>6} {"n":>6} {"fidelity":8} {"subset":12} {"method":10} {"scheme":7} {"gap (eV)":>16}  T (K)')
    for (node,) in query.iterall():
        attributes = node.base.attributes
        gap = attributes.get('statistics', {}).get('gap', {})
        gap_text = f'{gap["mean"]:.3f}+-{gap["std"]:.3f}' if 'mean' in gap else '-'
        click.echo(f'{node.pk:>6} {attributes.get("n_structures"):>6} {str(attributes.get("fidelity", "-")):8} '
                   f'{str(attributes.get("subset", "-")):12} {str(attributes.get("method", "-")):10} '
                   f'{str(attributes.get("scheme", "-")):7} {gap_text:>16}  {attributes.get("temperatures")}')


@cli.command('models')
@click.option('--kind', type=click.Choice(['gnn', 'mace']), default=None, help='Only this kind of model.')
@needs_profile
def list_models(kind):
    """List the trained models with the job that made them and their hash."""
    from aiida import orm
    from aiida.plugins import DataFactory

    filters = {'attributes.kind': kind} if kind else {}
    query = orm.QueryBuilder().append(DataFactory('capthermo.model'), filters=filters, tag='model').order_by(
        {'model': {'id': 'asc'}})
    click.echo(f'{"pk":>6} {"kind":5} {"created by":28} sha256')
    for (node,) in query.iterall():
        creator = node.creator
        made_by = f'{creator.process_label}<{creator.pk}>' if creator else '-'
        click.echo(f'{node.pk:>6} {node.kind:5} {made_by:28} {node.sha256[:16]}')


data_cli = cli
