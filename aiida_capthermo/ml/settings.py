"""The validated settings of the compute-side tasks (pydantic, unknown keys rejected), in a module that imports no
torch, so that the AiiDA layer validates its inputs without loading it.

Layout of the settings: every settings model of a ``capthermo-mlip`` task (:class:`ScreenConfig`,
:class:`PhononConfig`, :class:`MdConfig`, :class:`ThermalMdConfig`, :class:`ModesConfig`, all on
:class:`ModelRunSettings`) and of ``capthermo-label`` (:class:`CalculatorSpec`) lives here; the GNN hyper-parameters
(``capthermo-gnn``) live in :mod:`aiida_capthermo.ml.gnn.config`, torch-free too. The modules that run the tasks
(:mod:`.mlip`, :mod:`.phonons`, :mod:`.thermal`, :mod:`.labelling`) import their settings from here, never the
other way round; this module imports only pydantic and the standard library (torch inside functions only).

The two Langevin MD tasks share one base, :class:`MdSettings` (temperatures, steps, time step, friction, seed,
stride and the blow-up thresholds of :func:`aiida_capthermo.ml.thermal.blow_up`): :class:`ThermalMdConfig` (the
thermal stage's sampling) and :class:`MdConfig` (the stability check and the refinement frames) derive from it and
differ only in their defaults and their own keys.

Units: Å, eV, fs, K, GPa.
"""

from __future__ import annotations

import contextlib
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

__all__ = ['ModelRunSettings', 'torch_default_dtype', 'ScreenConfig', 'PhononConfig', 'MdSettings', 'MdConfig',
           'ThermalMdConfig', 'ModesConfig', 'CalculatorSpec', 'HALOGEN_BOND_METHODS']


class ModelRunSettings(BaseModel):
    """Base of the settings of the ``capthermo-mlip`` tasks: where and in which precision the model runs, and how
    many CPU threads torch may use (unknown keys are rejected)."""

    model_config = ConfigDict(extra='forbid', allow_inf_nan=False)  # a NaN temperature would hang the MD

    device: Literal['auto', 'cpu', 'cuda'] = Field('auto', description='auto: CUDA when present, else the CPU.')
    dtype: Literal['auto', 'float64', 'float32'] = Field(
        'auto', description='Precision of the model; auto: float64 on the CPU, on a GPU float32 for MD and '
                            'relaxations (1.3x faster, half the memory; float32 and float64 MD agree within their '
                            'statistical error) and float64 for phonons.')
    threads: int | None = Field(None, ge=1, description='CPU threads of torch; default: torch decides.')
    cueq: bool = Field(True, description="On a GPU, MACE on NVIDIA's cuEquivariance kernels where they are installed "
                                         '(extra cueq); otherwise, and on the CPU, on e3nn\'s.')

    def apply_threads(self) -> None:
        """Set torch's CPU thread count when ``threads`` is given (imports torch only then)."""
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)

    #: The precision ``dtype: auto`` means on a GPU (float64 on the CPU).
    gpu_dtype: ClassVar[str] = 'float32'

    def precision(self) -> str:
        """The precision these settings run in: ``dtype``, or for ``auto`` :attr:`gpu_dtype` on a GPU and
        float64 on the CPU (imports torch only to see whether a GPU is there)."""
        if self.dtype != 'auto':
            return self.dtype
        from aiida_capthermo.ml.mace import resolve_device

        return self.gpu_dtype if resolve_device(self.device) == 'cuda' else 'float64'

    def load_model(self, model: str, compute_stress: bool = False):
        """The MACE ``model`` (file or foundation name) as a TorchSim model on these settings' device, in their
        :meth:`precision`, on the kernels they allow (:func:`aiida_capthermo.ml.thermal.load_torchsim_model`)."""
        from aiida_capthermo.ml.thermal import load_torchsim_model

        return load_torchsim_model(model, self.device, self.precision(), compute_stress=compute_stress,
                                   enable_cueq=self.cueq)


