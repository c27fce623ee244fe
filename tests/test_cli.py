"""The user-facing ``capthermo`` command (also ``verdi data capthermo``)."""

from __future__ import annotations

import numpy as np
from aiida import orm
from click.testing import CliRunner

from aiida_capthermo.cli.main import _parse_override, cli
from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.data.dataset import DatasetData


def test_parse_override_nests_and_types_values():
    assert _parse_override(('temperatures=[300, 600]', 'low.calculator.method=GFN2-xTB', 'seed=5')) == {
        'temperatures': [300, 600], 'low': {'calculator': {'method': 'GFN2-xTB'}}, 'seed': 5}


def test_setup_codes_submit_dry_run_and_queries(aiida_localhost):
    runner = CliRunner()
    result = runner.invoke(cli, ['setup-codes', '--computer', aiida_localhost.label])
    assert result.exit_code == 0, result.output
    assert orm.load_code(f'capthermo-label@{aiida_localhost.label}').default_calc_job_plugin == 'capthermo.label'
    assert 'vasp@' not in result.output
    result = runner.invoke(cli, ['submit', 'dataset', '--protocol', 'demo', '--computer', aiida_localhost.label,
                                 '--dry-run', '-o', 'temperatures=[300]'])
    assert result.exit_code == 0 and 'inputs are valid' in result.output, result.output
    result = runner.invoke(cli, ['submit', 'dataset', '--computer', aiida_localhost.label, '--dry-run',
                                 '-o', 'temperatures=[]'])
    assert result.exit_code != 0 and 'temperature list is empty' in result.output

    labelled = LabelledSet(numbers=[1, 1], positions=np.zeros((2, 3)), cells=np.stack([np.eye(3)] * 2),
                           n_atoms=[1, 1], gap=[1.0, 2.0], temperature=[300.0, 600.0])
    node = DatasetData.from_labelled_set(labelled, fidelity='high', method='HSEsol').store()
    result = runner.invoke(cli, ['datasets', '--fidelity', 'high'])
    assert result.exit_code == 0 and f'{node.pk:>6}' in result.output and '1.500+-0.500' in result.output
    result = runner.invoke(cli, ['models', '--kind', 'gnn'])
    assert result.exit_code == 0 and 'trained on' in result.output.splitlines()[0], result.output


def test_submit_screen_from_protocols(aiida_localhost, tmp_path):
    """`capthermo submit screen`: every protocol builds valid inputs; a typo in the relaxation or phonon settings, or
    no MACE model, is an error before anything runs."""
    from aiida_capthermo.data.model import ModelData
    from aiida_capthermo.workflows.screen import SolidSolutionScreenWorkChain

    runner = CliRunner()
    assert runner.invoke(cli, ['setup-codes', '--computer', aiida_localhost.label]).exit_code == 0
    newest = orm.QueryBuilder().append(ModelData, filters={'attributes.kind': 'mace'}, project='id').all(flat=True)
    result = runner.invoke(cli, ['submit', 'screen', '--computer', aiida_localhost.label, '--dry-run'])
    if newest:  # another test of this session stored one first: the newest MACE model is taken
        assert result.exit_code == 0 and 'inputs are valid' in result.output, result.output
    else:
        assert result.exit_code != 0 and 'no MACE model' in result.output
    import zipfile

    with zipfile.ZipFile(tmp_path / 'tiny.model', 'w') as archive:  # a torch-archive-shaped file: a dry run loads none
        archive.writestr('tiny/data.pkl', b'weights')
    model = ModelData.from_files(kind='mace', files={'tiny.model': tmp_path / 'tiny.model'},
                                 main_file='tiny.model').store()
    for protocol in SolidSolutionScreenWorkChain.get_available_protocols():
        result = runner.invoke(cli, ['submit', 'screen', '--protocol', protocol, '--computer', aiida_localhost.label,
                                     '--dry-run'])
        assert result.exit_code == 0 and 'inputs are valid' in result.output, (protocol, result.output)
    for override, message in (('parameters.fmaxx=0.1', 'fmaxx'), ('phonons.stepz=10', 'stepz'),
                              ('temperatures=[-5]', 'temperatures must be > 0'), ('keep=0', 'keep must be'),
                              ('compositions=[0.3]', 'not a multiple of 1/8')):
        result = runner.invoke(cli, ['submit', 'screen', '--computer', aiida_localhost.label, '--dry-run',
                                     '--model', str(model.pk), '-o', override])
        assert result.exit_code != 0 and message in result.output, (override, result.output)


