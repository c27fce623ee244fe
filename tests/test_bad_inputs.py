"""Every bad input is stopped before anything runs, with a message that names what to change: a table of distinct
mistakes across the dataset, screen, thermal and study workchains, the MACE job and the command line. Each case
builds the inputs from a protocol as a user would and must be refused at building or at validation (nothing is
submitted); the message must contain the expected words."""

from __future__ import annotations

import math

import pytest
from aiida import orm
from click.testing import CliRunner

from aiida_capthermo.cli.main import CODES, cli, ensure_codes
from aiida_capthermo.workflows.dataset import PhononInformedDatasetWorkChain
from aiida_capthermo.workflows.study import CapthermoStudyWorkChain

from parent_helpers import CSPBI3_CIF  # tests/ is on sys.path (rootdir-style test modules)

GOOD = {'gnn': 'capthermo-gnn', 'label': 'capthermo-label', 'mace': 'mace_run_train', 'mlip': 'capthermo-mlip',
        'evaluate': 'capthermo-mace'}

#: (overrides of the demo dataset protocol, words of the message)
DATASET_CASES = [
    ({'phonon_displacement': 0.0}, 'phonon_displacement must lie in'),
    ({'phonon_displacement': 1.0}, 'phonon_displacement must lie in'),
    ({'frequency_cutoff': 50.0}, 'frequency_cutoff must lie in'),
    ({'frequency_cutoff': -1.0}, 'frequency_cutoff must lie in'),
    ({'prototype': {'a_host': 'big'}}, "prototype 'a_host' must be a positive number"),
    ({'prototype': {'a_guest': -4.8}}, "prototype 'a_guest' must be a positive number"),
    ({'prototype': {'host': 'Xx'}}, 'not a chemical element'),
    ({'prototype': {'guest': 'I'}}, 'must differ'),
    ({'seed': -1}, 'seed must be a non-negative integer'),
    ({'temperatures': []}, 'temperature list is empty'),
    ({'temperatures': [-5.0]}, 'temperatures must be positive'),
    ({'supercell': [2, 2]}, 'supercell must be three positive integers'),
    ({'structures_per_temperature': 0}, 'structures_per_temperature must be at least 1'),
    ({'x_values': [0.3]}, 'multiples of 1/8'),
    ({'scheme': 'thermal'}, 'scheme must be one of'),
    ({'imaginary_modes': 'ignore'}, 'imaginary_modes must be one of'),
    ({'batch_size': 0}, 'batch_size and max_concurrent must be at least 1'),
    ({'high_structures': -1}, 'high_structures must be >= 0'),
    ({'temperature': [300.0]}, 'unknown inputs'),
    ({'low': {'calculator': {'method': 'GFN3-xTB'}}}, 'calculator specification'),
    ({'low': {'engine': 'gaussian'}}, 'unknown engine'),
    ({'low': {'vasp': {'potential_family': 'PBE.54'}}}, "no input of the dataset workchain takes: ['low.vasp']"),
    ({'low': {'code': 'gnn'}}, 'is set up for capthermo.gnn_train jobs, not capthermo.label'),
    ({'low': {'executable': 'x'}}, 'unknown low engine inputs'),
    ({'prototype': {'a_hots': 5.5}}, "unknown prototype keys ['a_hots']"),
    ({'prototype': {'a_host': 0.001}}, 'give a lattice parameter in [3.00, 10.00] Å'),
    ({'prototype': {'a_guest': 40.0}}, 'give a lattice parameter in'),
    ({'seed': 'abc'}, "seed must be an integer, got 'abc'"),
    ({'low': {'calculator': 'emt'}}, "calculator must be a mapping {key: value}, got 'emt'"),
    ({'low': {'calculator': {'name': 'emt'}}}, "low.calculator: EMT has no parameters for ['Br', 'I', 'S']"),
    ({'prototype': {'a': 'U'}}, "tblite's xTB parametrisations cover H to Rn (Z <= 86), not ['U']"),
    ({'scheme': 'random', 'random_amplitudes': [0.1, 1.5]}, 'give at most 1.20 Å'),
]

