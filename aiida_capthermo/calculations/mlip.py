"""CalcJobs of the ``capthermo-mlip`` tasks: batched relaxation (screen), phonons (harmonic and finite-temperature),
Langevin MD (stability check, batched thermal sampling) and frozen Γ modes, each with a MACE model node."""

from __future__ import annotations

import io
import json
from typing import ClassVar

from aiida import engine, orm
from aiida.common import datastructures

from aiida_capthermo.calculations.base import CapthermoCalcJob, pydantic_error
from aiida_capthermo.data.dataset import DatasetData
from aiida_capthermo.data.model import ModelData
from aiida_capthermo.exit_codes import EXIT_CODES
from aiida_capthermo.ml.settings import (
    MdConfig,
    ModelRunSettings,
    ModesConfig,
    PhononConfig,
    ScreenConfig,
    ThermalMdConfig,
)

__all__ = ['MlipCalcJob', 'MlipScreenCalcJob', 'MlipPhononsCalcJob', 'MlipMdCalcJob', 'MlipThermalCalcJob',
           'MlipModesCalcJob']


def validate_mace_model(model: ModelData, _) -> str | None:
    """The model must be a MACE potential node (``kind == 'mace'``) with its main file in the repository."""
    if model.kind != 'mace':
        return f'the model node has kind {model.kind!r}; the screen needs a MACE potential (kind "mace")'
    if model.main_file not in model.base.repository.list_object_names():
        return f'the model node lacks its main file {model.main_file!r}'
    return model.integrity_error()


def validate_structures(structures, _) -> str | None:
    """At least one structure."""
    if not structures:
        return 'give at least one structure in `structures`'
    return None


class MlipCalcJob(CapthermoCalcJob):
    """Base of the jobs that run a ``capthermo-mlip`` task with a MACE model node on a set of structures.

    The structures go to the compute side as one LabelledSet (sorted by key), ``parameters`` as a JSON config and the
    model files into the working directory; a subclass names the task (``_TASK``) and its output files
    (``_OUTPUTS``: command-line option -> file name, all retrieved), its settings model (``_SETTINGS``: the
    pydantic model of :mod:`aiida_capthermo.ml.settings`, torch-free, that validates ``parameters`` at submission)
    and the help strings of ``structures`` and ``parameters``.
    """

    _STRUCTURES = 'structures.npz'
    _CONFIG = 'config.json'
    _TASK: str
    _OUTPUTS: ClassVar[dict[str, str]]
    _SETTINGS: type[ModelRunSettings]
    _STRUCTURES_HELP: str
    _PARAMETERS_HELP: str

    @classmethod
    def define(cls, spec: engine.CalcJobProcessSpec) -> None:
        super().define(spec)
        spec.input('model', valid_type=ModelData, validator=validate_mace_model,
                   help='The MACE potential (ModelData of kind "mace").')
        if not hasattr(cls, '_TASK'):
            return
        spec.input('metadata.options.parser_name', valid_type=str, default=f'capthermo.mlip_{cls._TASK}')
        spec.input_namespace('structures', valid_type=orm.StructureData, dynamic=True, validator=validate_structures,
                             help=cls._STRUCTURES_HELP)
        spec.input('parameters', valid_type=orm.Dict, required=False, validator=cls._validate_parameters,
                   help=cls._PARAMETERS_HELP)

    @classmethod
    def _validate_parameters(cls, parameters: orm.Dict, _) -> str | None:
        """Validate ``parameters`` against the task's settings model (unknown keys and bad values are errors)."""
        return pydantic_error(cls._SETTINGS, parameters.get_dict(), 'parameters')

    #: Share of the job's walltime given to the script as ``max_seconds`` (where its settings take one).
    WALLTIME_FRACTION = 0.8

    def _complete_parameters(self, parameters: dict) -> dict:
        """The config the compute side gets: where the job has a ``max_wallclock_seconds`` and the task's settings
        take ``max_seconds``, ``max_seconds`` is :data:`WALLTIME_FRACTION` of that walltime (it replaces a
        protocol's value: the walltime the user gave is the limit that matters on a cluster), so that the script
        stops with the walltime exit code before the scheduler kills it. Without a walltime (``core.direct``
        enforces none) the parameters' own ``max_seconds`` is the only limit."""
        walltime = self.inputs.metadata.options.get('max_wallclock_seconds')
        if walltime and 'max_seconds' in self._SETTINGS.model_fields:
            parameters = {**parameters, 'max_seconds': self.WALLTIME_FRACTION * walltime}
        return parameters

    def prepare_for_submission(self, folder) -> datastructures.CalcInfo:
        from aiida_capthermo.data.structures import labelled_set_from_structures

        with folder.open(self._STRUCTURES, 'wb') as handle:
            buffer = io.BytesIO()
            labelled_set_from_structures(dict(self.inputs.structures)).save(buffer)
            handle.write(buffer.getvalue())
        parameters = self.inputs.parameters.get_dict() if 'parameters' in self.inputs else {}
        parameters = self._complete_parameters(parameters)
        with folder.open(self._CONFIG, 'w') as handle:
            json.dump(parameters, handle, indent=1)
        self.inputs.model.export_files(folder.abspath)
        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = [self._TASK, self.inputs.model.main_file, self._STRUCTURES, '--config', self._CONFIG]
        for option, filename in self._OUTPUTS.items():
            codeinfo.cmdline_params += [option, filename]
        codeinfo.cmdline_params += ['--summary', self._SUMMARY]
        codeinfo.stdout_name = self.metadata.options.output_filename
        codeinfo.join_files = True
        calcinfo = datastructures.CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.retrieve_list = [self.metadata.options.output_filename, self._SUMMARY, *self._OUTPUTS.values()]
        return calcinfo