def test_setup_codes_with_vasp_and_prepend_text():
    """`setup-codes --vasp` adds aiida-vasp's code (MPI) beside the package's codes; the labelling engine takes it."""
    computer = orm.Computer(label='cpu-cluster-cli', hostname='localhost', transport_type='core.local',
                            scheduler_type='core.direct', workdir='/tmp/aiida-cli').store()
    computer.set_default_mpiprocs_per_machine(1)
    runner = CliRunner()
    result = runner.invoke(cli, ['setup-codes', '--computer', computer.label, '--bin-dir', '/opt/capthermo/bin',
                                 '--vasp', '/opt/vasp/bin/vasp_std', '--prepend-text', 'module load vasp/6.4'])
    assert result.exit_code == 0, result.output
    vasp = orm.load_code(f'vasp@{computer.label}')
    assert vasp.default_calc_job_plugin == 'vasp.vasp' and vasp.with_mpi is True
    assert str(vasp.filepath_executable) == '/opt/vasp/bin/vasp_std' and vasp.prepend_text == 'module load vasp/6.4'
    gnn = orm.load_code(f'capthermo-gnn@{computer.label}')
    assert str(gnn.filepath_executable) == '/opt/capthermo/bin/capthermo-gnn' and gnn.with_mpi is False
    assert gnn.prepend_text == 'module load vasp/6.4'
    again = runner.invoke(cli, ['setup-codes', '--computer', computer.label, '--vasp', '/other/vasp'])
    assert again.output.count('exists') == 6 and 'created' not in again.output
    # The VASP code is accepted as a labelling engine: what is missing next is the POTCAR family, not the code.
    result = runner.invoke(cli, ['submit', 'dataset', '--protocol', 'demo', '--computer', computer.label, '--dry-run',
                                 '-o', 'low.engine=vasp', '-o', f'low.code=vasp@{computer.label}'])
    assert result.exit_code != 0 and 'potential_family' in result.output, result.output


def test_enumerate_answers_how_big_a_screen_is_from_a_cif(tmp_path):
    """``capthermo enumerate`` on a CIF of cubic CsPbI3 (no profile needed): the table and its JSON agree with the
    core function; a wrong site is one line naming the elements there, not a traceback."""
    import json

    from ase import Atoms

    from aiida_capthermo.cli.main import cli
    from aiida_capthermo.core.solid_solution import enumeration_table

    parent = Atoms('CsPbI3', scaled_positions=[(0, 0, 0), (.5, .5, .5), (.5, .5, 0), (.5, 0, .5), (0, .5, .5)],
                   cell=[6.3] * 3, pbc=True)
    path = tmp_path / 'cspbi3.cif'
    parent.write(path)
    runner = CliRunner()
    result = runner.invoke(cli, ['enumerate', str(path), '--site', 'I', '--guest', 'Br', '--supercell', '2', '2',
                                 '2', '--max-configurations', '100', '--json'])
    assert result.exit_code == 0, result.output
    table = json.loads(result.output)
    assert table == enumeration_table(parent, 'I', 'Br', (2, 2, 2), 100)
    assert table['n_sites'] == 24 and table['rows'][12]['n_configurations'] == 8798
    text = runner.invoke(cli, ['enumerate', str(path), '--site', 'I', '--guest', 'Br', '--supercell', '2', '2', '2'])
    assert text.exit_code == 0 and 'symmetry group of order 384' in text.output
    bad = runner.invoke(cli, ['enumerate', str(path), '--site', 'Cl', '--guest', 'Br'])
    assert bad.exit_code == 1 and 'its elements are' in bad.output and 'Traceback' not in bad.output