#: (overrides of the demo study protocol, words of the message)
STUDY_CASES = [
    ({'gnn': {'hyperparameters': {'learning_rat': 1e-3}}}, 'invalid GNN hyper-parameters'),
    ({'gnn': {'finetune_hyperparameters': {'max_epochs': 0}}}, 'invalid GNN hyper-parameters'),
    ({'gnn': {'optionz': {}}}, "gnn: unknown inputs in protocol or overrides: ['optionz']"),
    ({'gnn': {'code': 'label'}}, 'is set up for capthermo.label jobs, not capthermo.gnn_train'),
    ({'mace': {'hyperparameters': {'num_channel': 8}}}, 'invalid MACE hyper-parameters'),
    ({'mace': {'foundation_name': 'medium-mpa-9'}}, "unknown MACE foundation model 'medium-mpa-9'"),
    # radii wider than the 2x2x2 cell of the smaller end member (4.793 Å: 9.586 Å between opposite faces)
    ({'gnn': {'hyperparameters': {'cutoff': 10.0}}},
     'dataset.supercell: the supercell [2, 2, 2] is 9.59 Å wide (between opposite faces), not more than the GNN '
     'cutoff of 10 Å: an atom would see its own periodic image inside it. Use a supercell of at least [3, 3, 3], '
     'or a smaller GNN cutoff.'),
    ({'mace': {'hyperparameters': {'r_max': 9.6}}}, 'not more than the MACE r_max of 9.6 Å'),
    ({'mace': {'code': 'gnn'}}, 'not capthermo.mace_finetune'),
    ({'mace': {'mlip_code': 'mace'}}, 'not capthermo.mlip_md'),
    ({'mace': {'evaluate_code': 'mlip'}}, 'not capthermo.mace_evaluate'),
    ({'mace': {'refine': {'stepz': 10}}}, 'stepz'),
    ({'mace': {'md_check': {'compositions': [0.3]}}}, 'multiples of 1/8'),
    ({'mace': {'refine': {'finetune_epochs': 0}}}, 'finetune_epochs'),
    ({'mace': {'refine': {'finetune_hyperparameters': {'energy_wieght': 1000.0}}}}, "energy_wieght"),
    ({'mace': {'refine': {'finetune_hyperparameters': {'energy_weight': -1.0}}}}, 'energy_weight'),
    ({'screen': {'parameters': {'fmaxx': 0.01}}}, 'fmaxx'),
    ({'screen': {'compositions': [0.3]}}, 'screen: composition 0.3'),
    ({'screen': {'code': 'gnn'}}, 'not capthermo.mlip_screen'),
    ({'screen': {'phonons': {'temperaturez': [200.0]}}}, 'temperaturez'),
    ({'thermal': {'md': {'stepz': 5}}}, 'thermal: invalid md'),
    ({'thermal': {'md': {'stride': 1000}}}, 'records 0 frames per replica'),
    ({'thermal': {'temperatures': [0.0, float('nan')]}}, 'finite numbers >= 0 K'),
    ({'thermal': {'coupling': {'structures': 'some'}}}, 'coupling.structures'),
    ({'thermal': {'mlip_code': 'label'}}, 'not capthermo.mlip_thermal'),
    ({'screem': {}}, 'unknown inputs'),
    ({'dataset': {'protocol': 'nope'}}, "unknown protocol 'nope'"),
    ({'dataset': {'seed': -1}}, 'seed must be a non-negative integer'),
    ({'gnn': {'hyperparameters': [1, 2]}}, 'hyperparameters must be a mapping {key: value}, got [1, 2]'),
    ({'thermal': {'temperatures': 300}}, 'temperatures must be a list [a, b], got 300'),
    ({'mace': {'refine': {'temperatures': [-100.0]}}}, 'MD temperatures must be > 0 K, got [-100.0]'),
    ({'dataset': {'supercell': [4, 4, 4]}}, 'the supercell [4, 4, 4] has 64 sites'),
    ({'dataset': {'supercell': [1, 1, 1]}}, 'not a multiple of 1/1 (compositions must be multiples of 1/1 in [0, 1]: '
                                           'the supercell [1, 1, 1] has 1 sites on the disordered sublattice); give '
                                           'a supercell with more sites'),
    ({'screen': {'max_iterations': 0}}, 'max_iterations must be a positive integer, got 0'),
    ({'gnn': {'hyperparameters': {'target': 'vbm'}}}, "the GNN is trained on ['vbm']: set gnn.hyperparameters.target"),
    ({'gnn': {'members': 0}}, 'members must be between 1 and 16, got 0'),
    ({'dataset': {'low': {'calculator': {'properties': ['energy', 'gap']}}}},
     "dataset.low.calculator.properties lacks ['forces', 'stress']"),
    ({'thermal': {'coupling': {'structures': ['x_0p250']}}},
     "coupling.structures must be \"all\" or a list of keys of `structures` ['x_0p000', 'x_0p500', 'x_1p000']"),
]

