"""``capthermo`` (also ``verdi data capthermo``): set up codes, submit workchains from protocols, query results."""

from __future__ import annotations

import pathlib
import sys

import click
from aiida.cmdline.params.types import DataParamType, ProcessParamType
from aiida.common.links import LinkType

from aiida_capthermo import __version__

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
            raise click.BadParameter(f'{item!r}: the value is not valid YAML ({reason})',
                                     param_hint='--override') from exception
    return overrides


#: The workchains ``capthermo submit`` builds from a protocol (see ``_build``).
SUBMITTABLE = ('study', 'dataset', 'screen')
#: Every workchain with a protocol file (``workflows/protocols/<name>.yaml``), the study's stages among them.
PROTOCOL_FILES = ('study', 'dataset', 'gnn', 'mlip_potential', 'screen', 'thermal')


def _protocol_files() -> dict:
    """The protocol files of the workchains, read without loading a profile."""
    import yaml

    folder = pathlib.Path(__file__).parent.parent / 'workflows' / 'protocols'
    return {workflow: yaml.safe_load((folder / f'{workflow}.yaml').read_text()) for workflow in PROTOCOL_FILES}


def _protocols_help() -> str:
    names = '; '.join(f'{workflow}: {", ".join(data["protocols"])} (default {data["default_protocol"]})'
                      for workflow, data in _protocol_files().items() if workflow in SUBMITTABLE)
    return f'Protocol ({names}); `capthermo protocols` describes them.'


def _load_profile(ctx, param, value):
    """Callback of ``-p/--profile`` (the group's and every command's): load that profile before any node argument
    is converted; an unknown profile is a one-line error."""
    if value is None or ctx.resilient_parsing:
        return value
    from aiida import load_profile
    from aiida.common.exceptions import ConfigurationError

    try:
        load_profile(value, allow_switch=True)
    except ConfigurationError as exception:
        raise click.BadParameter(f'cannot load the AiiDA profile {value}: {exception}', param=param) from exception
    return value


#: ``-p/--profile`` as verdi has it, on the group and on every command that reads the database.
PROFILE = click.option('-p', '--profile', default=None, is_eager=True, expose_value=False, callback=_load_profile,
                       help='AiiDA profile to use (default: the default profile).')
#: Node arguments as verdi takes them (pk, UUID or label; a one-line error when no such node).
MODEL = DataParamType(sub_classes=('aiida.data:capthermo.model',))
STUDY = ProcessParamType()
JSON = click.option('--json', 'as_json', is_flag=True, help='Print JSON instead of text (schema: docs/cli.md).')


@click.group('capthermo', context_settings={'help_option_names': ['-h', '--help']})
@click.version_option(__version__, '--version', prog_name='capthermo', message='%(prog)s %(version)s')
@PROFILE
def cli():
    """aiida-capthermo: phonon-informed datasets, MACE and band-gap GNNs as AiiDA provenance."""


def needs_profile(function):
    """Give the command ``-p/--profile`` and load the default profile before it runs when none is loaded, so that
    ``--help`` needs none; a missing or broken profile is a one-line error."""
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from aiida import load_profile
        from aiida.common.exceptions import ConfigurationError
        from aiida.manage import get_manager

        if get_manager().get_profile() is None:
            try:
                load_profile()
            except ConfigurationError as exception:  # no default profile, unreadable config
                raise click.ClickException(f'cannot load the default AiiDA profile: {exception}') from exception
        return function(*args, **kwargs)

    return PROFILE(wrapper)


def _study(node):
    """``node`` if it is a study (CapthermoStudyWorkChain), else a one-line error saying what it is."""
    if getattr(node, 'process_label', None) != 'CapthermoStudyWorkChain':
        kind = getattr(node, 'process_label', None) or type(node).__name__
        raise click.ClickException(f'{kind}<{node.pk}> is not a study: give the pk, UUID or label of a '
                                   'CapthermoStudyWorkChain (`verdi process list -a -p 1` lists them)')
    return node


@cli.command('protocols')
@click.argument('workflow', required=False, type=click.Choice(PROTOCOL_FILES))
def list_protocols(workflow):
    """The protocols of the study and of its stage workchains, with their descriptions."""
    for name, data in _protocol_files().items():
        if workflow in (None, name):
            click.echo(f'{name} (default: {data["default_protocol"]})')
            for protocol, entry in data['protocols'].items():
                click.echo(f'  {protocol:9s} {" ".join(entry["description"].split())}')


@cli.command('enumerate')
@click.argument('structure_file', type=click.Path(exists=True, dir_okay=False))
@click.option('--site', required=True, help='Element of the parent on the substituted sublattice (e.g. I).')
@click.option('--guest', required=True, help='Element that substitutes it (e.g. Br); x is its fraction.')
@click.option('--supercell', nargs=3, type=int, default=(1, 1, 1), show_default=True, metavar='A B C',
              help='Repeats of the parent along its three cell vectors.')
@click.option('--max-configurations', type=int, default=None,
              help="The screen's cap on classes per composition: rows above it say 'sample' (default: no cap).")