@contextlib.contextmanager
def torch_default_dtype(name: str | None = None):
    """Run a block with torch's default dtype set to ``name`` (``float32``...), or as it is when None, and restore
    the caller's default afterwards: loading a MACE model sets float64 for the whole process, which CHGNet (float32
    throughout) and callers of in-process predictions must not inherit."""
    import torch

    previous = torch.get_default_dtype()
    if name is not None:
        torch.set_default_dtype(getattr(torch, name))
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# ---------------------------------------------------------------------------------------------- relaxation, phonons
#: The hard wall-clock limit of the MD tasks (a step that never returns included).
MAX_SECONDS_HELP = ('Wall-clock limit of the task (s): a run still going then stops, even inside a step, with the '
                    'walltime exit code (400); a job with a max_wallclock_seconds sets it to 80 % of that.')


class ScreenConfig(ModelRunSettings):
    """Settings of ``capthermo-mlip screen`` (unknown keys are rejected)."""

    fmax: float = Field(0.01, gt=0, description='Convergence: largest atomic force and cell force (eV/Å) below this.')
    max_steps: int = Field(1000, ge=1, description='Maximum number of FIRE steps per structure.')
    relax_cell: bool = Field(True, description='Relax the cell (Fréchet cell filter) as well as the positions.')
    max_batch: PositiveInt | Literal['auto'] | None = Field(
        'auto', description='Structures relaxed together in one batched simulation: auto = as many as half '
                                  'the free GPU memory holds (all on the CPU); None = all at once.')
    max_seconds: float | None = Field(None, gt=0, description='Start no new batch after this many seconds; the '
                                                              'structures not reached are reported as remaining '
                                                              '(80 % of the job\'s walltime where it has one).')


class PhononConfig(ModelRunSettings):
    """Settings of ``capthermo-mlip phonons`` (unknown keys are rejected)."""

    gpu_dtype: ClassVar[str] = 'float64'  # finite-displacement force constants

    supercell: list[int] = Field(default_factory=lambda: [1, 1, 1],
                                 description='Diagonal phonon supercell of each structure; also the MD cell.')
    displacement: float = Field(0.01, gt=0, le=0.1, description='Finite displacement of phonopy (Å).')
    imaginary_threshold: float = Field(-0.1, le=0, description='Frequencies below this (THz) count as imaginary.')
    band_points: int = Field(31, ge=2, description='q points per segment of the band path.')
    dos_mesh: list[int] = Field(default_factory=lambda: [8, 8, 8],
                                description="Γ-centred q mesh (of the structure's reciprocal cell) of the phonon DOS.")
    dos_sigma: float = Field(0.1, gt=0, description='Gaussian smearing of the phonon DOS (THz).')
    batch_size: PositiveInt | Literal['auto'] = Field(
        'auto', description='Displaced supercells per model call: auto = as many as half the free GPU memory '
                                  'holds, 8 on the CPU (the fastest on one thread: 1.24x over one by one, 64 is 0.6x).')
    temperatures: list[float] = Field(default_factory=list,
                                      description='Temperatures (K, > 0) of the finite-temperature phonons; none: '
                                                  'harmonic only.')
    replicas: int = Field(1, ge=1, description='Independent MD runs per structure and temperature (spectra averaged).')
    equilibration_steps: int = Field(1000, ge=0, description='MD steps with the equilibration friction first.')
    equilibration_friction: float = Field(1e-2, gt=0, description='Langevin friction of the equilibration (1/fs).')
    steps: int = Field(8000, ge=16, description='Production MD steps whose velocities are decomposed.')
    timestep: float = Field(2.0, gt=0, description='MD time step (fs).')
    friction: float = Field(2e-4, gt=0, description='Langevin friction of the production run (1/fs); it broadens '
                                                    'every line by friction / 2 pi (0.03 THz at 2e-4, 0.16 THz at '
                                                    "1e-3, the thermal-gap MD's).")
    sample_stride: int = Field(4, ge=1, description='Steps between velocity samples (Nyquist frequency '
                                                    '1 / (2 stride timestep)).')
    segments: int = Field(1, ge=1, description='Spectrum averaged over this many pieces of each run.')
    fit_window: float = Field(1.0, gt=0, description='Half width (THz) of the Lorentzian fit around each peak.')
    seed: int = Field(0, ge=0, description='Seed of the velocities and of the Langevin noise.')
    stop_distance: float = Field(1.0, gt=0, description='A run with two atoms closer than this (Å) is broken.')
    max_seconds: float | None = Field(None, gt=0, description=MAX_SECONDS_HELP)

    @field_validator('supercell', 'dos_mesh')
    @classmethod
    def _three_positive(cls, value):
        if len(value) != 3 or min(value) < 1:
            raise ValueError(f'expected three positive integers, got {value}')
        return value

    @model_validator(mode='after')
    def _sampling(self) -> PhononConfig:
        if any(t <= 0 for t in self.temperatures):
            raise ValueError(f'temperatures must be > 0 K, got {self.temperatures}')
        if len(set(self.temperatures)) != len(self.temperatures):
            raise ValueError(f'temperatures repeat: {self.temperatures}')
        if self.steps // self.sample_stride // self.segments < 16:
            raise ValueError(f'steps / sample_stride / segments = {self.steps // self.sample_stride // self.segments}'
                             ' samples per spectrum; need at least 16')
        return self

    @property
    def resolution(self) -> float:
        """Frequency resolution of the spectra (THz): one over the length of a segment."""
        samples = self.steps // self.sample_stride // self.segments
        return 1.0 / (samples * self.sample_stride * self.timestep * 1e-3)


