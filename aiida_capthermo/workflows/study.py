"""``CapthermoStudyWorkChain``: the papers' study as one provenance graph, a thin chain of stage workchains.

dataset (``PhononInformedDatasetWorkChain``) -> the MACE potential (``MlipPotentialWorkChain``: train, active
learning on labelled MD frames until its out-of-sample force error is within tolerance, MD check, held-out
evaluation) -> the band-gap GNN (``GnnTwoStageWorkChain``: low, then high fidelity, each with MD frames of the
potential) -> the solid-solution screen (``SolidSolutionScreenWorkChain``: ground state per
composition, its 0 K and finite-temperature phonons) -> the thermal band gaps (``ThermalGapWorkChain``: Eg(x, T)
with error bars and the mode-resolved coupling) -> the validation (``ThermalValidationWorkChain``: the teacher's
labels of decorrelated frames of that MD and of the 0 K structures against both models, per (x, T)). A
calcfunction turns the gaps and the validation into the paper's Table I (Dict and CSV: the GNN's averages
corrected by the teacher, with their error budget, core/error_budget.py), the gaps per (x, T) and Figure 7b-d
(PNG); the stages' own figures are re-exposed under ``figures``.

The study holds no science: it exposes the stages' inputs and outputs, passes each stage what the previous ones
made, and composes its builder from the stages' own ``get_builder_from_protocol``. Every stage can start from given
nodes instead (``given``): datasets, either model, or the structures of the thermal stage; what is given is not
recomputed. docs/architecture.md says how to add a stage.
"""

from __future__ import annotations

import math

import numpy as np
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ToContext, WorkChain, calcfunction, if_

from aiida_capthermo.data.dataset import DatasetData
from aiida_capthermo.data.model import ModelData
from aiida_capthermo.exit_codes import EXIT_CODES
from aiida_capthermo.workflows.dataset import PhononInformedDatasetWorkChain
from aiida_capthermo.workflows.engines import relax_engine_error
from aiida_capthermo.workflows.gnn import GnnTwoStageWorkChain
from aiida_capthermo.workflows.mlip_potential import MlipPotentialWorkChain
from aiida_capthermo.workflows.protocols import ProtocolMixin, load_code, set_options, unlanded_overrides
from aiida_capthermo.workflows.report import table_one
from aiida_capthermo.workflows.screen import SolidSolutionScreenWorkChain
from aiida_capthermo.workflows.thermal import ThermalGapWorkChain
from aiida_capthermo.workflows.thermal_validation import ThermalValidationWorkChain
from aiida_capthermo.workflows.validation import compositions_error

__all__ = ['CapthermoStudyWorkChain']

#: Inputs of the potential's stage that the study supplies from the dataset stage.
MACE_SUPPLIED = ('dataset', 'prototype', 'parents', 'supercell', 'engine', 'batch_size', 'max_concurrent')
#: Inputs of the GNN stage that the study supplies: the datasets, the potential's MD frames, the high engine.
GNN_SUPPLIED = ('low', 'equilibrium', 'high', 'md_frames', 'high_engine', 'batch_size', 'max_concurrent')
#: Inputs of the validation stage that the study supplies: the thermal stage's frames, the models and the engines.
VALIDATION_SUPPLIED = ('frames', 'relaxed', 'replicas', 'mace_model', 'gnn_model', 'gnn_members', 'gnn_code',
                       'evaluate_code', 'low', 'high')


def _with_defaults(process, given: dict, extra: dict) -> dict:
    """The inputs of a stage as its validator sees them: ``given`` (the study's namespace), ``extra`` (what the
    study supplies) and the defaults of the ports neither sets."""
    inputs = {**given, **extra}
    for name, port in process.spec().inputs.items():
        if name not in inputs and getattr(port, 'has_default', lambda: False)():
            default = port.default
            inputs[name] = default() if callable(default) else default
    return inputs


def given_structures_error(structures: dict, prototype: dict | None) -> str | None:
    """Why a structure given to the thermal stage does not carry the composition of its cell, or None: its
    ``capthermo_x`` must be there and equal guest / (host + guest) of its species (from the dataset's
    ``prototype``, when given), or Table I would report its gaps at another x."""
    from aiida_capthermo.core.structures import composition_x

    for key, structure in sorted(structures.items()):
        recorded = structure.base.attributes.get('capthermo_x', None)
        if recorded is None:
            return (f'structure {key!r} has no composition: set it with '
                    '`aiida_capthermo.data.structures.set_structure_metadata(structure, x=...)`')
        if prototype is None:
            continue
        try:
            actual = composition_x(structure.get_ase(), prototype['host'], prototype['guest'])
        except ValueError as exception:
            return f'structure {key!r}: {exception}'
        if abs(actual - recorded) > 1e-6:
            return (f'structure {key!r} records x = {recorded:g}, but its cell holds {prototype["guest"]} on a '
                    f'fraction {actual:g} of the {prototype["host"]}/{prototype["guest"]} sites: fix its capthermo_x')
    return None


#: Below this Boltzmann weight of the lowest configuration at a temperature of the screen, the study warns that
#: the thermal stage, which follows that configuration alone, does not stand for the composition there.
GROUND_STATE_WEIGHT = 0.9


def ground_state_warning(key: str, ranking: dict) -> str | None:
    """A warning when the screen's lowest configuration of composition ``key`` carries less than
    :data:`GROUND_STATE_WEIGHT` of the Boltzmann weight at one of the ranking's temperatures, else None."""
    weights = {name[1:]: row['probability_lowest'] for name, row in ranking.get('boltzmann', {}).items()}
    if len(ranking.get('keys', [])) < 2 or all(w >= GROUND_STATE_WEIGHT for w in weights.values()):
        return None
    margin = 1000 * ranking['relative_energy_per_atom'][1]
    shares = ', '.join(f'{100 * w:.0f} % at {t} K' for t, w in weights.items())
    return (f'WARNING: {key}: the lowest configuration {ranking["lowest"]} is {margin:.1f} meV/atom below the next '
            f'and carries {shares} of the Boltzmann weight. The thermal stage follows it alone, so Eg(x, T) of this '
            'composition is that configuration\'s, not the ensemble\'s; an energy error of this size in the '
            'potential reorders them, and another run can pick another one')