class MlipScreenCalcJob(MlipCalcJob):
    """Relax every input structure with a MACE potential: all of them (or ``max_batch`` at a time) in one batched
    TorchSim FIRE simulation with a Fréchet cell filter, the model loaded once.

    The structures go to the compute side as one LabelledSet (sorted by key), the model files are copied into
    the working directory; ``capthermo-mlip screen`` writes the relaxed set, one record per structure and the
    summary, and checkpoints both after every batch. With a ``max_wallclock_seconds`` the script starts no batch after
    80 % of it (else after ``parameters['max_seconds']`` where given); a job stopped that way, or killed by the
    scheduler for walltime, attaches what it relaxed and exits with ERROR_OUT_OF_WALLTIME (``MlipScreenWorkChain``
    relaxes the rest).
    """

    _TASK = 'screen'
    _SETTINGS = ScreenConfig
    _STRUCTURES_HELP = 'The structures to relax, by key (Å).'
    _PARAMETERS_HELP = ('ScreenConfig: fmax (eV/Å, atomic and cell forces), max_steps, relax_cell, max_batch '
                        '(structures per batched simulation), max_seconds, device (auto/cpu/cuda), dtype '
                        '(float64/float32), threads.')
    _RELAXED = 'relaxed.npz'
    _SCREEN = 'screen.json'
    _OUTPUTS: ClassVar[dict[str, str]] = {'--relaxed': _RELAXED, '--screen': _SCREEN}

    @classmethod
    def define(cls, spec: engine.CalcJobProcessSpec) -> None:
        super().define(spec)
        spec.output_namespace('relaxed', valid_type=orm.StructureData, dynamic=True,
                              help='Relaxed structures, same keys as `structures` (those that relaxed).')
        spec.output('energies', valid_type=orm.ArrayData,
                    help='Arrays over the relaxed structures in sorted-key order: `energy` (eV), `energy_per_atom` '
                         '(eV/atom), `converged`, `steps`.')
        spec.output('results', valid_type=orm.Dict,
                    help='Per key reached: energy (eV), initial_energy, energy_per_atom (eV/atom), converged, steps, '
                         'max_force (eV/Å), max_stress (eV/Å^3), or error.')
        spec.default_output_node = 'results'
        spec.exit_code(EXIT_CODES['ERROR_NO_STRUCTURE_RELAXED'], 'ERROR_NO_STRUCTURE_RELAXED',
                       message='No structure could be relaxed: {error}')