# ---------------------------------------------------------------------------------------------- Langevin MD
class MdSettings(ModelRunSettings):
    """What every batched Langevin MD task sets: the replicas' target temperatures, the run, the recording and the
    thresholds at which a replica is stopped as blown up (unknown keys are rejected).

    A subclass changes defaults by declaring a field again; the names, constraints and the check of the
    temperatures stay the same.
    """

    temperatures: list[float] = Field(default_factory=lambda: [300.0, 600.0], min_length=1,
                                      description='Target temperatures (K, > 0): every structure runs at each.')
    steps: int = Field(50000, ge=1, description='MD steps per replica.')
    equilibration_steps: int = Field(0, ge=0, description='Steps run first with the same thermostat and not '
                                                          'recorded (frames, series and averages start after them).')
    timestep: float = Field(1.0, gt=0, description='Time step (fs).')
    friction: float = Field(1e-3, gt=0, description='Langevin friction (1/fs).')
    seed: int = Field(0, ge=0, description='Replica r starts from seed + r; the Langevin noise of a batch from seed.')
    stride: int = Field(20, ge=1, description='Steps between recorded frames (positions, energies, temperatures).')
    stop_distance: float = Field(1.0, gt=0, description='Stop a replica when two atoms come closer than this (Å).')
    max_temperature_ratio: float = Field(3.0, gt=1, description='Stop a replica whose kinetic temperature exceeds '
                                                                'this multiple of its target.')
    max_batch: PositiveInt | Literal['auto'] | None = Field(
        'auto', description='Replicas per batched simulation: auto = as many as half the free GPU memory '
                                  'holds (all on the CPU); None = all at once.')
    max_seconds: float | None = Field(None, gt=0, description=MAX_SECONDS_HELP)

    @model_validator(mode='after')
    def _positive_temperatures(self) -> MdSettings:
        if min(self.temperatures) <= 0:
            raise ValueError(f'MD temperatures must be > 0 K, got {self.temperatures} (0 K is the relaxed structure)')
        return self

    def engine_arguments(self) -> dict:
        """The keyword arguments of :func:`aiida_capthermo.ml.thermal.run_replicas` these settings fix."""
        return {'steps': self.steps, 'equilibration_steps': self.equilibration_steps, 'timestep': self.timestep,
                'friction': self.friction, 'stride': self.stride,
                'stop_distance': self.stop_distance, 'max_temperature_ratio': self.max_temperature_ratio}


#: Recorded frames per replica the thermal gaps need: the equilibration detection may discard half of them and the
#: statistics of what is left need at least 4 (``core.thermal.series_statistics``).
MIN_THERMAL_FRAMES = 8