#: Keys of the study's ``ensemble`` input, and its weightings.
ENSEMBLE_KEYS = ('configurations', 'temperature', 'weighting')
WEIGHTINGS = ('boltzmann', 'random')


def ensemble_error(ensemble: dict, keep: int | None) -> str | None:
    """``ensemble``: ``configurations`` (k >= 1, at most the screen's ``keep``) and either ``temperature`` (K > 0,
    Boltzmann weights; ``weighting`` absent or ``boltzmann``) or ``weighting: random`` (no temperature)."""
    unknown = sorted(set(ensemble) - set(ENSEMBLE_KEYS))
    if unknown:
        return f'ensemble takes {list(ENSEMBLE_KEYS)}, got the unknown keys {unknown}'
    weighting = ensemble.get('weighting', 'boltzmann')
    if weighting not in WEIGHTINGS:
        return f'ensemble.weighting must be one of {list(WEIGHTINGS)}, got {weighting!r}'
    if 'configurations' not in ensemble:
        return 'ensemble needs configurations (k, the number of the screen\'s lowest classes to average)'
    k = ensemble['configurations']
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        return f'ensemble.configurations must be an integer >= 1, got {k!r}'
    if weighting == 'random':
        if 'temperature' in ensemble:
            return ('ensemble.weighting random weights the classes by their multiplicities alone: remove '
                    'ensemble.temperature, or set weighting boltzmann')
    else:
        temperature = ensemble.get('temperature')
        if temperature is None:
            return ('ensemble.temperature (the synthesis temperature, K) is needed for Boltzmann weights; or set '
                    'ensemble.weighting random for the random alloy')
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) \
                or not math.isfinite(temperature) or temperature <= 0:
            return ('ensemble.temperature (the synthesis temperature, K) must be a finite number > 0, got '
                    f'{temperature!r}')
    if keep is not None and k > keep:
        return (f'ensemble.configurations = {k} needs the screen to keep that many: set screen.keep >= {k} (it is '
                f'{keep})')
    return None


@calcfunction
def ensemble_weights(settings: orm.Dict, **rankings: orm.Dict) -> dict:
    """The configurations of each composition that the thermal stage runs, and their weights: the
    ``configurations`` lowest of the screen's ranking (``rankings``, by composition key), with Boltzmann weights at
    the synthesis temperature, ``p_i = g_i exp(-(E_i - E_min) / k_B T) / Z`` over them (g_i the multiplicity, E_i
    the energy of the cell: energy per atom times ``settings['n_atoms'][composition]``), or, with ``weighting``
    ``random``, the random alloy's ``g_i / sum(g)`` (:func:`core.solid_solution.kept_weights`).

    Outputs ``weights`` (``{composition: {<composition>_<class>: weight}}``, what ``table_one`` averages with) and
    ``coverage`` (``{composition: the weight the kept classes hold among all the relaxed ones}``: below 1 the
    ensemble is truncated).
    """
    from aiida_capthermo.core.solid_solution import kept_weights

    s = settings.get_dict()
    temperature = None if s.get('weighting') == 'random' else float(s['temperature'])
    weights, coverage = {}, {}
    for composition, node in sorted(rankings.items()):
        ranking = node.get_dict()
        per_cell = np.asarray(ranking['energy_per_atom'], dtype=float) * s['n_atoms'][composition]
        kept, coverage[composition] = kept_weights(per_cell, ranking['multiplicity'], int(s['configurations']),
                                                   temperature)
        weights[composition] = {f'{composition}_{name}': float(w) for name, w in zip(ranking['keys'], kept)}
    return {'weights': orm.Dict(weights), 'coverage': orm.Dict(coverage)}