@click.option('--symprec', type=float, default=1e-3, show_default=True, help='spglib tolerance (Å).')
@click.option('--json', 'as_json', is_flag=True, help='Print the table as JSON (schema: see docs/screen.md).')
def enumerate_screen(structure_file, site, guest, supercell, max_configurations, symprec, as_json):
    """How big is a screen: per number of guest atoms on a sublattice of STRUCTURE_FILE (CIF, POSCAR, extxyz...),
    x, the symmetry-inequivalent configurations, the arrangements and whether a screen enumerates or samples.
    Symmetry is spglib's on the structure as read; nothing else is assumed. Needs no profile."""
    import json

    from ase.io import read

    from aiida_capthermo.core.solid_solution import enumeration_table

    try:
        parent = read(structure_file)
    except Exception as exception:  # any reader error is the user's file: one line, no traceback
        raise click.ClickException(f'cannot read {structure_file} as a structure: {exception}') from exception
    if max_configurations is not None and max_configurations < 1:
        raise click.BadParameter('must be at least 1', param_hint='--max-configurations')
    try:
        table = enumeration_table(parent, site, guest, supercell, max_configurations, symprec)
    except ValueError as exception:
        raise click.ClickException(str(exception)) from exception
    if as_json:
        click.echo(json.dumps(table, indent=1))
        return
    click.echo(f"{table['formula']}: {table['n_sites']} {site} sites substituted by {guest} "
               f"(supercell {' x '.join(map(str, table['supercell']))}), symmetry group of order "
               f"{table['group_order']} on the sublattice")
    click.echo(f"{'n_guest':>7} {'x':>7} {'n_configurations':>16} {'arrangements':>14}  screen")
    for row in table['rows']:
        click.echo(f"{row['n_guest']:>7} {row['x']:>7.4f} {row['n_configurations']:>16} "
                   f"{row['n_arrangements']:>14}  {row['mode']}")


CODES = {
    'capthermo-label': 'capthermo.label',
    'capthermo-gnn': 'capthermo.gnn_train',
    'capthermo-mace': 'capthermo.mace_evaluate',
    'capthermo-mlip': 'capthermo.mlip_md',
    'mace_run_train': 'capthermo.mace_finetune',
}