class MlipPhononsCalcJob(MlipCalcJob):
    """Harmonic phonons of every input cell with a MACE model node (phonopy finite displacements, the displaced
    supercells evaluated in batches; bands along the cubic path) and, with ``temperatures`` in ``parameters``,
    finite-temperature phonons from batched Langevin MD by normal-mode decomposition of the velocities
    (``capthermo-mlip phonons``)."""

    _TASK = 'phonons'
    _SETTINGS = PhononConfig
    _STRUCTURES_HELP = 'Relaxed cells by key (Å); each is its own unit cell for phonopy.'
    _PARAMETERS_HELP = ('PhononConfig: supercell, displacement (Å), imaginary_threshold (THz), band_points, '
                        'batch_size; finite temperature: temperatures (K), replicas, equilibration_steps, '
                        'equilibration_friction and friction (1/fs), steps, timestep (fs), sample_stride, segments, '
                        'fit_window (THz), seed, stop_distance (Å); device, dtype, threads.')
    _BANDS = 'bands.npz'
    _PHONONS = 'phonons.json'
    _OUTPUTS: ClassVar[dict[str, str]] = {'--bands': _BANDS, '--phonons': _PHONONS}

    @classmethod
    def define(cls, spec: engine.CalcJobProcessSpec) -> None:
        super().define(spec)
        spec.output('results', valid_type=orm.Dict,
                    help='Per key: commensurate q points and harmonic frequencies there (THz), n_imaginary, '
                         'min_frequency; per temperature (`300.0`): harmonic and renormalised frequencies of the '
                         'supercell modes, linewidths (FWHM THz), renormalised commensurate frequencies, '
                         'imaginary_harmonic modes, unresolved modes, stabilised, equipartition, mean_temperature.')
        spec.output_namespace('bands', valid_type=orm.BandsData, dynamic=True,
                              help='Harmonic phonon bands (THz) per key along Γ-X-M-Γ-R-X|M-R.')
        spec.output_namespace('renormalised_bands', valid_type=orm.BandsData, dynamic=True,
                              help='Renormalised phonon bands (THz) per key and temperature (`c003_T300`).')
        spec.output('spectra', valid_type=orm.ArrayData, required=False,
                    help='Power spectra of the supercell modes per key and temperature (`c003_T300`, [K, 3N]) and '
                         'their frequency grids (`frequency_c003_T300`, THz).')
        spec.default_output_node = 'results'
        spec.exit_code(EXIT_CODES['ERROR_MD_BROKE'], 'ERROR_MD_BROKE',
                       message='The phonon MD of {runs} broke; the harmonic results are attached.')


class MlipMdCalcJob(MlipCalcJob):
    """Langevin NVT molecular dynamics with a MACE model node through ``capthermo-mlip md``.

    Every structure runs at every temperature of ``parameters`` (one replica each, seeds recorded), all replicas in
    one batched TorchSim simulation (the MD engine of the thermal stage). Each replica's
    verdict (stable: finished, mean temperature within tolerance, no pair closer than ``stable_distance``) and its
    temperature, energy and shortest-distance series come back; with ``frame_stride`` the frames come back as a
    DatasetData (unlabelled) to be labelled by an engine. A replica that breaks does not fail the others.
    """

    _TASK = 'md'
    _SETTINGS = MdConfig
    _STRUCTURES_HELP = 'Starting structures by key (Å); each runs at every temperature.'
    _PARAMETERS_HELP = ('MdConfig: temperatures (K), steps, timestep (fs), friction (1/fs), seed, stride, '
                        'frame_stride, stop_distance and stable_distance (Å), max_temperature_ratio, '
                        'temperature_tolerance (relative), max_frame_force (eV/Å), device, dtype, threads.')
    _FRAMES = 'frames.npz'
    _MD = 'md.json'
    _OUTPUTS: ClassVar[dict[str, str]] = {'--frames': _FRAMES, '--md': _MD}

    @classmethod
    def define(cls, spec: engine.CalcJobProcessSpec) -> None:
        super().define(spec)
        spec.output('results', valid_type=orm.Dict,
                    help='`stable` (every replica stable), `n_stable`, `n_replicas` and per replica: key, x, '
                         'temperature (K), seed, stable, mean_temperature (K), min_distance (Å), closest_pair, broke.')
        spec.output('trajectories', valid_type=orm.ArrayData,
                    help='Per replica i: time_fs_i, temperature_i (K), potential_energy_i (eV), min_distance_i (Å).')
        spec.output('frames', valid_type=DatasetData, required=False,
                    help='Frames kept every frame_stride steps (unlabelled; x, temperature, origin "md").')
        spec.default_output_node = 'results'
        spec.exit_code(EXIT_CODES['ERROR_NO_REPLICA_RAN'], 'ERROR_NO_REPLICA_RAN',
                       message='No MD replica could run: {error}')