def validate_study(inputs, _) -> str | None:
    from aiida_capthermo.workflows import screen, thermal

    given = inputs.get('given', {})
    structure_keys = sorted(given['structures']) if given.get('structures') else None
    if 'screen' in inputs:
        if 'mace_model' not in given and 'code' not in inputs.get('mace', {}):
            return 'the screen needs a potential: give mace.code (train one) or given.mace_model'
        dataset = inputs.get('dataset', {})
        extra = {'prototype': dataset['prototype']} if 'prototype' in dataset else {}
        if dataset.get('parents'):
            extra['parents'] = dict(dataset['parents'])
        if 'supercell' in dataset:
            extra['supercell'] = dataset['supercell']
        if dataset.get('low'):
            extra['engine'] = dict(dataset['low'])
        screen_inputs = _with_defaults(SolidSolutionScreenWorkChain, dict(inputs['screen']), extra)
        error = screen.validate_inputs(screen_inputs, None)
        if error:
            return f'screen: {error}'
        if structure_keys is None and 'compositions' in screen_inputs:  # the thermal stage: the screen's lowest
            structure_keys = [screen.composition_key(x) for x in screen_inputs['compositions'].get_list()]
    if 'ensemble' in inputs:
        if 'screen' not in inputs or given.get('structures'):
            return 'ensemble averages the screen\'s configurations: it needs the screen namespace, not given.structures'
        keep = inputs['screen']['keep'].value if 'keep' in inputs['screen'] else 1
        error = ensemble_error(inputs['ensemble'].get_dict(), keep)
        if error:
            return error
    dataset = inputs.get('dataset', {})
    prototype = dataset['prototype'].get_dict() if 'prototype' in dataset else None
    error = given_structures_error(given.get('structures', {}), prototype)
    if error:
        return f'given.structures: {error}'
    if 'thermal' in inputs:
        if 'screen' not in inputs and not given.get('structures'):
            return 'the thermal stage needs structures: the screen namespace, or given.structures'
        error = thermal.settings_error(_with_defaults(ThermalGapWorkChain, dict(inputs['thermal']), {}),
                                       structure_keys)
        if error:
            return f'thermal: {error}'
    if given.get('gnn_members') and 'gnn_model' not in given:
        return 'given.gnn_members are the other models of a given GNN\'s ensemble: give given.gnn_model too'
    gnn = inputs.get('gnn', {})
    targets = {gnn[key].get('target', 'gap') for key in ('hyperparameters', 'finetune_hyperparameters') if key in gnn}
    if 'thermal' in inputs and targets - {'gap'}:
        return (f'gnn: the thermal stage averages band gaps, but the GNN is trained on {sorted(targets - {"gap"})}: '
                'set gnn.hyperparameters.target to gap')
    mace = inputs.get('mace', {})
    low = inputs.get('dataset', {}).get('low', {})
    if 'code' in mace and 'calculator' in low:  # the potential trains on the low labels: energy, forces, stress
        missing = {'energy', 'forces', 'stress'} - set(low['calculator'].get('properties', ['energy', 'forces',
                                                                                          'stress', 'gap']))
        if missing:
            return (f'dataset.low.calculator.properties lacks {sorted(missing)}: the MACE potential trains on the low '
                    'labels and needs energy, forces and stress')
    if 'validation' in inputs and not ('thermal' in inputs and 'evaluate_code' in mace):
        return 'the validation stage needs the thermal stage and mace.evaluate_code (a capthermo-mace code)'
    if 'relax' in inputs.get('validation', {}):
        error = relax_engine_error(low)
        if error:
            return (f'validation.relax: {error.split(":")[0]}: leave out validation.relax (Eg(0) then gets no '
                    'structure error)')
    if ('refine' in mace or 'md_check' in mace) and not ('mlip_code' in mace and 'code' in mace):
        return 'mace.refine and mace.md_check need mace.code and mace.mlip_code (a capthermo-mlip code)'
    supercell = inputs['dataset']['supercell'].get_list() if 'supercell' in inputs.get('dataset', {}) else [2, 2, 2]
    end_members = _end_members(inputs)
    sites_per_cell = end_members[0].get_chemical_symbols().count(prototype['host']) if end_members else 1
    for name in ('refine', 'md_check'):
        if name in mace:
            error = compositions_error(mace[name].get_dict().get('compositions', [0.5]), supercell, sites_per_cell)
            if error:
                return f'mace.{name}.compositions: {error}'
    if 'refine' in mace and 'evaluate_code' not in mace and 'mace_model' not in given:
        return ('mace.refine evaluates each round\'s potential on its fresh MD frames: it needs mace.evaluate_code '
                '(a capthermo-mace code)')
    return unrelaxed_end_members_error(inputs) or supercell_cutoff_error(inputs, supercell)


def unrelaxed_end_members_error(inputs) -> str | None:
    """Given datasets or models skip the dataset stage and its relaxation: the stages that build cells from the end
    members (the screen, the potential's MD) then need the relaxed ones given, or they would start from unrelaxed
    cells."""
    given, dataset, mace = inputs.get('given', {}), inputs.get('dataset', {}), inputs.get('mace', {})
    skipped = 'low' in given or ('mace_model' in given and 'gnn_model' in given)
    builds_cells = ('screen' in inputs and not given.get('structures')) or (
        'mace_model' not in given and 'code' in mace and ('refine' in mace or 'md_check' in mace))
    if skipped and builds_cells and 'relax' in dataset and set(dataset.get('parents', {})) != {'host', 'guest'}:
        return ('dataset.relax: the given datasets or models skip the dataset stage, and its relaxation with it, so '
                'the screen and the MD would start from end members that are not relaxed: give the relaxed ones as '
                'dataset.parents.host and dataset.parents.guest (the outputs dataset.parents of the study that made '
                'them)')
    return None


def _end_members(inputs) -> tuple | None:
    """The dataset's end members (ase.Atoms, unrelaxed), or None where the dataset's own validator refuses them."""
    from aiida_capthermo.workflows.validation import end_member_atoms, prototype_error

    dataset = inputs.get('dataset', {})
    if 'prototype' not in dataset or prototype_error(dataset['prototype'].get_dict()):
        return None
    try:
        return end_member_atoms(dataset['prototype'].get_dict(), dataset.get('parents', {}))
    except ValueError:
        return None


def model_cutoffs(inputs) -> dict[str, float]:
    """The radii the study's models see, where known before anything runs: the GNN's radius-graph cutoff and the
    r_max of a MACE potential trained from scratch (a foundation's comes with its weights, on the cluster)."""
    from aiida_capthermo.calculations.mace import MaceHyperParameters
    from aiida_capthermo.ml.gnn.config import GnnHyperparameters

    cutoffs = {}
    gnn = inputs.get('gnn', {})
    if 'code' in gnn:
        hyper = gnn['hyperparameters'].get_dict() if 'hyperparameters' in gnn else {}
        cutoffs['GNN cutoff'] = float(hyper.get('cutoff', GnnHyperparameters.model_fields['cutoff'].default))
    mace = inputs.get('mace', {})
    if 'code' in mace:
        hyper = mace['hyperparameters'].get_dict() if 'hyperparameters' in mace else {}
        if 'r_max' in hyper:
            cutoffs['MACE r_max'] = float(hyper['r_max'])
        elif 'foundation_name' not in mace and 'foundation_model' not in mace:
            cutoffs['MACE r_max'] = float(MaceHyperParameters.model_fields['r_max'].default)
    return cutoffs