class ThermalMdConfig(MdSettings):
    """Settings of ``capthermo-mlip thermal`` (unknown keys are rejected).

    The defaults are the paper's: time step 1 fs, friction 1e-3 fs^-1, 50 ps (the authors' scripts used 5e-3 fs^-1
    and 40 ps; the weaker coupling perturbs the dynamics less, the stronger one equilibrates faster).
    """

    replicas: int = Field(1, ge=1, description='Independent replicas (seeds) per structure and temperature.')
    ensemble: Literal['nvt', 'npt'] = Field('nvt', description='NVT, or NPT with the model stress (Langevin barostat).')
    pressure: float = Field(0.0, description='External pressure of NPT (GPa).')
    store_velocities: bool = Field(False, description='Also record velocities (Å/fs) at every recorded frame.')
    fix_com: bool = Field(True, description='Remove the total momentum of every replica after each step.')
    select: list[int] | None = Field(None, description='Run only these replica ids (a restart of broken replicas).')

    @model_validator(mode='after')
    def _enough_frames(self) -> ThermalMdConfig:
        frames = self.steps // self.stride
        if frames < MIN_THERMAL_FRAMES:
            raise ValueError(f'steps / stride = {self.steps} / {self.stride} records {frames} frames per replica; the '
                             f'gap statistics need at least {MIN_THERMAL_FRAMES} (lower the stride or run more steps)')
        return self

    def replica_table(self, n_structures: int) -> list[dict]:
        """Every replica: id, structure index, temperature (K) and seed, in id order (structure, T, seed)."""
        table = []
        for index in range(n_structures):
            for temperature in self.temperatures:
                for _ in range(self.replicas):
                    replica = len(table)
                    table.append({'replica': replica, 'index': index, 'temperature': float(temperature),
                                  'seed': self.seed + replica})
        if self.select is not None:
            unknown = sorted(set(self.select) - {row['replica'] for row in table})
            if unknown:
                raise ValueError(f'select names replicas {unknown} that do not exist (0..{len(table) - 1})')
            table = [row for row in table if row['replica'] in set(self.select)]
        return table


class MdConfig(MdSettings):
    """Settings of ``capthermo-mlip md``: every structure runs at every temperature (one replica each, ``max_batch``
    of them per batched simulation), with a stability verdict per replica; unknown keys are rejected."""

    temperatures: list[float] = Field(default_factory=lambda: [600.0], min_length=1,
                                      description='Target temperatures (K, > 0), one replica per structure and T.')
    steps: int = Field(5000, ge=1, description='MD steps per replica.')
    friction: float = Field(0.01, gt=0, description='Langevin friction (1/fs).')
    seed: int = Field(0, ge=0, description='Seed; replica i starts from seed + i, the Langevin noise from seed.')
    stride: int = Field(10, ge=1, description='Steps between recorded frames.')
    frame_stride: int | None = Field(None, ge=1, description='Steps between frames written to frames.npz '
                                                             '(a multiple of stride; none written when unset).')
    stable_distance: float = Field(1.8, gt=0, description='A stable replica keeps every pair above this (Å).')
    temperature_tolerance: float = Field(0.2, gt=0, description='A stable replica has its mean T (second half) '
                                                                'within this relative deviation of the target.')
    max_frame_force: float | None = Field(None, gt=0, description='Frames whose model force exceeds this (eV/Å) '
                                                                  'are not written (collapsed geometries).')

    @model_validator(mode='after')
    def _frames_on_recorded_steps(self) -> MdConfig:
        if self.frame_stride is not None and self.frame_stride % self.stride:
            raise ValueError(f'frame_stride {self.frame_stride} must be a multiple of stride {self.stride}')
        return self


class ModesConfig(ModelRunSettings):
    """Settings of ``capthermo-mlip modes``: Γ phonons of each (relaxed) cell with the MLIP, every mode frozen at its
    thermal amplitude with both signs (unknown keys are rejected)."""

    gpu_dtype: ClassVar[str] = 'float64'  # finite-displacement force constants

    temperatures: list[float] = Field(default_factory=lambda: [300.0, 600.0], min_length=1,
                                      description='Temperatures (K, >= 0) of the thermal amplitudes.')
    displacement: float = Field(0.01, gt=0, description='Finite displacement of the force constants (Å).')
    frequency_cutoff: float = Field(0.1, ge=0, description='Modes with |f| below this (THz) are left out.')
    imaginary: Literal['skip', 'absolute'] = Field('skip', description='Imaginary modes: left out, or frozen at '
                                                                       'the amplitude of |f|.')

    @model_validator(mode='after')
    def _temperatures(self) -> ModesConfig:
        if min(self.temperatures) < 0:
            raise ValueError(f'temperatures must be >= 0 K, got {self.temperatures}')
        return self