def test_the_command_line_follows_verdis_habits(aiida_localhost, tmp_path):
    """-h, --version and -p PROFILE after the command; node arguments by pk, UUID or label with a one-line error for
    a wrong node; --json on the queries, with units and sample sizes."""
    import json

    from aiida.manage import get_manager

    runner = CliRunner()
    profile = get_manager().get_profile().name
    assert runner.invoke(cli, ['-h']).exit_code == 0
    assert runner.invoke(cli, ['models', '-h']).exit_code == 0
    version = runner.invoke(cli, ['--version'])
    assert version.exit_code == 0 and version.output.startswith('capthermo ')
    labelled = LabelledSet(numbers=[1, 1], positions=np.zeros((2, 3)), cells=np.stack([np.eye(3)] * 2),
                           n_atoms=[1, 1], gap=[1.0, 2.0], temperature=[300.0, 600.0])
    dataset = DatasetData.from_labelled_set(labelled, fidelity='high', method='HSEsol').store()
    dataset.label = 'my-hse-set'
    listed = runner.invoke(cli, ['datasets', '-p', profile, '--json'])
    assert listed.exit_code == 0, listed.output
    row = next(r for r in json.loads(listed.output) if r['pk'] == dataset.pk)
    assert row['uuid'] == dataset.uuid and row['gap_ev'] == {'mean': 1.5, 'std': 0.5} and row['n_structures'] == 2
    assert runner.invoke(cli, ['-p', profile, 'models', '--json']).exit_code == 0
    (tmp_path / 'h2.xyz').write_text('2\n\nH 0 0 0\nH 0 0 0.74\n')
    for identifier in ('999999', 'no-such-label', dataset.uuid, 'my-hse-set'):
        wrong = runner.invoke(cli, ['predict', identifier, str(tmp_path / 'h2.xyz')])
        assert wrong.exit_code == 2 and 'Invalid value for' in wrong.output, (identifier, wrong.output)
        assert 'Traceback' not in wrong.output
    not_study = runner.invoke(cli, ['report', str(dataset.pk)])
    assert not_study.exit_code == 2 and 'Traceback' not in not_study.output  # a Data node is no process
    workchain = orm.WorkflowNode().store()
    for arguments in (['report', str(workchain.pk)], ['gap', '--x', '0.5', '--study', workchain.uuid]):
        result = runner.invoke(cli, arguments)
        assert result.exit_code == 1 and 'is not a study' in result.output, result.output
    missing = runner.invoke(cli, ['gap', '--x', '0.37'])
    assert missing.exit_code == 1 and 'the (x, T) there:' in missing.output
    unknown = runner.invoke(cli, ['models', '-p', 'no-such-profile'])
    assert unknown.exit_code == 2 and 'cannot load the AiiDA profile no-such-profile' in unknown.output


def test_export_dataset_writes_extxyz_that_ase_reads_back(aiida_localhost, tmp_path):
    """`capthermo export dataset`: every structure, its labels under MACE's keys (or the user's) and its metadata."""
    from ase.io import read

    rng = np.random.default_rng(0)
    labelled = LabelledSet(numbers=[1, 1, 8, 8], positions=rng.normal(size=(4, 3)), cells=np.stack([np.eye(3) * 5] * 2),
                           n_atoms=[2, 2], energy=[-1.5, -2.5], forces=rng.normal(size=(4, 3)), gap=[1.0, 2.0],
                           temperature=[300.0, 600.0])
    node = DatasetData.from_labelled_set(labelled, fidelity='low', method='GFN1-xTB').store()
    runner = CliRunner()
    result = runner.invoke(cli, ['export', 'dataset', node.uuid, str(tmp_path / 'out.extxyz')])
    assert result.exit_code == 0 and '2 structures' in result.output, result.output
    frames = read(tmp_path / 'out.extxyz', ':')
    assert [f.info['REF_energy'] for f in frames] == [-1.5, -2.5]
    np.testing.assert_allclose(np.concatenate([f.arrays['REF_forces'] for f in frames]), labelled.forces)
    np.testing.assert_allclose(np.concatenate([f.positions for f in frames]), labelled.positions)
    assert [f.get_chemical_symbols() for f in frames] == [['H', 'H'], ['O', 'O']]
    result = runner.invoke(cli, ['export', 'dataset', str(node.pk), str(tmp_path / 'plain.extxyz'),
                                 '--energy-key', 'energy_dft'])
    assert result.exit_code == 0 and read(tmp_path / 'plain.extxyz', 0).info['energy_dft'] == -1.5
    wrong = runner.invoke(cli, ['export', 'dataset', '999999', str(tmp_path / 'x.extxyz')])
    assert wrong.exit_code == 2 and 'Traceback' not in wrong.output