def supercell_cutoff_error(inputs, supercell: list) -> str | None:
    """The dataset's supercell of each end member (the narrower one bounds every composition, Vegard's cells lie
    between them) and every given structure must be wider than the models' radii
    (:func:`core.structures.cutoff_error`)."""
    from aiida_capthermo.core.structures import cutoff_error

    cutoffs = model_cutoffs(inputs)
    if not cutoffs:
        return None
    from aiida_capthermo.core.structures import perpendicular_widths

    narrow_first = sorted(_end_members(inputs) or (), key=lambda atoms: perpendicular_widths(atoms.cell.array).min())
    for atoms in narrow_first:
        error = cutoff_error(atoms.cell.array, supercell, cutoffs)
        if error:
            return f'dataset.supercell: {error}'
    for key, structure in sorted(inputs.get('given', {}).get('structures', {}).items()):
        error = cutoff_error(np.asarray(structure.cell), [1, 1, 1], cutoffs)
        if error:
            return f'given.structures.{key}: {error}'
    return None



def study_engines(study: orm.ProcessNode) -> dict:
    """The labelling engines of a finished study, as :class:`~aiida_capthermo.ml.settings.CalculatorSpec`: ``low``
    (the dataset's low-fidelity engine: energies, forces, the potential's teacher) and ``teacher`` (the gaps' teacher:
    the dataset's high engine when it ran one, else the low engine). The independent checks in ``scripts/`` label
    with them."""
    from aiida_capthermo.ml.settings import CalculatorSpec

    dataset = study.inputs.dataset
    teacher = dataset.high if 'code' in dataset.get('high', {}) else dataset.low
    return {'low': CalculatorSpec(**dataset.low.calculator.get_dict()),
            'teacher': CalculatorSpec(**teacher.calculator.get_dict())}