class MlipThermalCalcJob(MlipCalcJob):
    """Batched Langevin MD with a MACE model node through ``capthermo-mlip thermal`` (TorchSim).

    Every (structure, temperature, seed) replica runs in one batched simulation, the model loaded once. The frames
    of the replicas that finished come back as one DatasetData (replica by replica; x, target temperature and the
    potential energy per frame) for the band-gap model, the series per replica as ArrayData. Replicas that blew up
    are named in ``results`` and the job exits with 313 after attaching the outputs of the others.
    """

    _TASK = 'thermal'
    _SETTINGS = ThermalMdConfig
    _STRUCTURES_HELP = ('Starting (relaxed) structures by key (Å); each runs at every temperature, '
                        '`replicas` times.')
    _PARAMETERS_HELP = ('ThermalMdConfig: temperatures (K), replicas, steps, timestep (fs), friction (1/fs), '
                        'ensemble (nvt/npt), pressure (GPa), seed, stride, store_velocities, fix_com, '
                        'stop_distance (Å), max_temperature_ratio, max_batch, select, device, dtype, threads.')
    _FRAMES = 'frames.npz'
    _SERIES = 'series.npz'
    _MD = 'md.json'
    _OUTPUTS: ClassVar[dict[str, str]] = {'--frames': _FRAMES, '--series': _SERIES, '--md': _MD}

    @classmethod
    def define(cls, spec: engine.CalcJobProcessSpec) -> None:
        super().define(spec)
        spec.output('results', valid_type=orm.Dict,
                    help='`replicas` (per replica: replica id, key, x, temperature K, seed, steps, timestep fs, '
                         'broke, frame_offset, n_frames, mean_temperature K, min_distance Å), `broken`, `n_broken`, '
                         '`wall_time_s`, `replica_steps_per_s`.')
        spec.output('series', valid_type=orm.ArrayData,
                    help='Per replica r: time_fs_r, temperature_r (K), potential_energy_r (eV), min_distance_r (Å), '
                         'volume_r (Å^3), and velocities_r (Å/fs) when stored.')
        spec.output('frames', valid_type=DatasetData, required=False,
                    help='Recorded frames of the replicas that finished (positions Å, cells Å, potential energy '
                         'eV, x, target temperature K, origin "md").')
        spec.default_output_node = 'results'
        spec.exit_code(EXIT_CODES['ERROR_REPLICAS_BROKE'], 'ERROR_REPLICAS_BROKE',
                       message='Replicas {broken} blew up ({reasons}); the others finished and are attached.')


class MlipModesCalcJob(MlipCalcJob):
    """Γ phonons of every input cell with a MACE model node, each mode frozen at its thermal amplitude
    ``sqrt(hbar (1 + 2n) / (2 omega))`` at each temperature with both signs (``capthermo-mlip modes``)."""

    _TASK = 'modes'
    _SETTINGS = ModesConfig
    _STRUCTURES_HELP = 'Relaxed cells by key (Å); the modes are those of each cell at its Γ point.'
    _PARAMETERS_HELP = ('ModesConfig: temperatures (K), displacement (Å), frequency_cutoff (THz), imaginary '
                        '(skip/absolute), device, dtype, threads.')
    _DISTORTED = 'distorted.npz'
    _MODES = 'modes.json'
    _OUTPUTS: ClassVar[dict[str, str]] = {'--distorted': _DISTORTED, '--modes': _MODES}

    @classmethod
    def define(cls, spec: engine.CalcJobProcessSpec) -> None:
        super().define(spec)
        spec.output('modes', valid_type=orm.Dict,
                    help='Per structure (key, x): frequencies (THz), active modes, amplitudes per temperature '
                         '(amu^1/2 Å), share of each species per mode, n_imaginary.')
        spec.output('distorted', valid_type=DatasetData,
                    help='The frozen-mode cells: structure by structure, temperature by temperature, active mode '
                         'by mode, + then -.')
        spec.default_output_node = 'modes'
