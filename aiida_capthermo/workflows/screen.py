"""``SolidSolutionScreenWorkChain``: enumerate the inequivalent configurations per composition, relax them in batched
jobs, rank them, and check the vibrational stability of the lowest at 0 K and at finite temperature.

For each composition x of the substituted sublattice of the parent's supercell (the halide sites of the cubic A3BX
preset, or any parent's host sites), a calcfunction enumerates the symmetry-inequivalent decorations (all classes
when there are at most ``max_configurations``, otherwise a seeded random sample of that many distinct classes) and
emits them as StructureData in Vegard's cell between the end members,
recording x and the class multiplicity. ``MlipScreenWorkChain`` (a restart workchain around ``MlipScreenCalcJob``:
walltime -> relax the rest, out of memory -> smaller batches) relaxes them ``batch_size`` per job in one batched
simulation each; a calcfunction ranks them by energy per atom and gives Boltzmann-weighted configurational averages
from the multiplicities. With ``rerank`` the ``rerank`` lowest of each composition are then labelled by ``engine``
(the potential's teacher, ``BatchLabelWorkChain``) and ranked again by its energy (:func:`rerank_configurations`):
which configuration is the ground state is then the teacher's answer on the potential's relaxed cells, not the
potential's, whose errors of a few meV/atom reorder configurations that close. The ``keep`` lowest of every
composition get harmonic phonons (one ``MlipPhononsCalcJob``), and those with imaginary modes get finite-temperature
phonons from MD at ``temperatures`` (a second one): whether the 0 K instability is dynamically stabilised (the
paper's Figure 6).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from aiida import orm
from aiida.engine import ProcessHandlerReport, ToContext, WorkChain, calcfunction, if_, process_handler

from aiida_capthermo.calculations.base import code_validator, job_options, pydantic_error, validate_options
from aiida_capthermo.calculations.mlip import MlipPhononsCalcJob, MlipScreenCalcJob, validate_mace_model
from aiida_capthermo.core.solid_solution import MAX_SITES
from aiida_capthermo.data.dataset import DatasetData
from aiida_capthermo.data.model import ModelData
from aiida_capthermo.data.structures import set_structure_metadata
from aiida_capthermo.exit_codes import EXIT_CODES
from aiida_capthermo.workflows.base import CapthermoBaseRestartWorkChain
from aiida_capthermo.workflows.batch_label import BatchLabelWorkChain
from aiida_capthermo.workflows.engines import engine_namespace
from aiida_capthermo.workflows.functions import build_end_members
from aiida_capthermo.workflows.protocols import ProtocolMixin, set_options
from aiida_capthermo.workflows.report import figure_nodes, pyplot, styled
from aiida_capthermo.workflows.validation import (
    compositions_error,
    end_member_atoms,
    prototype_error,
    supercell_error,
    supplied_by_parent,
)

__all__ = ['SolidSolutionScreenWorkChain', 'MlipScreenWorkChain', 'enumerate_structures', 'rank_configurations',
           'rerank_configurations', 'merge_screen_results', 'phonon_summary', 'composition_key']

MULTIPLICITY_ATTRIBUTE = 'capthermo_multiplicity'


def composition_key(x: float) -> str:
    """Link label of composition ``x``: ``x_0p250`` for 0.25."""
    return 'x_' + f'{x:.3f}'.replace('.', 'p')


@calcfunction
def enumerate_structures(settings: orm.Dict, host_parent: orm.StructureData, guest_parent: orm.StructureData) -> dict:
    """Inequivalent decorations of the host sublattice of the supercell at composition ``settings['x']``.

    ``settings``: ``host``, ``guest``, ``supercell`` [3], ``x``, ``max_configurations``, ``seed``. The symmetry is
    that of the host parent's supercell (spglib). The supercell's cell and fractional coordinates are Vegard's
    interpolation at x between the end members ``host_parent`` and ``guest_parent``
    (:func:`aiida_capthermo.core.structures.vegard_structure`), then the guest occupies the class representative's
    sites. Outputs: ``c000``... StructureData (attributes x, origin ``screen``, multiplicity) and ``configurations``
    (Dict: per key the occupied site indices, multiplicity; plus totals and the cell).
    """
    import math

    from aiida_capthermo.core.solid_solution import (
        count_inequivalent,
        enumerate_configurations,
        guest_count,
        site_permutations,
    )
    from aiida_capthermo.core.structures import sublattice_indices, substitute, vegard_structure

    s = settings.get_dict()
    repeats = tuple(int(n) for n in s['supercell'])
    supercell = host_parent.get_ase().repeat(repeats)
    sites = sublattice_indices(supercell, s['host'])
    n_sites = len(sites)
    n_guest = guest_count(s['x'], n_sites)
    permutations = site_permutations(supercell, sites)
    n_classes = count_inequivalent(permutations, n_guest)
    configurations = enumerate_configurations(permutations, n_guest, max_configurations=s['max_configurations'],
                                              rng=s['seed'])
    scaled = vegard_structure(supercell, guest_parent.get_ase().repeat(repeats), n_guest / n_sites)
    outputs, table = {}, {}
    for index, configuration in enumerate(configurations):
        key = f'c{index:03d}'
        atoms = substitute(scaled, sites, configuration.occupation_mask(), s['guest'])
        structure = set_structure_metadata(orm.StructureData(ase=atoms), x=configuration.x, origin='screen')
        structure.base.attributes.set(MULTIPLICITY_ATTRIBUTE, configuration.multiplicity)
        outputs[key] = structure
        table[key] = {'occupied_sites': [int(sites[i]) for i in configuration.occupied],
                      'multiplicity': configuration.multiplicity}
    outputs['configurations'] = orm.Dict({
        'x': n_guest / n_sites, 'n_sites': n_sites, 'n_guest': n_guest, 'n_classes': n_classes,
        'n_arrangements': math.comb(n_sites, n_guest), 'n_permutations': int(len(permutations)),
        'sampled': len(configurations) < n_classes, 'cell': scaled.cell.array.tolist(), 'configurations': table,
    })
    return outputs


@calcfunction
def merge_screen_results(**results: orm.Dict) -> orm.Dict:
    """The per-structure records of several screen jobs (restarts of one batch) as one Dict."""
    merged = {}
    for key in sorted(results):
        merged.update(results[key].get_dict())
    return orm.Dict(merged)


def boltzmann_averages(per_atom: np.ndarray, per_cell: np.ndarray, multiplicity: np.ndarray,
                       temperatures) -> dict:
    """Per temperature (K): the class probabilities ``g_i exp(-(E_i - E_min) / k_B T) / Z`` (E per cell, in the
    order given), the average energy per atom and the probability of the first (lowest) class
    (``core.solid_solution.class_probabilities`` and ``configurational_average``)."""
    from aiida_capthermo.core.solid_solution import class_probabilities, configurational_average

    averages = {}
    for temperature in temperatures:
        probability = class_probabilities(per_cell, multiplicity, temperature)
        averages[f'T{temperature:.0f}'] = {
            'temperature': float(temperature), 'probability': probability.tolist(),
            'energy_per_atom': configurational_average(per_atom, per_cell, multiplicity, temperature),
            'probability_lowest': float(probability[0])}
    return averages


@calcfunction
def rank_configurations(configurations: orm.Dict, temperatures: orm.List, **results: orm.Dict) -> orm.Dict:
    """Rank the relaxed configurations of one composition by MLIP energy per atom (lowest first), with
    Boltzmann-weighted configurational averages at ``temperatures``.

    ``results``: the per-structure records of the screen jobs of this composition. The probability of class i at T
    is ``g_i exp(-(E_i - E_min) / k_B T) / Z`` with g_i its multiplicity and E_i its energy per cell; reported per T:
    the probabilities (ranking order), the average energy per atom, and the probability of the lowest class. When
    the classes were sampled (``configurations['sampled']``) the averages cover the sample only. The statistics are
    ``core.solid_solution.class_probabilities`` and ``configurational_average``.
    """
    table = configurations.get_dict()['configurations']
    records = {}
    for key in sorted(results):
        records.update(results[key].get_dict())
    relaxed = sorted((key for key in records if 'energy_per_atom' in records[key]),
                     key=lambda key: records[key]['energy_per_atom'])
    lowest = records[relaxed[0]]['energy_per_atom']
    per_atom = np.array([records[k]['energy_per_atom'] for k in relaxed])
    per_cell = np.array([records[k]['energy'] for k in relaxed])
    multiplicity = np.array([table[k]['multiplicity'] for k in relaxed], dtype=float)
    boltzmann = boltzmann_averages(per_atom, per_cell, multiplicity, temperatures.get_list())
    return orm.Dict({
        'keys': relaxed,
        'energy_per_atom': per_atom.tolist(),
        'relative_energy_per_atom': (per_atom - lowest).tolist(),
        'multiplicity': [int(m) for m in multiplicity],
        'converged': [bool(records[k]['converged']) for k in relaxed],
        'steps': [int(records[k]['steps']) for k in relaxed],
        'failed': sorted(k for k in records if 'energy_per_atom' not in records[k]),
        'missing': sorted(set(table) - set(records)),
        'lowest': relaxed[0],
        'boltzmann': boltzmann,
        'sampled': bool(configurations['sampled']),
        'units': {'energy_per_atom': 'eV/atom'},
    })


@calcfunction
def rerank_configurations(ranking: orm.Dict, labels: DatasetData, settings: orm.Dict) -> orm.Dict:
    """The ranking of one composition by the engine's energies of its relaxed configurations.

    ``ranking``: :func:`rank_configurations`' (the potential's); ``labels``: the engine's labels (energy, eV per
    cell) of some of its relaxed structures; ``settings['names']``: the configuration of each labelled structure, by
    the structure's uuid; ``settings['temperatures']``: K of the Boltzmann averages.

    The configurations with an engine energy are ranked by it (energy per atom, lowest first) and the Boltzmann
    probabilities are recomputed over them with the engine's energies; ``potential_energy_per_atom`` and
    ``potential_relative_energy_per_atom`` (relative to the potential's lowest of them) keep the potential's numbers
    beside. ``not_reranked``: the potential's other configurations (beyond those labelled, or whose label failed),
    which the engine ranking leaves out. ``potential_lowest``: the potential's ground state; ``ranked_by``:
    ``engine``. The rest as in :func:`rank_configurations`.
    """
    old = ranking.get_dict()
    names = settings['names']
    labelled = labels.get_labelled_set()
    engine = {}
    for index, uuid in enumerate(labelled.structure_uuid):
        if uuid in names and np.isfinite(labelled.energy[index]):
            engine[names[uuid]] = (float(labelled.energy[index]), int(labelled.n_atoms[index]))
    if not engine:
        raise ValueError('no configuration of the ranking has an engine energy')
    position = {key: i for i, key in enumerate(old['keys'])}
    keys = sorted(engine, key=lambda key: engine[key][0] / engine[key][1])
    per_cell = np.array([engine[key][0] for key in keys])
    per_atom = np.array([engine[key][0] / engine[key][1] for key in keys])
    potential = np.array([old['energy_per_atom'][position[key]] for key in keys])
    multiplicity = np.array([old['multiplicity'][position[key]] for key in keys], dtype=float)
    boltzmann = boltzmann_averages(per_atom, per_cell, multiplicity, settings['temperatures'])
    return orm.Dict({
        **old,
        'keys': keys,
        'energy_per_atom': per_atom.tolist(),
        'relative_energy_per_atom': (per_atom - per_atom[0]).tolist(),
        'potential_energy_per_atom': potential.tolist(),
        'potential_relative_energy_per_atom': (potential - potential.min()).tolist(),
        'multiplicity': [int(m) for m in multiplicity],
        'converged': [old['converged'][position[key]] for key in keys],
        'steps': [old['steps'][position[key]] for key in keys],
        'not_reranked': [key for key in old['keys'] if key not in engine],
        'lowest': keys[0],
        'potential_lowest': old['lowest'],
        'ranked_by': 'engine',
        'boltzmann': boltzmann,
        'units': {'energy_per_atom': 'eV/atom', 'potential_energy_per_atom': 'eV/atom'},
    })


@calcfunction
def phonon_summary(key: orm.Str, harmonic: orm.Dict, bands: orm.BandsData, finite: orm.Dict | None = None,
                   **renormalised: orm.BandsData) -> dict:
    """One structure's vibrational stability: ``summary`` (Dict), ``plot`` (PNG, the paper's Figure 6b-c: see
    :func:`phonon_figure`) and ``plot_pdf``.

    ``key``: the structure's key in the results of the harmonic phonons job (``harmonic``) and of the
    finite-temperature job (``finite``, optional); ``bands``: its harmonic bands; ``renormalised``: its renormalised
    BandsData by temperature key (``T200``).
    """
    record = harmonic[key.value]
    summary = {'n_imaginary': record['n_imaginary'], 'min_frequency': record['min_frequency'],
               'commensurate_points': record['commensurate_points'],
               'commensurate_frequencies': record['commensurate_frequencies'], 'stable_0K': record['n_imaginary'] == 0,
               'temperatures': {}}
    for temperature, result in (finite[key.value]['temperatures'] if finite is not None else {}).items():
        summary['temperatures'][f'T{float(temperature):.0f}'] = {
            name: result.get(name) for name in ('broke', 'stabilised', 'unresolved', 'trapped', 'imaginary_harmonic',
                                                'imaginary_renormalised', 'equipartition', 'mean_temperature',
                                                'resolution', 'commensurate_frequencies', 'harmonic')}
    figure = phonon_figure(key.value, bands, {name: (renormalised[name], summary['temperatures'].get(name) or {})
                                              for name in renormalised},
                           np.asarray(record['commensurate_points']))
    for result in summary['temperatures'].values():
        result.pop('harmonic', None)  # drawn, not kept: the finite-temperature job's results have it
    png, pdf = figure_nodes(figure, 'phonon_bands')
    return {'summary': orm.Dict(summary), 'plot': png, 'plot_pdf': pdf}


@styled
def phonon_figure(key: str, bands: orm.BandsData, renormalised: dict, points: np.ndarray):
    """A structure's phonons: one band panel per temperature, the renormalised bands over the 0 K harmonic ones
    (grey), or the harmonic bands alone when no temperature was run; on the right the total DOS of each (on the
    job's q mesh, where the bands carry it). The x axis is the wave-vector distance with labelled breaks
    (:func:`band_path_axis`). Modes the MD did not resolve are marked in the DOS panel at their harmonic
    frequencies (crosses) and counted in their panel. The title names the structure's formula, x and configuration.

    ``renormalised``: temperature key (``T200``) -> (BandsData, that temperature's results); ``points``: the
    commensurate q points whose renormalised frequencies the MD measured.
    """
    plt = pyplot()
    ordered = sorted(renormalised, key=lambda name: float(name[1:]))
    has_dos = 'dos' in bands.get_arraynames()
    columns = max(len(ordered), 1)
    ratios = [1.0] * columns + ([0.35] if has_dos else [])
    figure, axes = plt.subplots(1, len(ratios), figsize=(4.0 * columns + 1.6 * has_dos, 3.9), sharey=True,
                                squeeze=False, gridspec_kw={'width_ratios': ratios})
    axes = axes[0]
    distance, ticks, segments = band_path_axis(bands)
    harmonic = bands.get_bands()
    colours = [tuple(colour) for colour in plt.get_cmap('autumn')(np.linspace(0.0, 0.6, max(len(ordered), 1)))]
    for index, axis in enumerate(axes[:columns]):
        overlay = bool(ordered)
        for number, part in enumerate(segments):
            _branches(axis, distance[part], harmonic[part], '0 K harmonic' if number == 0 else None,
                      color='0.6' if overlay else 'tab:blue', lw=0.7)
        title = '0 K (harmonic)'
        if overlay:
            name = ordered[index]
            node, result = renormalised[name]
            title = _renormalised_panel(axis, node, result, points, f'{name[1:]} K renormalised over 0 K harmonic',
                                        distance, segments, colours[index])
        axis.axhline(0.0, color='k', lw=0.5)
        axis.set_xticks([position for position, _ in ticks], [label for _, label in ticks])
        for position, _ in ticks:
            axis.axvline(position, color='0.85', lw=0.5)
        axis.set_xlim(distance[0], distance[-1])
        axis.set_xlabel('wave vector along the path (1/Å)')
        axis.set_title(title, fontsize=8)
        axis.legend(fontsize=6, loc='upper right')
    axes[0].set_ylabel('frequency (THz; < 0: imaginary)')
    if has_dos:
        _dos_panel(axes[-1], bands, [(name, *renormalised[name], colour) for name, colour in zip(ordered, colours)])
    formula, x = bands.base.attributes.get('formula', None), bands.base.attributes.get('x', None)
    composition, _, configuration = key.rpartition('_')
    what = f'{formula}, x = {x:.3f}' if formula is not None and x is not None else composition or key
    figure.suptitle(f'phonons of {what}, configuration {configuration}' if configuration.startswith('c')
                    else f'phonons of {what} ({key})', fontsize=9)
    return figure


def _branches(axis, distance: np.ndarray, frequencies: np.ndarray, label: str | None, **style) -> None:
    """One line per branch (column of ``frequencies``), the legend's ``label`` on the first only."""
    for number, line in enumerate(axis.plot(distance, frequencies, **style)):
        line.set_label(label if number == 0 and label else '_nolegend_')


def _dos_panel(axis, bands: orm.BandsData, renormalised: list[tuple]) -> None:
    """The total DOS (states/THz per cell) of the harmonic bands and of each temperature's renormalised force
    constants (its imaginary part, which only the interpolation makes, not drawn); the harmonic frequencies of the
    modes the MD did not resolve as crosses at the left edge."""
    axis.plot(bands.get_array('dos'), bands.get_array('dos_frequency'), color='0.4', lw=0.8, label='0 K')
    for name, node, result, colour in renormalised:
        if 'dos' in node.get_arraynames():
            frequency, dos = node.get_array('dos_frequency'), node.get_array('dos')
            axis.plot(np.where(frequency >= 0.0, dos, np.nan), frequency, color=colour, lw=0.8, label=f'{name[1:]} K')
        unresolved = [result['harmonic'][mode] for mode in result.get('unresolved') or []
                      if result.get('harmonic') is not None]
        if unresolved:
            axis.plot(np.zeros(len(unresolved)), unresolved, 'x', color=colour, ms=5, clip_on=False,
                      label=f'unresolved at {name[1:]} K')
    axis.axhline(0.0, color='k', lw=0.5)
    axis.set_xlim(left=0.0)
    axis.set_xlabel('DOS (1/THz)')
    axis.set_title('total DOS', fontsize=8)
    axis.legend(fontsize=6, loc='upper right')


def band_path_axis(node: orm.BandsData) -> tuple[np.ndarray, list[tuple[float, str]], list[slice]]:
    """The x axis of a band structure along its path: the distance of every point along the path (1/Å, with the
    2π of the reciprocal cell), the labelled points as ticks (``X|M`` where one segment ends at X and the next
    starts at M: no distance is added across such a break) and the continuous segments (slices) to draw one line
    each, so that no line joins the two sides of a break."""
    kpoints = node.get_kpoints(cartesian=True)  # [n, 3] 1/Å
    steps = np.linalg.norm(np.diff(kpoints, axis=0), axis=1)  # [n - 1]
    names = dict(node.labels or [])
    breaks = [index for index in range(len(kpoints) - 1)
              if index in names and index + 1 in names and names[index] != names[index + 1]]
    steps[breaks] = 0.0
    distance = np.concatenate([[0.0], np.cumsum(steps)])
    ticks: list[tuple[float, str]] = []
    for index, name in sorted(names.items()):
        if index - 1 in breaks or names.get(index - 1) == name:
            continue  # the start of a segment after a break, or a point repeated, shares the tick before it
        ticks.append((float(distance[index]), f'{name}|{names[index + 1]}' if index in breaks else name))
    bounds = [0, *[index + 1 for index in breaks], len(kpoints)]
    return distance, ticks, [slice(start, stop) for start, stop in itertools.pairwise(bounds)]


def _renormalised_panel(axis, node: orm.BandsData, result: dict, points: np.ndarray, title: str,
                        distance: np.ndarray, segments: list[slice], colour='tab:red') -> str:
    """Draw renormalised bands on ``axis``; return the panel's title.

    The MD resolves the commensurate q ``points`` only: their frequencies (``result``) are drawn as dots where the
    path passes them. Between them the bands are phonopy's interpolation of the renormalised force constants, a
    thin line, and none of it below zero. An interpolation that dips there is not an imaginary branch the MD has
    seen. Modes the MD did not resolve (no peak, or trapped in a well) are counted in the panel.
    """
    frequencies = np.where(node.get_bands() >= 0.0, node.get_bands(), np.nan)
    for number, part in enumerate(segments):
        _branches(axis, distance[part], frequencies[part], 'renormalised (interpolated)' if number == 0 else None,
                  color=colour, lw=0.7, alpha=0.8)
    exact = np.asarray(result.get('commensurate_frequencies') or [])
    kpoints = node.get_kpoints()
    first = True
    for q, values in zip(points, exact):
        offset = kpoints - q
        for index in np.flatnonzero(np.all(np.abs(offset - np.round(offset)) < 1e-6, axis=1)):
            axis.plot(np.full(len(values), distance[index]), values, '.', color='darkred', ms=3,
                      label='measured by the MD' if first else None)
            first = False
    unresolved, trapped = result.get('unresolved') or [], result.get('trapped') or []
    if unresolved:
        axis.text(0.02, 0.02, f'{len(unresolved)} modes unresolved\n({len(trapped)} trapped in a well)',
                  transform=axis.transAxes, fontsize=7, va='bottom')
    return title if result.get('stabilised', True) else f'{title}: not stabilised'


def validate_inputs(inputs, ports) -> str | None:
    """Prototype keys and species, supercell, the end members (parents), compositions on the sublattice grid, the
    settings of the relaxation and phonon jobs (through their pydantic models), temperatures."""
    from aiida_capthermo.ml.settings import PhononConfig, ScreenConfig

    if supplied_by_parent(ports, 'prototype', 'supercell'):
        return None

    prototype = inputs['prototype'].get_dict()
    supercell = inputs['supercell'].get_list()
    error = prototype_error(prototype) or supercell_error(supercell)
    if error:
        return error
    try:
        host, _ = end_member_atoms(prototype, inputs.get('parents', {}))
    except ValueError as exception:
        return str(exception)
    sites_per_cell = host.get_chemical_symbols().count(prototype['host'])
    compositions = inputs['compositions'].get_list()
    error = compositions_error(compositions, supercell, sites_per_cell)
    if error:
        return error
    keys = [composition_key(x) for x in compositions]
    if len(set(keys)) != len(keys):
        return f'compositions repeat: {compositions}'
    for name in ('max_configurations', 'batch_size', 'keep', 'max_iterations', 'label_batch_size'):
        if name in inputs and inputs[name].value < 1:
            return f'{name} must be a positive integer, got {inputs[name].value}'
    rerank = inputs['rerank'].value if 'rerank' in inputs else 0
    if rerank < 0:
        return f'rerank must be 0 (the potential ranks) or a positive integer, got {rerank}'
    if rerank and 'code' not in inputs.get('engine', {}) and not supplied_by_parent(ports, 'engine'):
        return 'rerank labels the relaxed configurations: it needs the engine (engine.code)'
    keep = inputs['keep'].value if 'keep' in inputs else 1
    if 0 < rerank < keep:
        return f'rerank ({rerank}) must cover the kept configurations (keep = {keep})'
    sites = sites_per_cell * math.prod(supercell)
    if sites > MAX_SITES:
        return (f'the supercell {supercell} has {sites} sites on the disordered sublattice; the enumeration of '
                f'configurations handles at most {MAX_SITES}: use a smaller supercell')
    if 'parameters' in inputs:
        error = pydantic_error(ScreenConfig, inputs['parameters'].get_dict(), 'parameters (ScreenConfig)')
        if error:
            return error
    phonons = inputs['phonons'].get_dict() if 'phonons' in inputs else {}
    if 'temperatures' in phonons:
        return 'give the finite-temperature phonon temperatures in `temperatures`, not in `phonons`'
    temperatures = inputs['temperatures'].get_list()
    error = pydantic_error(PhononConfig, {**phonons, 'temperatures': temperatures}, 'phonons with temperatures')
    if error:
        return error
    for temperature in inputs['boltzmann_temperatures'].get_list():
        if not isinstance(temperature, (int, float)) or temperature < 0:
            return f'boltzmann_temperatures must be numbers >= 0 K, got {temperature!r}'
    return None


class MlipScreenWorkChain(CapthermoBaseRestartWorkChain):
    """Relax a batch of structures with ``MlipScreenCalcJob``, restarting what a failed job did not finish.

    - out of walltime (the script's own time limit or the scheduler's): the structures already relaxed are kept
      and the rest are relaxed by the next job; a job that relaxed none gets twice the walltime;
    - out of memory: the same structures with half the batch size (``max_batch``), down to one.

    Outputs: every relaxed structure (``relaxed``) and one ``results`` Dict of all jobs.
    """

    _process_class = MlipScreenCalcJob

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(MlipScreenCalcJob, namespace='screen')
        spec.input('max_iterations', valid_type=orm.Int, default=lambda: orm.Int(10),
                   help='Maximum number of jobs (each restart relaxes what the previous ones did not).')
        spec.output_namespace('relaxed', valid_type=orm.StructureData, dynamic=True,
                              help='Relaxed structures by input key.')
        spec.output('results', valid_type=orm.Dict,
                    help='Per input key: the record of the job that relaxed it (energies, converged, steps, ...).')
        spec.exit_code(EXIT_CODES['ERROR_BATCH_SIZE_ONE_OUT_OF_MEMORY'], 'ERROR_BATCH_SIZE_ONE_OUT_OF_MEMORY',
                       message='A batch of one structure ran out of memory: the model or the cell is too large.')

    def setup(self):
        super().setup()
        self.ctx.inputs = self.exposed_inputs(MlipScreenCalcJob, 'screen')
        self.ctx.done = []  # pks of the jobs whose relaxed structures and results are kept

    @process_handler(priority=600, exit_codes=[MlipScreenCalcJob.exit_codes.ERROR_OUT_OF_WALLTIME,
                                               MlipScreenCalcJob.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME])
    def handle_out_of_walltime(self, node):
        """Relax the structures not reached; with no progress at all, double the walltime."""
        reached = set(node.outputs.results.get_dict()) if 'results' in node.outputs else set()
        if reached:
            self.ctx.done.append(node.pk)
            self.ctx.inputs['structures'] = {key: value for key, value in self.ctx.inputs['structures'].items()
                                             if key not in reached}
            self.report_error_handled(node, f'{len(reached)} structures relaxed before the time limit: relaxing '
                                      f'the remaining {len(self.ctx.inputs["structures"])}')
            return ProcessHandlerReport(True)
        walltime = self.increase_walltime(node)
        self.report_error_handled(node, f'no structure relaxed in time: resubmitting with max_wallclock_seconds '
                                  f'{walltime}')
        return ProcessHandlerReport(True)

    @process_handler(priority=500, exit_codes=[MlipScreenCalcJob.exit_codes.ERROR_OUT_OF_MEMORY,
                                               MlipScreenCalcJob.exit_codes.ERROR_SCHEDULER_OUT_OF_MEMORY])
    def handle_out_of_memory(self, node):
        """Halve the batch size (the structures relaxed together), down to one."""
        parameters = self.ctx.inputs['parameters'].get_dict() if 'parameters' in self.ctx.inputs else {}
        batch = parameters.get('max_batch')  # 'auto' or unset: the job tried all the structures it had, at most
        batch = batch if isinstance(batch, int) else len(self.ctx.inputs['structures'])
        if batch <= 1:
            return ProcessHandlerReport(True, self.exit_codes.ERROR_BATCH_SIZE_ONE_OUT_OF_MEMORY)
        parameters['max_batch'] = batch // 2
        self.ctx.inputs['parameters'] = orm.Dict(parameters)
        self.report_error_handled(node, f'out of memory with {batch} structures per batch: retrying with '
                                  f'{parameters["max_batch"]}')
        return ProcessHandlerReport(True)

    def results(self):
        node = self.ctx.children[self.ctx.iteration - 1]
        if node.is_finished_ok:
            self.ctx.done.append(node.pk)
        nodes = [orm.load_node(pk) for pk in self.ctx.done]
        for done in nodes:
            for key, structure in done.outputs.relaxed.items():
                self.out(f'relaxed.{key}', structure)
        if len(nodes) == 1:
            self.out('results', nodes[0].outputs.results)
        else:
            self.out('results', merge_screen_results(**{f'job_{i}': n.outputs.results for i, n in enumerate(nodes)}))
        return None


class SolidSolutionScreenWorkChain(ProtocolMixin, WorkChain):
    """Screen the symmetry-inequivalent configurations of a cubic A3B(X,Y) solid solution with a MACE potential:
    relax (batched), rank, Boltzmann averages, harmonic phonons of the lowest, finite-temperature phonons of those
    unstable at 0 K."""

    _protocol_file = 'screen'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('model', valid_type=ModelData, validator=validate_mace_model,
                   help='The MACE potential (ModelData of kind "mace"), e.g. the fine-tuned model.')
        spec.input('prototype', valid_type=orm.Dict,
                   help='The solid solution: host (x=0) and guest (x=1) species of the substituted sublattice. Alone, '
                        'they name the sublattice of parents.host; with a (face centres), b (body centre), a_host and '
                        'a_guest (Å) they are the cubic A3BX anti-perovskite preset, built for you.')
        spec.input_namespace('parents', valid_type=orm.StructureData, required=False,
                             help='The end members: `host` (x=0; required without the preset) and optionally `guest` '
                                  '(x=1, same atoms and order; default: substituted from host). The cell of each '
                                  "composition is Vegard's interpolation between them (e.g. the dataset's relaxed "
                                  'parents).')
        spec.input('supercell', valid_type=orm.List, default=lambda: orm.List([2, 2, 2]),
                   help='Diagonal supercell of the primitive cell, e.g. [2, 2, 2] (8 halide sites, 40 atoms).')
        spec.input('compositions', valid_type=orm.List,
                   help='Guest fractions x on the halide sublattice, multiples of 1/n_sites.')
        spec.input('max_configurations', valid_type=orm.Int, default=lambda: orm.Int(100),
                   help='All inequivalent classes when there are at most this many, else a seeded random sample.')
        spec.input('seed', valid_type=orm.Int, default=lambda: orm.Int(0), help='Seed of the class sampling.')
        spec.input('code', valid_type=orm.AbstractCode, validator=code_validator('capthermo.mlip_screen'),
                   help='The `capthermo-mlip` code.')
        spec.input('parameters', valid_type=orm.Dict, required=False,
                   help='Relaxation settings (ScreenConfig): fmax (eV/Å), max_steps, relax_cell, max_batch, device, '
                        'dtype, threads. Checked at submission.')
        spec.input('batch_size', valid_type=orm.Int, default=lambda: orm.Int(100),
                   help='Structures per relaxation job (each job relaxes them together in one batched simulation).')
        spec.input('keep', valid_type=orm.Int, default=lambda: orm.Int(1),
                   help='How many of the lowest configurations per composition get phonons.')
        spec.input('rerank', valid_type=orm.Int, default=lambda: orm.Int(0),
                   help='Label the `rerank` lowest relaxed configurations (by the potential) of every composition '
                        'that has more than one with `engine` and rank them by its energy: the ground state, the '
                        'kept configurations and the Boltzmann averages are then the engine\'s; 0: the potential '
                        'ranks.')
        engine_namespace(spec, 'engine', required=False,
                         help="The engine that ranks the relaxed configurations with `rerank` (the potential's "
                              'teacher: the dataset\'s low engine).')
        spec.input('label_batch_size', valid_type=orm.Int, default=lambda: orm.Int(20),
                   help='At most this many configurations per labelling job of `rerank`.')
        spec.input('phonons', valid_type=orm.Dict, required=False,
                   help='Phonon settings (PhononConfig without temperatures): supercell, displacement (Å), '
                        'imaginary_threshold (THz), MD length and friction of the finite-temperature phonons, ...')
        spec.input('temperatures', valid_type=orm.List, default=lambda: orm.List([200.0]),
                   help='Temperatures (K) of the finite-temperature phonons of the configurations with imaginary '
                        'modes at 0 K; empty: harmonic phonons only.')
        spec.input('boltzmann_temperatures', valid_type=orm.List, default=lambda: orm.List([300.0, 600.0]),
                   help='Temperatures (K) of the Boltzmann-weighted configurational averages of the ranking.')
        spec.input('max_iterations', valid_type=orm.Int, default=lambda: orm.Int(10),
                   help='Maximum number of jobs per relaxation batch (restarts after walltime or memory errors).')
        spec.input('options', valid_type=orm.Dict, required=False, validator=validate_options,
                   help='Scheduler options of the relaxation jobs (resources, max_wallclock_seconds, ...).')
        spec.input('phonon_options', valid_type=orm.Dict, required=False, validator=validate_options,
                   help='Scheduler options of the phonon jobs (e.g. a GPU queue); default: `options`.')
        spec.inputs.validator = validate_inputs
        spec.outline(cls.setup, cls.run_relaxations, cls.rank, if_(cls.should_rerank)(cls.run_rerank, cls.rerank),
                     cls.run_harmonic, cls.inspect_harmonic,
                     if_(cls.needs_finite_temperature)(cls.run_finite_temperature), cls.results)
        spec.output_namespace('compositions', dynamic=True,
                              help='Per composition (`x_0p250`): `lowest` relaxed StructureData, `ranking` Dict (with '
                                   'Boltzmann averages; with `rerank` the engine\'s, `ranked_by` engine, and the '
                                   'potential\'s energies beside), `configurations` Dict (classes, multiplicities, '
                                   'sampled or not), and per kept configuration (`c003`): `structure` (relaxed), '
                                   '`phonons` Dict (0 K stability; finite-T stabilisation), `bands` and '
                                   '`renormalised_bands.T200` BandsData, `phonon_plot` PNG.')
        spec.exit_code(EXIT_CODES['ERROR_SCREEN_FAILED'], 'ERROR_SCREEN_FAILED',
                       message='The relaxations of composition {x} failed in {batch}: {reason}.')
        spec.exit_code(EXIT_CODES['ERROR_PHONONS_FAILED'], 'ERROR_PHONONS_FAILED',
                       message='The harmonic phonon job failed with exit status {status}.')
        spec.exit_code(EXIT_CODES['ERROR_RERANK_FAILED'], 'ERROR_RERANK_FAILED',
                       message='The engine could not rank the relaxed configurations: {message}')
        spec.exit_code(EXIT_CODES['ERROR_FINITE_TEMPERATURE_FAILED'], 'ERROR_FINITE_TEMPERATURE_FAILED',
                       message='The finite-temperature phonon job failed with exit status {status}.')

    @classmethod
    def get_builder_from_protocol(cls, code: orm.AbstractCode, model: ModelData, protocol: str | None = None,
                                  overrides: dict | None = None, options: dict | None = None):
        """Builder with the protocol's compositions, relaxation and phonon settings (``demo``, ``fast``, ``paper``);
        ``overrides`` is merged into the protocol; ``options`` go to every job."""
        inputs = cls.get_protocol_inputs(protocol, overrides)
        builder = cls.get_builder()
        builder.code, builder.model = code, model
        for key, node in cls.protocol_nodes(inputs).items():
            builder[key] = node
        for key in ('options', 'phonon_options'):  # the protocol's (or overrides') options of a job kind win
            set_options(builder, key, options, inputs.get(key))
        return builder

    # ------------------------------------------------------------------ steps
    def _options(self, phonons: bool = False) -> dict:
        return job_options(self.inputs, *(('phonon_options', 'options') if phonons else ('options',)))

    def setup(self):
        """Enumerate the configurations of every composition (one calcfunction call each)."""
        prototype = self.inputs.prototype.get_dict()
        settings = {'host': prototype['host'], 'guest': prototype['guest'],
                    'supercell': self.inputs.supercell.get_list(),
                    'max_configurations': self.inputs.max_configurations.value, 'seed': self.inputs.seed.value}
        parents = build_end_members(self.inputs.prototype, **self.inputs.get('parents', {}))
        self.ctx.enumerated = {}
        for x in self.inputs.compositions.get_list():
            outputs = enumerate_structures(orm.Dict({**settings, 'x': float(x)}), parents['host'], parents['guest'])
            self.ctx.enumerated[composition_key(x)] = outputs
            table = outputs['configurations'].get_dict()
            self.report(f'x = {x}: {len(table["configurations"])} of {table["n_classes"]} inequivalent classes '
                        f'({table["n_arrangements"]} arrangements, {table["n_permutations"]} site permutations)')

    def run_relaxations(self):
        """One ``MlipScreenWorkChain`` per batch of ``batch_size`` structures of each composition."""
        size = self.inputs.batch_size.value
        futures, self.ctx.batches = {}, {}
        for key, outputs in self.ctx.enumerated.items():
            names = sorted(k for k in outputs if k != 'configurations')
            self.ctx.batches[key] = []
            for number, first in enumerate(range(0, len(names), size)):
                builder = MlipScreenWorkChain.get_builder()
                builder.screen.code = self.inputs.code
                builder.screen.model = self.inputs.model
                builder.screen.structures = {k: outputs[k] for k in names[first:first + size]}
                if 'parameters' in self.inputs:
                    builder.screen.parameters = self.inputs.parameters
                builder.screen.metadata.options = self._options()
                builder.max_iterations = self.inputs.max_iterations
                label = f'relax_{key}_{number}'
                builder.metadata.call_link_label = label
                futures[label] = self.submit(builder)
                self.ctx.batches[key].append(label)
        self.report(f'{len(futures)} relaxation jobs for {sum(len(o) - 1 for o in self.ctx.enumerated.values())} '
                    f'structures')
        return ToContext(**futures)

    def rank(self):
        """Rank each composition, keep its ``keep`` lowest configurations."""
        self.ctx.kept, self.ctx.rankings, self.ctx.relaxed = {}, {}, {}
        for key, enumerated in self.ctx.enumerated.items():
            results = {}
            for label in self.ctx.batches[key]:
                node = self.ctx[label]
                if not node.is_finished_ok:
                    jobs = [child for child in node.called if isinstance(child, orm.CalcJobNode)]
                    reason = (f'its last job {jobs[-1].process_label}<{jobs[-1].pk}> exited with status '
                              f'{jobs[-1].exit_status}: {jobs[-1].exit_message}' if jobs else 'no job ran')
                    return self.exit_codes.ERROR_SCREEN_FAILED.format(x=key, batch=label, reason=reason)
                results[label] = node.outputs.results
            ranking = rank_configurations(enumerated['configurations'], self.inputs.boltzmann_temperatures,
                                          **results)
            self.ctx.rankings[key] = ranking
            relaxed = {k: v for label in self.ctx.batches[key] for k, v in self.ctx[label].outputs.relaxed.items()}
            self.ctx.relaxed[key] = relaxed
            self.ctx.kept[key] = {k: relaxed[k] for k in ranking['keys'][:self.inputs.keep.value]}
            self.report(f'{key}: lowest {ranking["lowest"]} at {ranking["energy_per_atom"][0]:.5f} eV/atom of '
                        f'{len(ranking["keys"])} relaxed ({sum(ranking["converged"])} converged)')
        return None

    def _rerank_candidates(self) -> dict:
        """Per composition with more than one relaxed configuration, its ``rerank`` lowest by the potential."""
        number = self.inputs.rerank.value
        return {key: ranking['keys'][:number] for key, ranking in self.ctx.rankings.items()
                if number and len(ranking['keys']) > 1}

    def should_rerank(self) -> bool:
        return bool(self._rerank_candidates())

    def run_rerank(self):
        """Label the candidates of every composition with the engine, in one batch labelling."""
        structures = {f'{key}_{name}': self.ctx.relaxed[key][name]
                      for key, names in self._rerank_candidates().items() for name in names}
        self.report(f'the engine ranks {len(structures)} relaxed configurations')
        return ToContext(rerank_labels=self.submit(
            BatchLabelWorkChain, structures=structures, engine=dict(self.inputs.engine), fidelity=orm.Str('low'),
            batch_size=self.inputs.label_batch_size, attributes=orm.Dict({'subset': 'screen_rerank'}),
            metadata={'call_link_label': 'rerank_labels'}))

    def rerank(self):
        """The engine's ranking of each composition: its ground state and kept configurations."""
        node = self.ctx.rerank_labels
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_RERANK_FAILED.format(message=f'[{node.exit_status}] {node.exit_message}')
        temperatures = [float(t) for t in self.inputs.boltzmann_temperatures.get_list()]
        labelled = node.outputs.labels.get_labelled_set()
        energies = {uuid for uuid, energy in zip(labelled.structure_uuid, labelled.energy) if np.isfinite(energy)}
        for key, names in self._rerank_candidates().items():
            uuids = {self.ctx.relaxed[key][name].uuid: name for name in names}
            if not energies & set(uuids):
                return self.exit_codes.ERROR_RERANK_FAILED.format(
                    message=f'{key}: the engine gave no energy for any of {sorted(names)}')
            ranking = rerank_configurations(self.ctx.rankings[key], node.outputs.labels,
                                            orm.Dict({'names': uuids, 'temperatures': temperatures}))
            self.ctx.rankings[key] = ranking
            self.ctx.kept[key] = {k: self.ctx.relaxed[key][k] for k in ranking['keys'][:self.inputs.keep.value]}
            potential = dict(zip(ranking['keys'], ranking['potential_relative_energy_per_atom']))
            engine = dict(zip(ranking['keys'], ranking['relative_energy_per_atom']))
            order = ', '.join(f'{k} {1000 * engine[k]:.1f} ({1000 * potential[k]:.1f})' for k in ranking['keys'])
            self.report(f'{key}: the engine ranks {ranking["lowest"]} lowest; meV/atom above it (the potential\'s): '
                        f'{order}' + (f'; not labelled: {ranking["not_reranked"]}' if ranking['not_reranked'] else ''))
            if ranking['lowest'] != ranking['potential_lowest']:
                self.report(f'WARNING: {key}: the potential ranks {ranking["potential_lowest"]} lowest, the engine '
                            f'{ranking["lowest"]}; the ground state is the engine\'s')
        return None

    def _phonon_job(self, structures: dict, temperatures: list, label: str):
        builder = MlipPhononsCalcJob.get_builder()
        builder.code, builder.model = self.inputs.code, self.inputs.model
        builder.structures = structures
        phonons = self.inputs.phonons.get_dict() if 'phonons' in self.inputs else {}
        builder.parameters = orm.Dict({**phonons, 'temperatures': temperatures})
        builder.metadata.options = self._options(phonons=True)
        builder.metadata.call_link_label = label
        return self.submit(builder)

    def run_harmonic(self):
        """Harmonic phonons of every kept configuration (one job)."""
        structures = {f'{key}_{k}': v for key, kept in self.ctx.kept.items() for k, v in kept.items()}
        return ToContext(harmonic=self._phonon_job(structures, [], 'phonons_harmonic'))

    def inspect_harmonic(self):
        """Which kept configurations have imaginary modes at 0 K."""
        node = self.ctx.harmonic
        if 'results' not in node.outputs:
            return self.exit_codes.ERROR_PHONONS_FAILED.format(status=node.exit_status)
        results = node.outputs.results.get_dict()
        self.ctx.unstable = sorted(key for key, record in results.items() if record['n_imaginary'])
        for key, record in sorted(results.items()):
            self.report(f'{key}: {record["n_imaginary"]} imaginary modes at 0 K (lowest {record["min_frequency"]:.2f}'
                        f' THz)')
        return None

    def needs_finite_temperature(self) -> bool:
        return bool(self.ctx.unstable and self.inputs.temperatures.get_list())

    def run_finite_temperature(self):
        """Finite-temperature phonons of the configurations unstable at 0 K (one job)."""
        structures = {key: self.ctx.harmonic.inputs.structures[key] for key in self.ctx.unstable}
        temperatures = [float(t) for t in self.inputs.temperatures.get_list()]
        self.report(f'finite-temperature phonons of {self.ctx.unstable} at {temperatures} K')
        return ToContext(finite=self._phonon_job(structures, temperatures, 'phonons_finite_temperature'))

    def results(self):
        """Expose per composition the ranking, the lowest structure and the phonons of every kept configuration."""
        finite = self.ctx.get('finite')
        if finite is not None and 'results' not in finite.outputs:
            return self.exit_codes.ERROR_FINITE_TEMPERATURE_FAILED.format(status=finite.exit_status)
        harmonic = self.ctx.harmonic.outputs
        for key, enumerated in self.ctx.enumerated.items():
            ranking = self.ctx.rankings[key]
            self.out(f'compositions.{key}.lowest', self.ctx.kept[key][ranking['lowest']])
            self.out(f'compositions.{key}.ranking', ranking)
            self.out(f'compositions.{key}.configurations', enumerated['configurations'])
            for name in self.ctx.kept[key]:
                link = f'{key}_{name}'
                kwargs = {}
                if finite is not None and link in finite.outputs.results.get_dict():
                    kwargs['finite'] = finite.outputs.results
                    renormalised = finite.outputs.renormalised_bands if 'renormalised_bands' in finite.outputs else {}
                    kwargs.update({bands.split('_')[-1]: node for bands, node in renormalised.items()
                                   if bands.startswith(f'{link}_T')})
                summary = phonon_summary(orm.Str(link), harmonic.results, harmonic.bands[link], **kwargs)
                prefix = f'compositions.{key}.{name}'
                self.out(f'{prefix}.structure', self.ctx.kept[key][name])
                self.out(f'{prefix}.phonons', summary['summary'])
                self.out(f'{prefix}.bands', harmonic.bands[link])
                self.out(f'{prefix}.phonon_plot', summary['plot'])
                for temperature, node in kwargs.items():
                    if temperature.startswith('T'):
                        self.out(f'{prefix}.renormalised_bands.{temperature}', node)
                stabilised = {t: r['stabilised'] for t, r in summary['summary']['temperatures'].items()}
                self.report(f'{link}: stable at 0 K: {summary["summary"]["stable_0K"]}; stabilised at {stabilised}')
        if finite is not None and not finite.is_finished_ok:
            return self.exit_codes.ERROR_FINITE_TEMPERATURE_FAILED.format(status=finite.exit_status)
        return None