#: (command-line arguments after `capthermo`, words of the one-line error)
CLI_CASES = [
    (['submit', 'study', '--protocol', 'nope', '--dry-run'], "unknown protocol 'nope'"),
    (['submit', 'dataset', '--dry-run', '-o', 'temperatures=[300,'], 'not valid YAML'),
    (['submit', 'dataset', '--dry-run', '-o', 'temperaturez=[300]'], 'unknown inputs'),
    (['submit', 'dataset', '--dry-run', '-o', 'temperatures'], 'is not of the form key=value'),
    (['submit', 'study', '--dry-run', '--computer', 'nowhere'], "no code 'capthermo-label@nowhere'"),
    (['submit', 'study', '--protocol', 'demo', '--dry-run', '-o', 'gnn.code=capthermo-label@{computer}'],
     'not capthermo.gnn_train'),
    (['submit', 'study', '--protocol', 'demo', '--dry-run', '-o', 'mace.options.queue_nam=gpu'],
     "unknown scheduler options ['queue_nam']"),
    (['-p', 'no-such-profile', 'datasets'], 'cannot load the AiiDA profile no-such-profile'),
    # The cases through the command line, as a user types them: one line each, the input and the fix named
    (['submit', 'study', '--protocol', 'demo', '--dry-run', '-o', 'mace.refine.temperatures=[-100]'],
     'MD temperatures must be > 0 K, got [-100.0]'),
    (['submit', 'dataset', '--dry-run', '-o', 'prototype.a_hots=5.5'], "unknown prototype keys ['a_hots']: the keys"),
    (['submit', 'study', '--protocol', 'demo', '--dry-run', '-o', 'prototype.a_hots=5.5'],
     'e.g. dataset.prototype.a_host'),
    (['submit', 'study', '--protocol', 'demo', '--dry-run', '-o', 'thermal.md.stride=1000'],
     'records 0 frames per replica'),
    (['submit', 'study', '--protocol', 'demo', '--dry-run', '-o', 'thermal.temperatures=[0, .nan]'],
     'finite numbers >= 0 K'),
    (['submit', 'study', '--protocol', 'demo', '--dry-run', '-o', 'gnn.hyperparameters=[1,2]'],
     'hyperparameters must be a mapping {key: value}, got [1, 2]'),
    (['submit', 'dataset', '--dry-run', '-o', 'low.calculator=emt'], "calculator must be a mapping {key: value}"),
    (['submit', 'dataset', '--dry-run', '-o', 'seed=abc'], "seed must be an integer, got 'abc'"),
    (['submit', 'dataset', '--dry-run', '-o', 'prototype.a_host=0.001'], 'give a lattice parameter in [3.00, 10.00] Å'),
    (['submit', 'study', '--protocol', 'demo', '--dry-run', '-o', 'dataset.supercell=[1,1,1]'],
     'give a supercell with more sites'),
    # the user's own parent ({cif}: CsPbI3, {molecule}: an xyz molecule, {garbage}: not a structure file)
    (['submit', 'study', '--protocol', 'demo', '--dry-run', '--parent', '{cif}'],
     '--parent, --site and --guest go together'),
    (['submit', 'study', '--protocol', 'demo', '--dry-run', '--parent', '{cif}', '--site', 'Br', '--guest', 'Cl'],
     'parents.host: the structure CsI3Pb has no Br to substitute: the host is one of its species'),
    (['submit', 'dataset', '--dry-run', '--parent', '{cif}', '--site', 'I', '--guest', 'I'], 'must differ'),
    (['submit', 'dataset', '--dry-run', '--parent', '{cif}', '--site', 'I', '--guest', 'Qq'],
     "prototype 'guest' is 'Qq', which is not a chemical element"),
    (['submit', 'study', '--protocol', 'demo', '--dry-run', '--parent', '{molecule}', '--site', 'O', '--guest', 'S'],
     'periodic in all three directions'),
    (['submit', 'dataset', '--dry-run', '--parent', '{garbage}', '--site', 'I', '--guest', 'Br'],
     'ASE cannot read it'),
]