# ---------------------------------------------------------------------------------------------- labelling
#: tblite methods whose parameter table carries the classical halogen-bond correction.
HALOGEN_BOND_METHODS = ('GFN1-xTB', 'IPEA1-xTB')


class CalculatorSpec(BaseModel):
    """Which calculator labels the structures (``capthermo-label``), and how. Unknown keys are rejected."""

    model_config = ConfigDict(extra='forbid')

    name: Literal['tblite', 'chgnet', 'emt'] = Field(
        'tblite', description='tblite (xTB: energy, forces, stress, gap), chgnet (universal potential: energy, forces, '
                              'stress; the gap from tblite `method`) or emt (metals only, no gap).')
    method: Literal['GFN1-xTB', 'GFN2-xTB', 'IPEA1-xTB'] = Field(
        'GFN1-xTB', description='tblite Hamiltonian (with chgnet: the one that gives the gap).')
    halogen_bond: bool = Field(
        False, description="Keep GFN1/IPEA1-xTB's classical halogen-bond correction. Off by default: it puts tens to "
                           'hundreds of eV/Å on the ideal cubic Ag3S(Br,I) cells and leaves the gap unchanged.')
    chgnet_model: str = Field('0.3.0',
                              description='CHGNet weights shipped in the chgnet package (0.3.0, 0.2.0, r2scan).')
    accuracy: float = Field(1.0, gt=0, description='tblite numerical accuracy (smaller is tighter).')
    electronic_temperature: float = Field(300.0, gt=0, description='Fermi smearing temperature in K.')
    max_iterations: int = Field(250, gt=0, description='Maximum number of SCF iterations.')
    mixer_damping: float = Field(0.4, gt=0, le=1, description='Broyden mixer damping.')
    properties: list[Literal['energy', 'forces', 'stress', 'gap']] = Field(
        default_factory=lambda: ['energy', 'forces', 'stress', 'gap'], description='Labels to compute.')
    threads: PositiveInt | None = Field(
        1, description="OpenMP threads of the calculator (tblite): 1 gives bit-identical labels run after run; with "
                       "more, tblite's threaded sums differ in the last bits (1e-12 eV), which the chaotic MD "
                       "of the active learning can grow into a different study. Run batches side by side instead "
                       "(max_concurrent). None: leave the environment's OMP_NUM_THREADS.")

    @property
    def tblite_method(self) -> str:
        """The tblite Hamiltonian's name as recorded in datasets: ``GFN1-xTB-noXB`` without the halogen-bond term."""
        if self.method in HALOGEN_BOND_METHODS and not self.halogen_bond:
            return f'{self.method}-noXB'
        return self.method

    def describe(self) -> dict[str, str | None]:
        """``method`` (who gave energies/forces/stress, or the gap alone) and ``gap_method`` (who gave the gap)."""
        gap = 'gap' in self.properties and self.name != 'emt'
        if self.name == 'tblite':
            return {'method': self.tblite_method, 'gap_method': self.tblite_method if gap else None}
        if self.name == 'chgnet':
            return {'method': f'CHGNet-{self.chgnet_model}', 'gap_method': self.tblite_method if gap else None}
        return {'method': 'EMT', 'gap_method': None}


class RelaxSpec(BaseModel):
    """How ``capthermo-label --relax`` relaxes each structure before labelling it (the end members of a solid solution,
    with the engine that then computes their phonons). Unknown keys are rejected."""

    model_config = ConfigDict(extra='forbid', allow_inf_nan=False)

    fmax: float = Field(0.005, gt=0, le=0.5,
                        description='Convergence: largest force (eV/Å) and largest stress times volume per atom.')
    max_steps: PositiveInt = Field(500, le=10_000, description='Optimiser steps before the relaxation counts as '
                                                               'failed (the structure is then not labelled).')
    cell: bool = Field(True, description='Relax the cell (shape and volume, zero stress) as well as the positions.')
    symprec: float | None = Field(1e-3, gt=0, description="Keep the structure's space group (spglib tolerance, Å) "
                                                          'so that noise cannot lower it; None: no constraint.')