#: Every command that takes a node, a file or a typed option, with each kind of wrong value: `{pk}` a node that
#: exists but is of the wrong kind (a dataset, or a plain workflow for the commands that want a study or an MD job).
WRONG_VALUES = [
    *[(command, value) for value in ('999999', '01234567-89ab-cdef-0123-456789abcdef', 'no-such-label', '{dataset}',
                                     '{workflow}')
      for command in (['report', '{}'], ['status', '{}'], ['gap', '--x', '0.5', '--study', '{}'],
                      ['export', 'trajectory', '{}'])],
    *[(['predict', '{}', '{file}'], value) for value in ('999999', 'no-such-label', '{dataset}')],
    *[(['export', 'dataset', '{}', '{tmp}/out.extxyz'], value) for value in ('999999', 'no-such-label', '{workflow}')],
    *[(['submit', 'screen', '--dry-run', '--model', '{}'], value) for value in ('999999', '{dataset}')],
    (['predict', '{model}', '{}'], '{tmp}/missing.xyz'),
    (['predict', '{model}', '{}'], '{tmp}/not-a-structure.xyz'),
    (['enumerate', '{}', '--site', 'I', '--guest', 'Br', '--supercell', '2', '2', '2'], '{tmp}/missing.cif'),
    (['enumerate', '{}', '--site', 'I', '--guest', 'Br', '--supercell', '2', '2', '2'], '{tmp}/not-a-structure.xyz'),
    (['gap', '--x', '{}'], 'half'),
    (['gap', '--x', '0.5', '--T', '{}'], 'hot'),
    (['status', '{study}', '--watch', '{}'], '0.1'),
    (['models', '--kind', '{}'], 'transformer'),
    (['datasets', '--fidelity', '{}'], 'medium'),
    (['predict', '{model}', '{file}', '--out-of-domain', '{}'], 'ignore'),
    (['submit', '{}', '--dry-run'], 'everything'),
]


def test_every_command_refuses_a_wrong_node_file_or_option_in_one_line(aiida_localhost, tmp_path):
    """The table above: each wrong pk, UUID, label, node kind, file and option value gives a non-zero exit, exactly
    one line that starts with `Error:`, and no traceback."""
    labelled = LabelledSet(numbers=[1, 1], positions=np.zeros((2, 3)), cells=np.stack([np.eye(3)] * 2),
                           n_atoms=[1, 1], gap=[1.0, 2.0], temperature=[300.0, 600.0])
    dataset = DatasetData.from_labelled_set(labelled, fidelity='high', method='HSEsol').store()
    workflow = orm.WorkflowNode().store()
    (tmp_path / 'h2.xyz').write_text('2\n\nH 0 0 0\nH 0 0 0.74\n')
    (tmp_path / 'not-a-structure.xyz').write_text('this is not a structure\n')
    import zipfile

    from aiida_capthermo.data.model import ModelData

    with zipfile.ZipFile(tmp_path / 'tiny.model', 'w') as archive:
        archive.writestr('tiny/data.pkl', b'weights')
    model = ModelData.from_files(kind='mace', files={'tiny.model': tmp_path / 'tiny.model'},
                                 main_file='tiny.model').store()
    names = {'dataset': str(dataset.pk), 'workflow': workflow.uuid, 'file': str(tmp_path / 'h2.xyz'),
             'tmp': str(tmp_path), 'model': str(model.pk), 'study': str(workflow.pk)}
    runner = CliRunner()
    failures = []
    for command, value in WRONG_VALUES:
        arguments = [part.format(value.format(**names), **names) if part == '{}' else part.format(**names)
                     for part in command]
        result = runner.invoke(cli, arguments)
        errors = [line for line in result.output.splitlines() if line.startswith('Error:')]
        if result.exit_code == 0 or len(errors) != 1 or 'Traceback' in result.output or (
                result.exception is not None and not isinstance(result.exception, SystemExit)):
            failures.append((arguments, result.exit_code, result.output[-400:], repr(result.exception)))
    assert not failures, '\n'.join(map(str, failures))
    assert len(WRONG_VALUES) == 39