def structure_files(folder) -> dict:
    """The files the command-line cases name: a CIF of CsPbI3, an xyz molecule, and a file that is no structure."""
    files = {'cif': folder / 'CsPbI3.cif', 'molecule': folder / 'water.xyz', 'garbage': folder / 'notes.cif'}
    files['cif'].write_text(CSPBI3_CIF)
    files['molecule'].write_text('3\nwater\nO 0 0 0\nH 0.76 0.59 0\nH -0.76 0.59 0\n')
    files['garbage'].write_text('these are my notes, not a crystal\n')
    return {key: str(path) for key, path in files.items()}


@pytest.fixture(scope='module')
def codes(aiida_profile):
    """The package's codes on a localhost computer of this module."""
    computer = orm.Computer(label='bad-inputs', hostname='localhost', transport_type='core.local',
                            scheduler_type='core.direct', workdir='/tmp/bad-inputs').store()
    computer.configure(use_login_shell=False)  # see conftest's aiida_localhost
    created = {name: code for name, (code, _) in ensure_codes(computer.label).items()}
    return {key: created[name] for key, name in GOOD.items()}


def refusal(build) -> str:
    """The message with which building or validating the inputs fails ('' when they are accepted)."""
    try:
        builder = build()
    except ValueError as exception:
        return str(exception)
    error = builder._process_class.spec().inputs.validate(builder._inputs(prune=True))
    return '' if error is None else str(error)


def _codes_in(overrides: dict, codes: dict) -> dict:
    """Overrides whose `code` entries name a code of the table (label -> the code node's full label)."""
    return {key: (_codes_in(value, codes) if isinstance(value, dict) else
                  codes[value].full_label if key.endswith('code') and value in codes else value)
            for key, value in overrides.items()}


@pytest.mark.parametrize('overrides, message', DATASET_CASES, ids=[str(c[0]) for c in DATASET_CASES])
def test_dataset_input_refused(codes, overrides, message):
    found = refusal(lambda: PhononInformedDatasetWorkChain.get_builder_from_protocol(
        codes['label'], protocol='demo', overrides=_codes_in(overrides, codes)))
    assert message in found, found


@pytest.mark.parametrize('overrides, message', STUDY_CASES, ids=[str(c[0]) for c in STUDY_CASES])
def test_study_input_refused(codes, overrides, message):
    found = refusal(lambda: CapthermoStudyWorkChain.get_builder_from_protocol(
        codes['label'], codes['gnn'], codes['mace'], protocol='demo', overrides=_codes_in(overrides, codes),
        mlip_code=codes['mlip'], evaluate_code=codes['evaluate']))
    assert message in found, found