class CapthermoStudyWorkChain(ProtocolMixin, WorkChain):
    """Dataset -> MACE potential and two-stage band-gap GNN -> screen -> thermal gaps, every node in one graph."""

    _protocol_file = 'study'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(PhononInformedDatasetWorkChain, namespace='dataset',
                           namespace_options={'help': 'Inputs of the dataset stage.'})
        spec.expose_inputs(GnnTwoStageWorkChain, namespace='gnn', exclude=GNN_SUPPLIED,
                           namespace_options={'help': 'The band-gap GNN (its datasets are the dataset stage\'s, '
                                                      'its MD frames the potential\'s active-learning frames).'})
        spec.expose_inputs(MlipPotentialWorkChain, namespace='mace', exclude=MACE_SUPPLIED,
                           namespace_options={'required': False, 'populate_defaults': False,
                                              'help': 'The MACE potential (trained on the low set; its MD starts '
                                                      'from the dataset\'s prototype and supercell and its frames '
                                                      'are labelled by the low engine); none: no potential.'})
        spec.input('given.low', valid_type=DatasetData, required=False,
                   help='An existing low-fidelity dataset (energies, forces, stresses, gaps): no dataset stage.')
        spec.input('given.high', valid_type=DatasetData, required=False,
                   help='An existing high-fidelity gap dataset (with given.low).')
        spec.input('given.equilibrium', valid_type=DatasetData, required=False,
                   help='An existing set of equilibrium structures for the GNN (with given.low).')
        spec.input('given.mace_model', valid_type=ModelData, required=False,
                   help='An existing MACE potential: no MACE training, refinement or MD check.')
        spec.input('given.gnn_model', valid_type=ModelData, required=False,
                   help='An existing band-gap GNN (the one the thermal stage uses): no GNN training.')
        spec.input_namespace('given.gnn_members', valid_type=ModelData, dynamic=True, required=False,
                             help='The other members of the given GNN\'s ensemble (a GNN stage\'s `members`), '
                                  'with given.gnn_model.')
        spec.input_namespace('given.structures', valid_type=orm.StructureData, dynamic=True, required=False,
                             help='Structures of the thermal stage by key (each with its x): no screen.')
        spec.expose_inputs(SolidSolutionScreenWorkChain, namespace='screen',
                           exclude=('model', 'prototype', 'parents', 'supercell', 'engine'),
                           namespace_options={'required': False, 'populate_defaults': False,
                                              'help': 'The solid-solution screen with the final potential (the '
                                                      'prototype and supercell are the dataset\'s; with rerank the '
                                                      'dataset\'s low engine ranks the relaxed configurations); '
                                                      'none: no screen.'})
        spec.expose_inputs(ThermalGapWorkChain, namespace='thermal',
                           exclude=('structures', 'mace_model', 'gnn_model', 'gnn_members', 'gnn_code'),
                           namespace_options={'required': False, 'populate_defaults': False,
                                              'help': 'Thermal band gaps of the screen\'s lowest configurations '
                                                      '(or given.structures) with the potential and the GNN (its '
                                                      'code is gnn.code); none: no thermal stage.'})
        spec.expose_inputs(ThermalValidationWorkChain, namespace='validation', exclude=VALIDATION_SUPPLIED,
                           namespace_options={'required': False, 'populate_defaults': False,
                                              'help': 'The teacher on frames of the thermal MD (the dataset\'s '
                                                      'engines, both models; needs mace.evaluate_code); none: no '
                                                      'validation.'})
        spec.input('ensemble', valid_type=orm.Dict, required=False,
                   help='Each composition as the ensemble of its screen\'s lowest configurations rather than its '
                        'ground state: `configurations` (k, at most screen.keep) and `temperature` (K, the synthesis '
                        'temperature at which the configurations are frozen in): the thermal stage and the '
                        'validation run every one, and Table I averages them with their Boltzmann weights there '
                        '(multiplicities included), the spread of their gaps beside; or `weighting: random` '
                        '(no temperature): the random alloy, each class weighted by its multiplicity alone (keep '
                        'every class of the screen for the exact average; the coverage says what is left out). '
                        'Absent: the ground state, as in the paper.')
        spec.inputs.validator = validate_study
        spec.outline(
            if_(cls.should_run_dataset)(cls.run_dataset, cls.inspect_dataset),
            cls.take_datasets,
            cls.run_potential,
            cls.inspect_potential,
            cls.run_gnn,
            cls.inspect_gnn,
            if_(cls.should_screen)(cls.run_screen, cls.inspect_screen),
            if_(cls.should_thermal)(cls.run_thermal, cls.inspect_thermal),
            if_(cls.should_validate)(cls.run_validation, cls.inspect_validation),
            if_(cls.should_tabulate)(cls.tabulate),
            cls.results,
        )
        spec.expose_outputs(PhononInformedDatasetWorkChain, namespace='dataset',
                            namespace_options={'required': False})
        spec.expose_outputs(GnnTwoStageWorkChain, namespace='gnn', exclude=('parity_plot_low', 'parity_plot'),
                            namespace_options={'required': False})
        spec.expose_outputs(MlipPotentialWorkChain, namespace='mace', exclude=('parity_plot', 'learning_curve_plot'),
                            namespace_options={'required': False})
        spec.expose_outputs(SolidSolutionScreenWorkChain, namespace='screen', namespace_options={'required': False})
        spec.expose_outputs(ThermalGapWorkChain, namespace='thermal', namespace_options={'required': False})
        spec.expose_outputs(ThermalValidationWorkChain, namespace='validation', exclude=('plot',),
                            namespace_options={'required': False})
        spec.output('table', valid_type=orm.Dict, required=False,
                    help='The paper\'s Table I: per composition x, Eg at each T with its error budget (total, '
                         'statistical, model, the potential\'s sampling), ΔEg and the relative change (eV). With '
                         'the validation stage, Eg is '
                         'the GNN\'s thermal average corrected by the teacher on frames of the same MD (control '
                         'variate); without it, the GNN\'s own average, marked not validated.')
        spec.output_namespace('gaps', valid_type=orm.Dict, dynamic=True, required=False,
                              help='Per (structure, T), `<key>_T<T>`: the gap of Table I with its error budget: gap, '
                                   'stderr (total), stderr_statistical, stderr_model, stderr_sampling (the '
                                   'potential\'s, first-order; at T = 0 its structure error, with '
                                   'validation.relax), sampling_shift, sampling_perturbative, '
                                   'stderr_members (spread over an ensemble of GNNs), gap_model, bias, n_validation, '
                                   'validated, estimator, eg0, delta_gap, delta_gap_stderr (eV), relative_change; x, '
                                   'temperature (K).')
        spec.output('table_csv', valid_type=orm.SinglefileData, required=False, help='Table I as CSV.')
        spec.output('ensemble', valid_type=orm.Dict, required=False,
                    help='With `ensemble`: the weight of every configuration the thermal stage ran, by composition.')
        spec.output_namespace('figures', valid_type=orm.SinglefileData, dynamic=True,
                              help='PNG figures: eg_vs_x, eg_vs_t, relative_change (Figure 7b-d), coupling_<key> '
                                   '(Figure 8a), phonons_<key> (Figure 6), gnn_parity_low / gnn_parity, '
                                   'mace_parity, mace_learning_curve (active learning), validation (both models '
                                   'against the teacher on the thermal frames).')
        spec.exit_code(EXIT_CODES['ERROR_DATASET_FAILED'], 'ERROR_DATASET_FAILED',
                       message='The dataset stage failed: {message}')
        spec.exit_code(EXIT_CODES['ERROR_GNN_FAILED'], 'ERROR_GNN_FAILED', message='The GNN stage failed: {message}')
        spec.exit_code(EXIT_CODES['ERROR_MACE_FAILED'], 'ERROR_MACE_FAILED',
                       message='The potential stage failed: {message}')
        spec.exit_code(EXIT_CODES['ERROR_SCREEN_FAILED'], 'ERROR_SCREEN_FAILED', message='The screen failed: {message}')
        spec.exit_code(EXIT_CODES['ERROR_THERMAL_FAILED'], 'ERROR_THERMAL_FAILED',
                       message='The thermal-gap stage failed: {message}')
        spec.exit_code(EXIT_CODES['ERROR_VALIDATION_FAILED'], 'ERROR_VALIDATION_FAILED',
                       message='The validation stage failed: {message}')

    def _given(self) -> dict:
        return self.inputs.get('given', {})

    # ------------------------------------------------------------------ dataset
    def should_run_dataset(self) -> bool:
        given = self._given()
        return 'low' not in given and not ('mace_model' in given and 'gnn_model' in given)

    def run_dataset(self):
        inputs = self.exposed_inputs(PhononInformedDatasetWorkChain, 'dataset')
        inputs['metadata'] = {'call_link_label': 'dataset'}
        return ToContext(dataset=self.submit(PhononInformedDatasetWorkChain, **inputs))

    def inspect_dataset(self):
        node = self.ctx.dataset
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_DATASET_FAILED.format(message=f'[{node.exit_status}] {node.exit_message}')
        self.out_many(self.exposed_outputs(node, PhononInformedDatasetWorkChain, namespace='dataset'))
        return None

    def _parents(self) -> dict:
        """The end members the later stages build their cells from: the dataset stage's (relaxed when it relaxed
        them), else the given ``dataset.parents`` (the stages build the preset's when there are none)."""
        if 'dataset' in self.ctx and 'parents' in self.ctx.dataset.outputs:
            return dict(self.ctx.dataset.outputs.parents)
        return dict(self.inputs.dataset.get('parents', {}))

    def take_datasets(self):
        """The datasets the models train on: the dataset stage's, or the given ones."""
        source = self.ctx.dataset.outputs if 'dataset' in self.ctx else self._given()
        self.ctx.datasets = {key: source[key] for key in ('low', 'high', 'equilibrium') if key in source}

    # ------------------------------------------------------------------ models
    def run_potential(self):
        """The potential first (unless given): its active-learning MD frames teach the GNN thermal disorder."""
        self.ctx.mace_model = self._given().get('mace_model')
        if self.ctx.mace_model is not None or 'code' not in self.inputs.get('mace', {}):
            return None
        dataset = self.inputs.dataset
        inputs = self.exposed_inputs(MlipPotentialWorkChain, 'mace')
        inputs.update(dataset=self.ctx.datasets['low'], prototype=dataset.prototype, supercell=dataset.supercell,
                      engine=dict(dataset.low), batch_size=dataset.batch_size, parents=self._parents(),
                      max_concurrent=dataset.max_concurrent, metadata={'call_link_label': 'mace'})
        self.report('training the potential')
        return ToContext(mace=self.submit(MlipPotentialWorkChain, **inputs))

    def _take_stage(self, name: str, process, exit_code, figures: dict):
        """A finished stage ``name``: its exit code when it failed; else its outputs exposed under ``name`` and its
        ``figures`` (figure label -> output name) under ``figures``."""
        node = self.ctx[name]
        if not node.is_finished_ok:
            return exit_code.format(message=f'[{node.exit_status}] {node.exit_message}')
        self.out_many(self.exposed_outputs(node, process, namespace=name))
        for figure, output in figures.items():
            if output in node.outputs:
                self.out(f'figures.{figure}', node.outputs[output])
        return None

    def inspect_potential(self):
        if 'mace' not in self.ctx:
            return None
        error = self._take_stage('mace', MlipPotentialWorkChain, self.exit_codes.ERROR_MACE_FAILED,
                                 {'mace_parity': 'parity_plot', 'mace_learning_curve': 'learning_curve_plot'})
        if error is None:
            self.ctx.mace_model = self.ctx.mace.outputs.model
        return error

    def run_gnn(self):
        """The two-stage GNN (unless given) on the datasets and the potential's labelled MD frames."""
        self.ctx.gnn_model = self._given().get('gnn_model')
        if self.ctx.gnn_model is not None:
            self.ctx.gnn_members = dict(self._given().get('gnn_members', {}))
            return None
        dataset = self.inputs.dataset
        inputs = self.exposed_inputs(GnnTwoStageWorkChain, 'gnn')
        inputs.update(self.ctx.datasets, batch_size=dataset.batch_size, max_concurrent=dataset.max_concurrent,
                      metadata={'call_link_label': 'gnn'})
        if 'mace' in self.ctx and 'md_frames' in self.ctx.mace.outputs:
            inputs['md_frames'] = self.ctx.mace.outputs.md_frames
        if 'code' in dataset.get('high', {}):
            inputs['high_engine'] = dict(dataset.high)
        self.report('training the band-gap GNN')
        return ToContext(gnn=self.submit(GnnTwoStageWorkChain, **inputs))

    def inspect_gnn(self):
        if 'gnn' not in self.ctx:
            return None
        error = self._take_stage('gnn', GnnTwoStageWorkChain, self.exit_codes.ERROR_GNN_FAILED,
                                 {'gnn_parity_low': 'parity_plot_low', 'gnn_parity': 'parity_plot'})
        if error is None:
            self.ctx.gnn_model = self.ctx.gnn.outputs.model
            outputs = self.ctx.gnn.outputs
            self.ctx.gnn_members = dict(outputs.members) if 'members' in outputs else {}
        return error

    # ------------------------------------------------------------------ screen and thermal gaps
    def should_screen(self) -> bool:
        return 'screen' in self.inputs and not self._given().get('structures')

    def run_screen(self):
        inputs = self.exposed_inputs(SolidSolutionScreenWorkChain, 'screen')
        inputs.update(model=self.ctx.mace_model, prototype=self.inputs.dataset.prototype, parents=self._parents(),
                      metadata={'call_link_label': 'screen'})
        if 'supercell' in self.inputs.dataset:
            inputs['supercell'] = self.inputs.dataset.supercell
        if 'low' in self.inputs.dataset:  # the potential's teacher ranks the relaxed configurations (rerank)
            inputs['engine'] = dict(self.inputs.dataset.low)
        self.report(f'screen of x = {inputs["compositions"].get_list()} with MACE potential {self.ctx.mace_model.pk}')
        return ToContext(screen=self.submit(SolidSolutionScreenWorkChain, **inputs))

    def inspect_screen(self):
        node = self.ctx.screen
        finite_failed = SolidSolutionScreenWorkChain.exit_codes.ERROR_FINITE_TEMPERATURE_FAILED.status
        if not node.is_finished_ok and not (node.exit_status == finite_failed and 'compositions' in node.outputs):
            return self.exit_codes.ERROR_SCREEN_FAILED.format(message=f'[{node.exit_status}] {node.exit_message}')
        if not node.is_finished_ok:  # ground states and 0 K phonons are there; the finite-T MD broke
            self.report(f'screen: {node.exit_message}; going on with the ground states')
        self.out_many(self.exposed_outputs(node, SolidSolutionScreenWorkChain, namespace='screen'))
        compositions = node.outputs.compositions
        if 'ensemble' in self.inputs:
            self._take_ensemble(compositions)
        else:
            self.ctx.structures = {key: compositions[key]['lowest'] for key in compositions}
            for key in compositions:
                warning = ground_state_warning(key, compositions[key]['ranking'].get_dict()) \
                    if 'ranking' in compositions[key] else None
                if warning:
                    self.report(warning)
        for key in compositions:
            lowest = compositions[key]['ranking']['lowest'] if 'ranking' in compositions[key] else None
            for name, value in compositions[key].items():
                if isinstance(value, dict) and 'phonon_plot' in value:
                    label = f'phonons_{key}' if name == lowest else f'phonons_{key}_{name}'
                    self.out(f'figures.{label}', value['phonon_plot'])
        return None

    def _take_ensemble(self, compositions) -> None:
        """The configurations of every composition that the thermal stage runs, with their weights."""
        ensemble = self.inputs.ensemble.get_dict()
        rankings = {key: compositions[key]['ranking'] for key in compositions}
        n_atoms = {key: len(compositions[key]['lowest'].sites) for key in compositions}
        ranked_by = {key: rankings[key].get('ranked_by', 'potential') for key in rankings}
        self.ctx.ensemble_settings = orm.Dict({**ensemble, 'n_atoms': n_atoms, 'ranked_by': ranked_by})
        made = ensemble_weights(self.ctx.ensemble_settings, **rankings)
        self.ctx.ensemble = made['weights']
        self.ctx.lowest_member = {key: f'{key}_{rankings[key]["lowest"]}' for key in rankings}
        self.out('ensemble', made['weights'])
        self.ctx.structures = {}
        for key, members in made['weights'].get_dict().items():
            for member in members:
                self.ctx.structures[member] = compositions[key][member[len(key) + 1:]]['structure']
            weights = ', '.join(f'{member[len(key) + 1:]} {w:.2f}' for member, w in members.items())
            where = 'of the random alloy' if ensemble.get('weighting') == 'random' else \
                f'at {ensemble["temperature"]:g} K'
            self.report(f'{key}: the ensemble of {len(members)} configurations {where} '
                        f'({weights}) holds {100 * made["coverage"][key]:.1f} % of the relaxed ones\' weight')

    def should_thermal(self) -> bool:
        return 'thermal' in self.inputs

    def run_thermal(self):
        inputs = self.exposed_inputs(ThermalGapWorkChain, 'thermal')
        structures = self.ctx.get('structures') or dict(self._given()['structures'])
        if 'ensemble' in self.ctx and 'coupling' in inputs:  # a composition's modes: those of its lowest
            coupling = inputs['coupling'].get_dict()
            chosen = coupling.get('structures', 'all')
            if chosen != 'all':
                coupling['structures'] = [self.ctx.lowest_member.get(key, key) for key in chosen]
                inputs['coupling'] = orm.Dict(coupling)
        inputs.update(structures=structures, mace_model=self.ctx.mace_model, gnn_model=self.ctx.gnn_model,
                      gnn_code=self.inputs.gnn.code, metadata={'call_link_label': 'thermal'})
        if self.ctx.get('gnn_members'):
            inputs['gnn_members'] = self.ctx.gnn_members
        self.report(f'thermal gaps of {sorted(structures)} at {inputs["temperatures"].get_list()} K')
        return ToContext(thermal=self.submit(ThermalGapWorkChain, **inputs))

    def inspect_thermal(self):
        node = self.ctx.thermal
        if 'table' not in node.outputs:
            return self.exit_codes.ERROR_THERMAL_FAILED.format(message=f'[{node.exit_status}] {node.exit_message}')
        self.out_many(self.exposed_outputs(node, ThermalGapWorkChain, namespace='thermal'))
        for label, value in (node.outputs.coupling.items() if 'coupling' in node.outputs else []):
            if label.startswith('plot_') and not label.endswith('_pdf'):  # the PDF beside it: report.pdf_beside
                self.out(f'figures.coupling_{label[5:]}', value)
        if node.exit_status == ThermalGapWorkChain.exit_codes.ERROR_REPLICAS_LOST.status:
            self.report(f'thermal: {node.exit_message}; Table I holds the gaps of the replicas that finished')
        elif not node.is_finished_ok:
            return self.exit_codes.ERROR_THERMAL_FAILED.format(message=f'[{node.exit_status}] {node.exit_message}')
        return None

    # ------------------------------------------------------------------ validation on the thermal frames
    def should_validate(self) -> bool:
        return 'validation' in self.inputs and 'thermal' in self.ctx

    def run_validation(self):
        """The teacher's labels of decorrelated frames of every thermal MD job, against both models."""
        thermal, dataset = self.ctx.thermal, self.inputs.dataset
        jobs = thermal.base.links.get_outgoing(link_type=LinkType.CALL_CALC, link_label_filter='md_%').all()
        inputs = self.exposed_inputs(ThermalValidationWorkChain, 'validation')
        inputs.update(frames={link.link_label: link.node.outputs.frames for link in jobs
                              if 'frames' in link.node.outputs},
                      relaxed=dict(thermal.outputs.relaxed), replicas=thermal.outputs.replicas,
                      mace_model=self.ctx.mace_model,
                      gnn_model=self.ctx.gnn_model, gnn_code=self.inputs.gnn.code,
                      evaluate_code=self.inputs.mace.evaluate_code, low=dict(dataset.low),
                      metadata={'call_link_label': 'validation'})
        if self.ctx.get('gnn_members'):
            inputs['gnn_members'] = self.ctx.gnn_members
        if 'code' in dataset.get('high', {}):
            inputs['high'] = dict(dataset.high)
        return ToContext(validation=self.submit(ThermalValidationWorkChain, **inputs))

    def inspect_validation(self):
        return self._take_stage('validation', ThermalValidationWorkChain, self.exit_codes.ERROR_VALIDATION_FAILED,
                                {'validation': 'plot'})

    def should_tabulate(self) -> bool:
        return 'thermal' in self.ctx and 'table' in self.ctx.thermal.outputs

    def tabulate(self):
        """Table I, its figures and the gaps with their error budget: the thermal stage's GNN averages corrected
        by the validation stage's teacher labels when it ran."""
        inputs = {'table': self.ctx.thermal.outputs.table}
        if 'validation' in self.ctx:
            inputs['validation'] = self.ctx.validation.outputs.validation
        if 'ensemble' in self.ctx:
            inputs['ensemble'] = self.ctx.ensemble
            inputs['ensemble_settings'] = self.ctx.ensemble_settings  # the weights' error from the engine's energies
        prototype = self.inputs.get('dataset', {}).get('prototype')
        if prototype is not None:  # names x in the figures: x_Br
            inputs['species'] = orm.Dict({'host': prototype['host'], 'guest': prototype['guest']})
        report = table_one(**inputs)
        self.out('table', report['table'])
        self.out('table_csv', report['csv'])
        for name in ('eg_vs_x', 'eg_vs_t', 'relative_change'):
            self.out(f'figures.{name}', report[name])
        for name, node in report.items():
            if name.startswith('gap_'):
                self.out(f'gaps.{name[4:]}', node)
        for row in report['table']['rows']:
            gaps = ', '.join(f'{t:.0f} K {g:.3f}±{e:.3f} (stat. {s:.3f}){"" if v else " not validated"}'
                             for t, g, e, s, v in zip(row['temperatures'], row['gap'], row['stderr'],
                                                      row['stderr_statistical'], row['validated']))
            self.report(f'x = {row["x"]:.3f}: Eg {gaps} eV')

    def results(self):
        self.report('study finished')

    @classmethod
    def stage_protocol_inputs(cls, protocol: str | None, name: str, process) -> dict:
        """The plain inputs of stage ``name`` (run by ``process``) in the study protocol ``protocol``: the stage's
        own protocol file with the study's overrides of it (what the builder sets, as values)."""
        stage = dict(cls.get_protocol_inputs(protocol).get(name) or {})
        return process.get_protocol_inputs(stage.pop('protocol', None), stage)

    @classmethod
    def get_builder_from_protocol(cls, label_code: orm.AbstractCode, gnn_code: orm.AbstractCode,
                                  mace_code: orm.AbstractCode | None = None, protocol: str | None = None,
                                  overrides: dict | None = None, options: dict | None = None,
                                  mlip_code: orm.AbstractCode | None = None,
                                  evaluate_code: orm.AbstractCode | None = None):
        """Builder for the whole study from ``protocols/study.yaml`` (``demo``, ``fast``, ``paper``): each protocol
        names the protocol each stage runs (with overrides); the stages' builders come from their own
        ``get_builder_from_protocol`` (screen and thermal: their protocol inputs, the rest is supplied at run time).

        ``overrides`` may hold ``dataset`` (overrides of the dataset protocol, e.g. ``low.vasp.potential_family``),
        ``gnn``, ``mace``, ``screen`` and ``thermal``. ``label_code`` labels both fidelities and the parents'
        phonons: a capthermo-label code for the local engine (``demo``, ``fast``) or a VASP code (``paper``). The MD
        stages of the protocol (``mace.refine``, ``mace.md_check``) are set when ``mlip_code`` (capthermo-mlip) is
        given; ``evaluate_code`` (capthermo-mace) adds the evaluation of the final potential on the held-out set and the
        protocol's validation stage (the teacher on frames of the thermal MD).
        """
        inputs = cls.get_protocol_inputs(protocol, overrides)
        stages = ('dataset', 'gnn', 'mace', 'screen', 'thermal', 'validation', 'ensemble')
        unknown = set(inputs) - set(stages)
        if unknown:
            raise ValueError(f'unknown inputs in protocol or overrides: {sorted(unknown)}; a study takes '
                             f'{", ".join(stages)}, each with its own keys (e.g. dataset.prototype.a_host, '
                             'dataset.seed, thermal.temperatures)')
        builder = cls.get_builder()
        if inputs.get('ensemble') is not None:
            builder.ensemble = orm.Dict(inputs['ensemble'])

        def stage_inputs(name: str, process, *codes, **kwargs) -> dict:
            """The inputs of stage ``name`` from its own builder; its errors name the stage."""
            stage = dict(inputs.get(name) or {})
            try:
                return process.get_builder_from_protocol(*codes, protocol=stage.pop('protocol', None),
                                                         overrides=stage, options=options, **kwargs)._inputs(prune=True)
            except ValueError as exception:
                raise ValueError(f'{name}: {exception}') from exception

        builder.dataset = stage_inputs('dataset', PhononInformedDatasetWorkChain, label_code)
        builder.gnn = stage_inputs('gnn', GnnTwoStageWorkChain, gnn_code)
        mlip_code = inputs['mace'].get('mlip_code', mlip_code)
        if inputs['mace'].get('code', mace_code) is not None:
            mace = stage_inputs('mace', MlipPotentialWorkChain, mace_code, mlip_code=mlip_code,
                                evaluate_code=evaluate_code)
            builder.mace = {key: value for key, value in mace.items() if key not in MACE_SUPPLIED}
        for name, process in (('screen', SolidSolutionScreenWorkChain), ('thermal', ThermalGapWorkChain)):
            if inputs.get(name) is None:
                continue
            stage = dict(inputs[name])
            code_key = 'code' if name == 'screen' else 'mlip_code'
            code = stage.pop(code_key, mlip_code)
            if code is None:
                raise ValueError(f'the {name} stage of the protocol needs mlip_code (a capthermo-mlip code)')
            stage_inputs = process.get_protocol_inputs(stage.pop('protocol', None), stage)
            namespace = builder[name]
            for key, node in process.protocol_nodes(stage_inputs, exclude=('prototype', 'supercell')).items():
                namespace[key] = node  # the prototype and supercell are the dataset's
            namespace[code_key] = load_code(code)
            for key in ('options', 'phonon_options') if name == 'screen' else ('options', 'md_options'):
                set_options(namespace, key, options, stage_inputs.get(key))
        if inputs.get('validation') is not None and 'evaluate_code' in builder.mace:
            stage = dict(inputs['validation'])
            stage_inputs = ThermalValidationWorkChain.get_protocol_inputs(stage.pop('protocol', None), stage)
            for key, node in ThermalValidationWorkChain.protocol_nodes(stage_inputs).items():
                builder.validation[key] = node
        skip = tuple(f'{name}.protocol' for name in ('dataset', 'gnn', 'mace', 'screen', 'thermal', 'validation'))
        missing = unlanded_overrides(builder, overrides or {}, skip=skip)
        if missing:
            raise ValueError(f'overrides that no input of the study takes: {missing}')
        return builder