def ensure_codes(computer: str = 'localhost', bin_dir: str | None = None, vasp: str | None = None,
                 prepend_text: str = '') -> dict:
    """Load or create the InstalledCodes ``name@computer`` of :data:`CODES` (and ``vasp@computer`` for aiida-vasp's
    ``vasp.vasp`` when ``vasp`` names the VASP executable); return name -> (code, created). ``prepend_text`` (module
    loads, a virtual environment) goes into the job scripts of the codes created."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    node = orm.load_computer(computer)
    folder = pathlib.Path(bin_dir) if bin_dir else pathlib.Path(sys.executable).parent
    wanted = {name: (str(folder / name), plugin, False) for name, plugin in CODES.items()}
    if vasp:
        wanted['vasp'] = (vasp, 'vasp.vasp', True)  # VASP runs under the computer's MPI launcher
    codes = {}
    for name, (executable, plugin, with_mpi) in wanted.items():
        try:
            codes[name] = (orm.load_code(f'{name}@{computer}'), False)
        except NotExistent:
            codes[name] = (orm.InstalledCode(computer=node, filepath_executable=executable, label=name,
                                             default_calc_job_plugin=plugin, with_mpi=with_mpi,
                                             prepend_text=prepend_text).store(), True)
    return codes


@cli.command('setup-codes')
@click.option('--computer', default='localhost', show_default=True, help='Computer (label) the codes run on.')
@click.option('--bin-dir', default=None, help='Folder of the executables on that computer (default: this Python).')
@click.option('--vasp', 'vasp', default=None, metavar='PATH',
              help='Also create `vasp@COMPUTER` (aiida-vasp plugin vasp.vasp, run with MPI) for this VASP executable '
                   'on that computer, e.g. /opt/vasp/bin/vasp_std.')
@click.option('--prepend-text', default='', help='Lines run before each job of the codes created, e.g. '
              '"module load cuda" or "source /path/venv/bin/activate".')
@needs_profile
def setup_codes(computer, bin_dir, vasp, prepend_text):
    """Create the InstalledCodes of the package's console scripts and mace_run_train, and optionally of VASP
    (label: name@computer). Codes that exist are left as they are."""
    for code, created in ensure_codes(computer, bin_dir, vasp, prepend_text).values():
        click.echo(f'{"created " if created else "exists  "} {code.full_label} (pk {code.pk}) -> '
                   f'{code.filepath_executable}')


@cli.command('submit')
@click.argument('workflow', type=click.Choice(SUBMITTABLE))
@click.option('--protocol', default=None, help=_protocols_help())
@click.option('--model', 'model_node', type=MODEL, default=None, help='screen: the MACE model node, by pk, UUID or '
              'label (default: the newest MACE model).')
@click.option('--computer', default='localhost', show_default=True, help='Computer of the codes set up by '
              '`capthermo setup-codes`.')
@click.option('--override', '-o', multiple=True, help='Override a protocol input: key.sub=value (YAML value), '
              'e.g. -o temperatures=[300,600] -o low.calculator.method=GFN2-xTB.')
@click.option('--dry-run', is_flag=True, help='Build and validate the inputs, submit nothing.')
@click.option('--parent', 'parent_file', type=click.Path(exists=True, dir_okay=False), default=None,
              help="Your own parent structure (CIF, POSCAR, extxyz: any file ASE reads) instead of the protocol's "
                   'anti-perovskite; with --site and --guest.')
@click.option('--site', default=None, help='With --parent: its species on the substituted sublattice (x = 0).')
@click.option('--guest', default=None, help='With --parent: the species that takes those sites (x = 1).')
@needs_profile
def submit_workflow(workflow, protocol, computer, override, dry_run, model_node, parent_file, site, guest):
    """Submit the dataset, study or screen workchain to the daemon, built from a protocol. Every mistake (unknown
    protocol, override or code, invalid input) is a one-line error before anything is submitted."""
    from aiida.engine import submit

    overrides = _parse_override(override)
    if (parent_file is None) != (site is None) or (site is None) != (guest is None):
        raise click.UsageError('--parent, --site and --guest go together: the file, the species it has on the '
                               'substituted sublattice, and the one that takes its sites')
    try:
        builder = _build(workflow, protocol, computer, overrides, model_node)
        if parent_file is not None:
            set_parent(builder, workflow, parent_file, site, guest)
        error = builder._process_class.spec().inputs.validate(builder._inputs(prune=True))
        if error is not None:
            raise ValueError(str(error))
        if dry_run:
            click.echo('inputs are valid; nothing submitted')
            return
        node = submit(builder)
    except ValueError as exception:
        raise click.ClickException(f'invalid {workflow} inputs: {" ".join(str(exception).split())}') from exception
    click.echo(f'submitted {node.process_label}<{node.pk}>; follow with `verdi process status {node.pk}`')


def _build(workflow, protocol, computer, overrides, model_node):
    """The builder of ``workflow`` from the protocol, the overrides and the codes set up on ``computer``."""
    from aiida_capthermo.workflows.protocols import load_code

    def code(name):
        return load_code(f'{name}@{computer}')

    label_code = code('capthermo-label')
    if workflow == 'screen':
        from aiida_capthermo.workflows.screen import SolidSolutionScreenWorkChain

        builder = SolidSolutionScreenWorkChain.get_builder_from_protocol(
            code('capthermo-mlip'), _mace_model(model_node), protocol=protocol, overrides=overrides)
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


def set_parent(builder, workflow: str, path: str, site: str, guest: str) -> None:
    """Make ``builder`` (of ``workflow``: dataset, screen or study) build its solid solution from the parent in
    ``path``: prototype ``{host: site, guest}`` and ``parents.host`` (the dataset's, in a study)."""
    import ase.io
    from aiida import orm

    try:
        atoms = ase.io.read(path)
    except Exception as exception:  # noqa: BLE001 - any reader error is the user's file
        raise ValueError(f'--parent {path}: ASE cannot read it ({type(exception).__name__}: {exception})') from None
    target = builder.dataset if workflow == 'study' else builder
    target.prototype = orm.Dict({'host': site, 'guest': guest})
    target.parents = {'host': orm.StructureData(ase=atoms)}


def _mace_model(node=None):
    """``node`` when it is a MACE model, or the newest MACE model."""
    from aiida import orm
    from aiida.plugins import DataFactory

    if node is not None:
        if getattr(node, 'kind', None) != 'mace':
            raise click.ClickException(f'ModelData<{node.pk}> is a {node.kind} model, not a MACE model')
        return node
    query = orm.QueryBuilder().append(DataFactory('capthermo.model'), filters={'attributes.kind': 'mace'},
                                      tag='model').order_by({'model': {'id': 'desc'}}).limit(1)
    if not query.count():
        raise click.ClickException('no MACE model in this profile: train one (capthermo submit study) or give --model')
    return query.first()[0]


@cli.command('report')
@click.argument('study', type=STUDY)
@click.option('-o', '--output', 'output', default=None, help='Folder for the CSV and the figures (default: '
              'capthermo-report-<pk>).')
@JSON
@needs_profile
def report(study, output, as_json):
    """Print the study's Table I and write its CSV, figures and run record (STUDY: pk, UUID or label of a
    CapthermoStudyWorkChain); reads stored nodes only (also after an archive import), nothing is re-run. With
    --json, Table I's rows (gaps in eV, temperatures in K) and the files written."""
    import json

    from aiida_capthermo.workflows.report import write_report

    node = _study(study)
    pk = node.pk
    if 'table' not in node.outputs:
        raise click.ClickException(f'{node.process_label}<{pk}> has no Table I yet (state: '
                                   f'{node.process_state.value if node.process_state else "?"}, exit status '
                                   f'{node.exit_status}): its thermal stage has not finished')
    folder = output or f'capthermo-report-{pk}'
    text, files = write_report(node, folder)
    if as_json:
        click.echo(json.dumps({'study': {'pk': pk, 'uuid': node.uuid}, 'units': {'gap': 'eV', 'temperature': 'K'},
                               'rows': node.outputs.table['rows'], 'folder': folder, 'files': files},
                              indent=1, default=str))
        return
    click.echo(f'Table I of {node.process_label}<{pk}> (Eg in eV, error bars = standard errors):')
    click.echo(text)
    click.echo(f'{len(files)} files in {folder}/: {", ".join(files)}')


def _real_datasets():
    """Datasets a user means by "the datasets": those a dataset workchain returned, the derived training sets
    (merged, split) and ones stored by hand; not the per-batch label sets of the labelling jobs."""
    from aiida import orm
    from aiida.plugins import DataFactory

    query = orm.QueryBuilder().append(DataFactory('capthermo.dataset'), tag='dataset', project='*')
    query.order_by({'dataset': {'id': 'asc'}})
    for (node,) in query.iterall():
        creator = node.creator
        if creator is None:
            yield node, 'stored'
            continue
        returned = next((link for link in node.base.links.get_incoming(link_type=LinkType.RETURN).all()
                         if link.node.process_label == 'PhononInformedDatasetWorkChain'), None)
        if returned is not None:
            yield node, f'{returned.link_label} of {returned.node.process_label}<{returned.node.pk}>'
        elif creator.process_label in ('merge_datasets', 'split_dataset'):
            yield node, f'{creator.process_label}<{creator.pk}>'


def _dataset_row(node, origin: str) -> dict:
    """What `capthermo datasets` shows of a dataset (the --json record)."""
    attributes = node.base.attributes
    gap = attributes.get('statistics', {}).get('gap', {})
    return {'pk': node.pk, 'uuid': node.uuid, 'n_structures': attributes.get('n_structures'),
            'fidelity': attributes.get('fidelity', None), 'method': attributes.get('method', None),
            'gap_ev': {'mean': gap['mean'], 'std': gap['std']} if 'mean' in gap else None, 'made_by': origin,
            'compositions': attributes.get('compositions', None) or [],
            'temperatures_k': attributes.get('temperatures', None) or []}


@cli.command('datasets')
@click.option('--fidelity', type=click.Choice(['low', 'high']), default=None, help='Only this fidelity.')
@JSON
@needs_profile
def list_datasets(fidelity, as_json):
    """The datasets (the dataset workchains' outputs and the training sets derived from them; not the per-batch
    label sets): size, fidelity, method, gap mean and spread (eV), compositions and temperatures (K)."""
    import json

    rows = [_dataset_row(node, origin) for node, origin in _real_datasets()
            if not fidelity or node.base.attributes.get('fidelity', None) == fidelity]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    click.echo(f'{"pk":>6} {"n":>6} {"fidelity":8} {"method":14} {"gap (eV)":>13}  {"made by":44} x / T (K)')
    for row in rows:
        gap_text = f'{row["gap_ev"]["mean"]:.3f}+-{row["gap_ev"]["std"]:.3f}' if row['gap_ev'] else '-'
        grid = f'{_span(row["compositions"])} / {_span(row["temperatures_k"])}'
        click.echo(f'{row["pk"]:>6} {row["n_structures"]:>6} {row["fidelity"] or "-"!s:8} '
                   f'{row["method"] or "-"!s:14} {gap_text:>13}  {row["made_by"][:44]:44} {grid}')


def _span(values: list) -> str:
    if not values:
        return '-'
    return f'{values[0]:g}' if len(values) == 1 else f'{values[0]:g}..{values[-1]:g} ({len(values)})'


def _model_row(node) -> dict:
    """What `capthermo models` shows of a model (the --json record): stage, target and its units, the datasets it was
    trained on, the job that made it and the metrics per split with their sample sizes where recorded."""
    creator = node.creator
    inputs = creator.inputs if creator is not None else {}
    if node.kind == 'gnn':
        stage = 'gnn-high' if node.base.attributes.get('parent_model_uuid', None) else 'gnn-low'
        datasets = dict(inputs['datasets']) if 'datasets' in inputs else {}
        target = node.base.attributes.get('target', 'gap')
        units = 'eV' if target == 'gap' else '-'
    else:
        stage = 'mace' + ('-finetuned' if ('foundation_model' in inputs or 'foundation_name' in inputs) else '')
        datasets = {key: inputs[key] for key in ('train', 'valid') if key in inputs}
        target, units = 'energy/forces', 'eV/Å (forces)'
    metrics = {split: values for split, values in (node.base.attributes.get('metrics', None) or {}).items()
               if isinstance(values, dict)}
    if node.kind == 'gnn':
        shown = ', '.join(f'{split} MAE {values["mae"]:.3g} {units}' + (f' (n={values["n"]})' if 'n' in values else '')
                          for split, values in metrics.items() if values.get('mae') is not None)
    else:
        shown = ', '.join(f'{split} F MAE {values["mae_forces"]:.3g} eV/Å' for split, values in metrics.items()
                          if values.get('mae_forces') is not None)
    return {'pk': node.pk, 'uuid': node.uuid, 'kind': node.kind, 'stage': stage, 'target': target, 'units': units,
            'metrics': metrics, 'metrics_text': shown or '-',
            'datasets': [{'pk': d.pk, 'fidelity': d.base.attributes.get('fidelity', key)}
                         for key, d in datasets.items()],
            'made_by': f'{creator.process_label}<{creator.pk}>' if creator is not None else '-'}


@cli.command('models')
@click.option('--kind', type=click.Choice(['gnn', 'mace']), default=None, help='Only this kind of model.')
@JSON
@needs_profile
def list_models(kind, as_json):
    """The trained models: stage (gnn-low, gnn-high, mace), target, the datasets they were trained on (pk:fidelity),
    headline metrics (MAE per split with its unit and, for the GNN, the number of structures) and the job that made
    them. Filter by metric in Python: QueryBuilder filters={'attributes.metrics.validation.mae': {'<': 0.1}}."""
    import json

    from aiida import orm
    from aiida.plugins import DataFactory

    filters = {'attributes.kind': kind} if kind else {}
    query = orm.QueryBuilder().append(DataFactory('capthermo.model'), filters=filters, tag='model').order_by(
        {'model': {'id': 'asc'}})
    rows = [_model_row(node) for (node,) in query.iterall()]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    click.echo(f'{"pk":>6} {"stage":15} {"target":13} {"trained on":22} {"made by":26} metrics')
    for row in rows:
        trained_on = ' '.join(f'{d["pk"]}:{d["fidelity"]}' for d in row['datasets'])
        click.echo(f'{row["pk"]:>6} {row["stage"]:15} {row["target"]:13} {trained_on:22} {row["made_by"]:26} '
                   f'{row["metrics_text"]}')


@cli.command('predict')
@click.argument('model', type=MODEL)
@click.argument('structures', nargs=-1, required=True)
@click.option('--output', type=click.Path(dir_okay=False, writable=True), default=None,
              help='Also write the predictions: FILE.json (one record per structure, units included) or an extxyz '
                   '(the structures with predicted_gap, or predicted_energy, predicted_stress and per-atom '
                   'predicted_forces).')
@click.option('--out-of-domain', type=click.Choice(['refuse', 'flag']), default='refuse', show_default=True,
              help='A structure outside the model\'s training domain (elements it never saw, atoms closer than it '
                   'has seen, a volume far outside): refuse it, or predict and flag it.')
@needs_profile
def predict(model, structures, output, out_of_domain):
    """Predict with MODEL (pk, UUID or label of a GNN or MACE model) on STRUCTURES (files ASE reads: CIF, POSCAR,
    extxyz...; or pks/UUIDs of StructureData nodes), in this process: gaps, or energies, forces and stress. A
    non-finite prediction is an error, and so is a structure outside the model's training domain (unless
    --out-of-domain flag)."""
    import json
    import warnings

    import ase.io
    import numpy as np
    from aiida import orm

    node = model
    atoms, names = [], []
    for item in structures:
        if pathlib.Path(item).is_file():
            try:
                frames = ase.io.read(item, index=':')
            except Exception as exception:  # the user's file: one line, no traceback
                raise click.ClickException(f'cannot read {item} as structures: {exception}') from exception
            atoms.extend(frames)
            names.extend([item] if len(frames) == 1 else [f'{item}@{i}' for i in range(len(frames))])
            continue
        try:
            structure = orm.load_node(item)
        except Exception as exception:  # NotExistent, MultipleObjectsError, bad identifier
            raise click.ClickException(f'{item!r} is neither a file nor a node: {exception}') from exception
        if not isinstance(structure, orm.StructureData):
            raise click.ClickException(f'node {item} is a {type(structure).__name__}, not a StructureData')
        atoms.append(structure.get_ase())
        names.append(f'StructureData<{structure.pk}>')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # e3nn's and torch's warnings are not the user's business here
        try:
            results = node.predict(atoms, out_of_domain=out_of_domain)
        except ValueError as exception:
            message = str(exception)
            if message.startswith('structure ') and 'training domain' in message:  # name the structure
                index = int(message.split()[1])
                message = f'{names[index]}{message[len(f"structure {index}"):]}'.replace(
                    'out_of_domain="flag"', '--out-of-domain flag')
            raise click.ClickException(message) from exception
    for name, result in zip(names, results):
        flag = f'  OUTSIDE THE TRAINING DOMAIN: {"; ".join(result["outside_domain"])}' \
            if result.get('outside_domain') else ''
        if node.kind == 'gnn':
            target = node.base.attributes.get('target', 'gap')
            click.echo(f'{name}: {target} {result[target]:.4f} {result["units"]} ({result["n_atoms"]} atoms){flag}')
        else:
            click.echo(f'{name}: energy {result["energy"]:.4f} eV ({result["energy_per_atom"]:.4f} eV/atom), '
                       f'max force {result["max_force"]:.4f} eV/Å ({result["n_atoms"]} atoms){flag}')
    if output is None:
        return
    if output.endswith('.json'):
        pathlib.Path(output).write_text(json.dumps([{'structure': name, **result} for name, result in
                                                    zip(names, results)], indent=1) + '\n')
    else:  # keys of their own, so that the file's own labels (a calculator's energy and forces) stay apart
        for frame, result in zip(atoms, results):
            frame.info.update({f'predicted_{key}': value for key, value in result.items()
                               if key in ('energy', 'stress', node.base.attributes.get('target', 'gap'))})
            if 'forces' in result:
                frame.arrays['predicted_forces'] = np.asarray(result['forces'])
        ase.io.write(output, atoms, format='extxyz')
    click.echo(f'{len(results)} predictions written to {output}')


@cli.group('export')
def export():
    """Data out of the profile in standard formats."""


@export.command('dataset')
@click.argument('dataset', type=DataParamType(sub_classes=('aiida.data:capthermo.dataset',)))
@click.argument('output', type=click.Path(dir_okay=False, writable=True))
@click.option('--energy-key', default='REF_energy', show_default=True, help='extxyz info key of the energies (eV).')
@click.option('--forces-key', default='REF_forces', show_default=True, help='extxyz array key of the forces (eV/Å).')
@click.option('--stress-key', default='REF_stress', show_default=True,
              help='extxyz info key of the stress (eV/Å³, Voigt, ASE sign).')
@needs_profile
def export_dataset(dataset, output, energy_key, forces_key, stress_key):
    """Write DATASET (pk, UUID or label of a dataset, MD frames included) to OUTPUT as extended XYZ: every structure
    with its labels under MACE's keys REF_energy, REF_forces and REF_stress (or the ones given) and its metadata
    (x, temperature, origin, gap in eV) as info keys; ase.io.read(OUTPUT, ':') reads it back."""
    written = dataset.write_extxyz(output, energy_key=energy_key, forces_key=forces_key, stress_key=stress_key)
    click.echo(f'{written} structures of DatasetData<{dataset.pk}> written to {output}')


@export.command('trajectory')
@click.argument('md_job', type=ProcessParamType())
@click.option('-o', '--output', type=click.Path(file_okay=False, writable=True), default=None,
              help='Also write every replica to DIR/<key>_T<T>_r<replica>.extxyz (positions Å, cell, time_fs).')
@needs_profile
def export_trajectory(md_job, output):
    """The replicas of a thermal MD job (MD_JOB: pk, UUID or label of an MlipThermalCalcJob, e.g. a study's
    `md_0`) as TrajectoryData nodes that `verdi data core.trajectory list/show/export` know, made once by the
    calcfunction md_trajectories from the job's frames, results and series (run again, it finds them)."""
    from aiida import orm

    from aiida_capthermo.workflows.functions import md_trajectories

    if md_job.process_label != 'MlipThermalCalcJob' or 'frames' not in md_job.outputs:
        raise click.ClickException(f'{md_job.process_label}<{md_job.pk}> is not a thermal MD job with frames: give an '
                                   'MlipThermalCalcJob (a study\'s thermal stage calls them md_0, md_1, ...)')
    frames = md_job.outputs.frames
    made = [link.node for link in frames.base.links.get_outgoing(link_type=LinkType.INPUT_CALC).all()
            if getattr(link.node, 'process_label', None) == 'md_trajectories' and link.node.is_finished_ok]
    if made:
        trajectories = {link.link_label: link.node for link in made[0].base.links.get_outgoing(
            link_type=LinkType.CREATE).all()}
    else:
        trajectories = md_trajectories(frames, md_job.outputs.results, md_job.outputs.series)
    folder = pathlib.Path(output) if output else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    for label in sorted(trajectories, key=lambda name: int(name.split('_')[-1])):
        trajectory: orm.TrajectoryData = trajectories[label]
        attributes = trajectory.base.attributes
        line = (f'TrajectoryData<{trajectory.pk}> replica {attributes.get("replica")}: {attributes.get("key")}, '
                f'x = {attributes.get("x"):.3f}, T = {attributes.get("temperature"):.0f} K, '
                f'{trajectory.numsteps} frames over {trajectory.get_array("times")[-1] / 1000:.2f} ps')
        if folder is not None:
            import ase.io

            replica = label.split('_')[-1]
            path = folder / f'{attributes.get("key")}_T{attributes.get("temperature"):.0f}_r{replica}.extxyz'
            frames_atoms = []
            for index in range(trajectory.numsteps):
                atoms = trajectory.get_step_structure(index).get_ase()
                atoms.info['time_fs'] = float(trajectory.get_array('times')[index])
                frames_atoms.append(atoms)
            ase.io.write(path, frames_atoms, format='extxyz')
            line += f' -> {path}'
        click.echo(line)


@cli.command('status')
@click.argument('study', type=STUDY)
@click.option('--watch', type=click.FloatRange(min=2.0), default=None, metavar='SECONDS',
              help='Print again every SECONDS (at least 2; one query per look, asleep in between) until the study '
                   'ends.')
@JSON
@needs_profile
def status(study, watch, as_json):
    """Where a study is: per stage its state, elapsed seconds, running step and jobs done, running and waiting
    (read from the nodes; works while the daemon runs it and after)."""
    import json
    import time

    from aiida_capthermo.workflows.progress import stage_status, total_counts

    node = _study(study)
    while True:
        rows = stage_status(node)
        if as_json:
            click.echo(json.dumps({'study': {'pk': node.pk, 'uuid': node.uuid}, 'terminated': node.is_terminated,
                                   'exit_status': node.exit_status, 'stages': rows, 'jobs': total_counts(rows)},
                                  indent=1))
        else:
            state = ('running' if not node.is_terminated else 'finished' if node.is_finished_ok
                     else f'failed [{node.exit_status}]' if node.is_finished else node.process_state.value)
            click.echo(f'CapthermoStudyWorkChain<{node.pk}>: {state}')
            click.echo(f'  {"stage":<12} {"state":<13} {"seconds":>8} {"jobs done/running/waiting":>26}  step')
            for row in rows:
                jobs = f'{row["done"]}/{row["running"]}/{row["waiting"]}'
                click.echo(f'  {row["stage"]:<12} {row["state"]:<13} {row["seconds"]:>8.0f} {jobs:>26}  '
                           f'{row["step"] or ""}'.rstrip())
        if watch is None or node.is_terminated:
            return
        time.sleep(watch)


@cli.command('gap')
@click.option('--x', 'x', type=float, required=True, help='Composition x (guest fraction).')
@click.option('--T', 'temperature', type=float, default=None,
              help='Temperature (K); 0 is the relaxed structure. Default: every temperature (the Eg(T) curve).')
@click.option('--study', type=STUDY, default=None, help='Only gaps of this study (pk, UUID or label); default: every '
              'study.')
@JSON
@needs_profile
def find_gap(x, temperature, study, as_json):
    """Find the thermal band gap Eg(x, T) (or the whole Eg(T) of x) and print it with the nodes it depends on: the
    MD, both models, their datasets and the jobs. When nothing matches, the (x, T) that exist are listed."""
    import json

    from aiida import orm

    descendants = {n.pk for n in _study(study).called_descendants} if study is not None else None

    def gaps_of(function_name: str, filters: dict) -> list:
        query = orm.QueryBuilder().append(orm.CalcFunctionNode, tag='function',
                                          filters={'attributes.function_name': function_name})
        query.append(orm.Dict, with_incoming='function', tag='gap', project='*', filters=filters)
        found = [node for (node,) in query.iterall()]
        return found if descendants is None else [g for g in found if g.creator.pk in descendants]

    wanted = {'attributes.x': {'==': x}}
    if temperature is not None:
        wanted['attributes.temperature'] = {'==': temperature}
    # Table I's gaps (with the error budget; corrected by the teacher where validated), else the thermal stage's
    gaps = gaps_of('table_one', wanted) or gaps_of('thermal_gaps', wanted)
    if not gaps:
        existing = sorted({(g.get('x'), g.get('temperature')) for name in ('table_one', 'thermal_gaps')
                           for g in gaps_of(name, {}) if g.get('x') is not None and g.get('temperature') is not None})
        where = f' in study {study.pk}' if study is not None else ' in this profile'
        listed = ', '.join(f'({ex:g}, {et:g} K)' for ex, et in existing) or 'none'
        raise click.ClickException(f'no thermal gap at x = {x:g}' + (f', T = {temperature:g} K' if temperature
                                   is not None else '') + f'{where}; the (x, T) there: {listed}')
    gaps = sorted(gaps, key=lambda n: (n.get('temperature'), n.pk))
    if as_json:
        click.echo(json.dumps([{'pk': gap.pk, 'uuid': gap.uuid, 'units': {'gap': 'eV', 'temperature': 'K'},
                                **gap.get_dict(), 'configuration': _configuration(gap),
                                'depends_on': _ancestry(gap)} for gap in gaps], indent=1, default=str))
        return
    for gap in gaps:
        values = gap.get_dict()
        stderr = values.get('stderr')
        error = f' ± {stderr:.4f}' if stderr is not None and (stderr > 0 or values['temperature'] > 0) else ''
        click.echo(f'Eg(x = {x:g}, T = {values["temperature"]:g} K) = {values["gap"]:.4f}{error} eV '
                   f'(Eg(0) {values["eg0"]:.4f} eV, ΔEg {values["delta_gap"]:+.4f} eV): Dict<{gap.pk}> {gap.uuid}')
        if 'validated' in values:
            model = 'not validated' if not values['validated'] else (
                f'model {values["stderr_model"]:.4f} eV (GNN {values["gap_model"]:.4f} eV, bias '
                f'{values["bias"]:+.4f} eV from {values["n_validation"]} teacher labels)')
            if values.get('stderr_sampling') is None:
                sampling = ''
            elif values['temperature'] == 0:  # the structure error: the teacher at the engine's own minimum
                sampling = (f', potential structure {values["stderr_sampling"]:.4f} eV (the teacher\'s gap at the '
                            f'low engine\'s minimum differs by {values["sampling_shift"]:+.4f} eV)')
            else:
                sampling = (f', potential sampling {values["stderr_sampling"]:.4f} eV (first-order shift '
                            f'{values["sampling_shift"]:+.4f} eV' + ('' if values.get('sampling_perturbative')
                                                                    else ', beyond first order: an order of magnitude')
                            + ')')
            members = '' if values.get('stderr_members') is None else (
                f', GNN ensemble {values["stderr_members"]:.4f} eV '
                f'({len(values.get("gap_members_corrected") or [])} models)')
            click.echo(f'  error budget: statistical {values["stderr_statistical"]:.4f} eV, {model}{sampling}'
                       f'{members}')
        found = _configuration(gap)
        if found is not None:
            click.echo(f'  {_configuration_line(found)}')
        if values.get('configurations'):  # an ensemble's gap: its configurations, their weights and gaps
            members = ', '.join(f'{c["key"]} {c["weight"]:.2f} ({c["gap"]:.4f} eV)' for c in values['configurations'])
            click.echo(f'  ensemble of {len(values["configurations"])} configurations: {members}; spread '
                       f'{values["configuration_spread"]:.4f} eV')
        for line in _ancestry(gap):
            click.echo(f'  {line}')


def _stage(process) -> str | None:
    """The study stage (the study's call link label: ``dataset``, ``mace``, ``gnn``, ``screen``, ``thermal``,
    ``validation``) that ran ``process``; None outside a study."""
    current = process
    while current is not None:
        caller = current.caller
        if caller is not None and caller.process_label == 'CapthermoStudyWorkChain':
            link = current.base.links.get_incoming(link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).first()
            return link.link_label if link else None
        current = caller
    return None


def _configuration(gap) -> dict | None:
    """The structure a gap belongs to: its key, the StructureData the thermal stage started from and, when the
    screen made it, the configuration (class) name, its multiplicity, rank and Boltzmann weights there."""
    key = gap.get('key')
    if not key:
        return None
    function = gap.creator  # table_one (on the thermal stage's table, made by thermal_gaps) or thermal_gaps
    if function.process_label == 'table_one':
        function = function.inputs.table.creator
    thermal = function.caller if function is not None else None
    if thermal is None or 'structures' not in thermal.inputs or key not in thermal.inputs.structures:
        return None
    structure = thermal.inputs.structures[key]
    found = {'key': key, 'structure': structure.pk, 'formula': structure.get_formula()}
    creator = structure.creator
    link = structure.base.links.get_incoming(link_type=LinkType.CREATE).first()
    if creator is None or creator.process_label != 'MlipScreenCalcJob' or link is None:
        return found
    name = link.link_label.split('__')[-1]
    found['configuration'] = name
    screen = creator
    while screen is not None and screen.process_label != 'SolidSolutionScreenWorkChain':
        screen = screen.caller
    if screen is not None and 'compositions' in screen.outputs and key in screen.outputs.compositions:
        ranking = screen.outputs.compositions[key]['ranking'].get_dict()
        if name in ranking['keys']:
            rank = ranking['keys'].index(name)
            found.update(rank=rank + 1, n_relaxed=len(ranking['keys']), multiplicity=ranking['multiplicity'][rank],
                         relative_energy_mev_per_atom=1000 * ranking['relative_energy_per_atom'][rank],
                         boltzmann_weight={name: row['probability'][rank]
                                           for name, row in ranking.get('boltzmann', {}).items()})
    return found


def _configuration_line(found: dict) -> str:
    line = f'configuration: {found["key"]}, StructureData<{found["structure"]}> {found["formula"]}'
    if 'configuration' in found:
        line += f', the screen\'s class {found["configuration"]}'
    if 'rank' in found:
        weights = ', '.join(f'{w:.2f} at {t[1:]} K' for t, w in found['boltzmann_weight'].items())
        line += (f' (rank {found["rank"]} of {found["n_relaxed"]} relaxed, {found["multiplicity"]} arrangements, '
                 f'{found["relative_energy_mev_per_atom"]:+.2f} meV/atom; Boltzmann weight {weights})')
    return line


def _ancestry(node) -> list[str]:
    """The models and parent force constants ``node`` depends on, one line each, then its datasets and jobs grouped
    by the study stage that made or ran them (``dataset``, ``mace``, ``gnn``, ``screen``, ``thermal``,
    ``validation``): datasets as ``pk (structures)``, the largest first, jobs by pk."""
    from aiida import orm

    from aiida_capthermo.data.dataset import DatasetData
    from aiida_capthermo.data.model import ModelData

    seen, queue, lines = {node.pk}, [node], []
    grouped: dict[tuple[str, str], list] = {}
    while queue:
        current = queue.pop(0)
        for link in current.base.links.get_incoming().all():
            if link.link_type not in (LinkType.CREATE, LinkType.INPUT_CALC) or link.node.pk in seen:
                continue
            seen.add(link.node.pk)
            queue.append(link.node)
            other = link.node
            if isinstance(other, ModelData):
                lines.append(f'{other.kind} model ModelData<{other.pk}> sha256 {other.sha256[:12]}')
            elif isinstance(other, DatasetData):
                stage = _stage(other.creator) if other.creator is not None else None
                grouped.setdefault((stage or 'outside a study', 'DatasetData'), []).append(
                    (-other.n_structures, f'{other.pk} ({other.n_structures})'))  # the largest first
            elif isinstance(other, orm.CalcJobNode):
                grouped.setdefault((_stage(other) or 'outside a study', other.process_label), []).append(
                    (other.pk, str(other.pk)))
            elif type(other).__name__ == 'ForceConstantsData':
                lines.append(f'parent force constants ForceConstantsData<{other.pk}>')
    order = ['dataset', 'mace', 'gnn', 'screen', 'thermal', 'validation']
    for stage, label in sorted(grouped, key=lambda item: (order.index(item[0]) if item[0] in order else len(order),
                                                           item[1] != 'DatasetData', item)):
        entries = [text for _, text in sorted(grouped[(stage, label)])]
        what = f'{label} x{len(entries)}' + (' (structures)' if label == 'DatasetData' else '')
        lines.append(f'{stage} stage: {what}: {", ".join(entries[:6])}{" ..." if len(entries) > 6 else ""}')
    return lines


data_cli = cli