def test_every_stage_code_and_option_lands(codes):
    """The table's baseline: the demo protocols are valid as they are, and every per-stage code and scheduler option
    of the study lands where it belongs (codes of a second computer, each stage its own queue), on top of the
    global options."""
    assert refusal(lambda: PhononInformedDatasetWorkChain.get_builder_from_protocol(codes['label'],
                                                                                     protocol='demo')) == ''
    gpu = orm.Computer(label='bad-inputs-gpu', hostname='localhost', transport_type='core.local',
                       scheduler_type='core.direct', workdir='/tmp/bad-inputs-gpu').store()
    other = {name: code for name, (code, _) in ensure_codes(gpu.label).items()}
    stages = {  # override path -> (the code's name, or None for an options Dict)
        'dataset.low.code': 'capthermo-label', 'dataset.high.code': 'capthermo-label', 'gnn.code': 'capthermo-gnn',
        'mace.code': 'mace_run_train', 'mace.mlip_code': 'capthermo-mlip', 'mace.evaluate_code': 'capthermo-mace',
        'screen.code': 'capthermo-mlip', 'thermal.mlip_code': 'capthermo-mlip',
        'dataset.low.options': None, 'dataset.high.options': None, 'gnn.options': None, 'mace.options': None,
        'mace.md_options': None, 'screen.options': None, 'screen.phonon_options': None, 'thermal.options': None,
        'thermal.md_options': None}
    overrides: dict = {}
    for path, name in stages.items():
        *parents, last = path.split('.')
        target = overrides
        for parent in parents:
            target = target.setdefault(parent, {})
        target[last] = other[name].full_label if name else {'queue_name': f'queue-{path}'}
    builder = CapthermoStudyWorkChain.get_builder_from_protocol(
        codes['label'], codes['gnn'], codes['mace'], protocol='demo', overrides=overrides, mlip_code=codes['mlip'],
        evaluate_code=codes['evaluate'], options={'max_wallclock_seconds': 3600})
    assert builder._process_class.spec().inputs.validate(builder._inputs(prune=True)) is None
    for path, name in stages.items():
        value = builder
        for part in path.split('.'):
            value = value[part]
        if name:
            assert value.uuid == other[name].uuid, path
        else:
            options = value.get_dict()
            assert options['queue_name'] == f'queue-{path}' and options['max_wallclock_seconds'] == 3600, path


def test_given_structure_with_a_wrong_composition_refused(codes):
    """A structure given to the thermal stage must carry the x of its cell: pure Ag3SI recorded as x = 0.9 would put
    its gaps in Table I at x = 0.9. Without a recorded x it is refused too; with the right one it is accepted."""
    from aiida_capthermo.core.structures import antiperovskite
    from aiida_capthermo.data.structures import set_structure_metadata

    def build(x):
        structure = orm.StructureData(ase=antiperovskite('Ag', 'S', 'I', 4.869).repeat((2, 2, 2)))
        if x is not None:
            set_structure_metadata(structure, x=x, temperature=0.0, origin='given')

        def make():
            builder = CapthermoStudyWorkChain.get_builder_from_protocol(
                codes['label'], codes['gnn'], codes['mace'], protocol='demo', mlip_code=codes['mlip'],
                evaluate_code=codes['evaluate'])
            builder.given.structures = {'pure': structure}
            builder.thermal.coupling = orm.Dict({**builder.thermal.coupling.get_dict(), 'structures': ['pure']})
            return builder

        return make

    assert "structure 'pure' records x = 0.9, but its cell holds Br on a fraction 0 of the I/Br sites" in refusal(
        build(0.9))
    assert "structure 'pure' has no composition" in refusal(build(None))
    assert refusal(build(0.0)) == ''  # accepted


def test_training_set_with_nan_energies_refused(aiida_profile):
    """A MACE training set must carry energy, forces and stress on every structure: one NaN energy is refused."""
    from aiida_capthermo.calculations.mace import FinetuneMaceCalcJob
    from aiida_capthermo.data.dataset import DatasetData

    from mlip_helpers import lj_labelled_cells

    labelled = lj_labelled_cells(4, rattle=0.05)
    labelled.energy[1] = math.nan
    node = DatasetData.from_labelled_set(labelled)
    port = FinetuneMaceCalcJob.spec().inputs['train']
    message = port.validate(node).message
    assert 'energy on 1 of 4 structures' in message, message
    settings = FinetuneMaceCalcJob.spec().inputs['settings'].validate(orm.Dict({'allow_downloads': True}))
    assert 'unknown settings' in settings.message


@pytest.mark.parametrize('arguments, message', CLI_CASES, ids=[' '.join(c[0]) for c in CLI_CASES])
def test_command_line_mistake_is_one_line(codes, arguments, message, tmp_path):
    computer = codes['label'].computer.label
    files = structure_files(tmp_path)
    arguments = [a.replace('{computer}', computer).format(**files) if a.startswith('{') and a != '{computer}'
                 else a.replace('{computer}', computer) for a in arguments]
    if arguments[0] == 'submit' and '--computer' not in arguments:
        arguments += ['--computer', computer]
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert 'Traceback' not in result.output and lines[-1].startswith('Error:'), result.output
    assert message in result.output, result.output
    assert 'errors.pydantic.dev' not in result.output and 'input_value=' not in result.output, result.output


def test_own_parent_from_the_command_line(codes, tmp_path):
    """A CIF of CsPbI3 through `capthermo submit study --parent --site --guest --dry-run`: valid, as a study of
    CsPb(Br,I)3 with 24 halide sites in the 2x2x2 cell (the demo's x = 0, 1/2, 1 are on that grid)."""
    files = structure_files(tmp_path)
    result = CliRunner().invoke(cli, ['submit', 'study', '--protocol', 'demo', '--dry-run', '--computer',
                                      codes['label'].computer.label, '--parent', files['cif'], '--site', 'I',
                                      '--guest', 'Br'])
    assert result.exit_code == 0 and 'inputs are valid' in result.output, result.output


def test_table_size():
    assert len(DATASET_CASES) + len(STUDY_CASES) + len(CLI_CASES) + 4 >= 87
    assert set(GOOD.values()) <= set(CODES)


def test_a_truncated_or_corrupted_gnn_model_is_refused_in_one_line(aiida_profile, tmp_path):
    """A GNN model whose weights are cut in half, whose weights have one byte changed, or whose metadata is not JSON
    is refused by the ports that take a GNN and by ModelData.predict, in one line that names the node; the intact
    model passes the same check."""
    import json

    import torch

    from aiida_capthermo.calculations.gnn import validate_gnn_model
    from aiida_capthermo.data.model import ModelData

    torch.save({'weight': torch.arange(4096, dtype=torch.float64)}, tmp_path / 'model.pt')
    (tmp_path / 'model.json').write_text(json.dumps({'architecture': 'graphconv'}))
    content = (tmp_path / 'model.pt').read_bytes()

    def model(weights: bytes, metadata: str = '{"architecture": "graphconv"}') -> ModelData:
        (tmp_path / 'w.pt').write_bytes(weights)
        (tmp_path / 'm.json').write_text(metadata)
        return ModelData.from_files('gnn', {'model.pt': tmp_path / 'w.pt', 'model.json': tmp_path / 'm.json'},
                                    main_file='model.pt').store()

    assert validate_gnn_model(model(content), None) is None
    half = model(content[:len(content) // 2])
    message = validate_gnn_model(half, None)
    assert message.startswith(f"model {half.pk} (gnn): its file 'model.pt'") and 'truncated or corrupted' in message
    flipped = bytearray(content)
    flipped[content.find(b'data/0') + 100] ^= 0xFF  # inside the stored tensor, not the zip directory
    assert 'fails its CRC check' in validate_gnn_model(model(bytes(flipped)), None)
    broken = model(content, metadata='{"architecture": ')
    assert validate_gnn_model(broken, None).startswith(f"model {broken.pk} (gnn): its file 'model.json'")
    with pytest.raises(ValueError, match=f'^model {half.pk} \\(gnn\\)') as raised:
        half.predict([orm.StructureData(cell=[[3, 0, 0], [0, 3, 0], [0, 0, 3]]).get_ase()])
    assert '\n' not in str(raised.value)
