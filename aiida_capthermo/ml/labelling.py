"""Label structures on the compute side: energy, forces, stress and a Γ-point band gap.

This is the ``local`` labelling engine (docs/dataset.md). The default is tblite's GFN1-xTB *without* its classical
halogen-bond correction: that term puts 28-550 eV/Å on the ideal cubic Ag3S(Br,I) cells (where symmetry makes the
forces zero) and does not touch the electronic structure, so dropping it gives physical forces and the same gap
(docs/dataset.md has the measurements). GFN2-xTB and IPEA1-xTB are there too; CHGNet (weights shipped in its wheel,
never downloaded) is the universal-potential option for energies, forces and stresses, with the gap from tblite on
the same structure when asked for; ASE's EMT is for quick mechanics checks. A structure whose calculation fails is
recorded as failed with its error and does not stop the batch. Its settings, :class:`CalculatorSpec`, live in the
torch-free :mod:`aiida_capthermo.ml.settings`.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable

import numpy as np

from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.ml.settings import HALOGEN_BOND_METHODS, CalculatorSpec, RelaxSpec, torch_default_dtype

__all__ = ['label_structures', 'gap_from_orbitals', 'tblite_parameters', 'single_point_function', 'relax_atoms',
           'engine_calculator', 'engine_md']


def gap_from_orbitals(orbital_energies: np.ndarray, occupations: np.ndarray) -> tuple[float, float, float]:
    """Γ-point band gap, VBM and CBM (eV) from orbital energies (eV) and occupations (0..2 per orbital).

    The number of doubly occupied states is fixed by the electron count (closed shell), so fractional Fermi
    occupations from the electronic temperature do not move the band edges.
    """
    energies = np.sort(np.asarray(orbital_energies, dtype=float))
    n_electrons = float(np.sum(occupations))
    n_occupied = int(round(n_electrons / 2.0))
    if n_occupied < 1 or n_occupied >= len(energies):
        raise ValueError(f'cannot place the band edges: {n_electrons} electrons in {len(energies)} orbitals')
    vbm, cbm = energies[n_occupied - 1], energies[n_occupied]
    return float(cbm - vbm), float(vbm), float(cbm)


def tblite_parameters(method: str, halogen_bond: bool = False) -> str | dict:
    """The tblite parametrisation: the method's name, or its exported parameter table without the ``halogen`` section.

    Uses tblite's public parameter export (the same table tblite builds the method from), so nothing else changes.
    """
    if method not in HALOGEN_BOND_METHODS or halogen_bond:
        return method
    from tblite import library

    param, table = library.new_param(), library.new_table()
    {'GFN1-xTB': library.export_gfn1_param, 'IPEA1-xTB': library.export_ipea1_param}[method](param)
    library.dump_param(param, table)
    parameters = library.table_to_dict(table)
    parameters.pop('halogen')
    return parameters


def _tblite_single_point(atoms, spec: CalculatorSpec, parameters: str | dict) -> dict:
    """One tblite single point through its public ``interface``: energy (eV), forces (eV/Å), stress (eV/Å^3, Voigt,
    ASE sign), and the Γ-point gap, VBM and CBM (eV) from the orbital energies and occupations."""
    from ase.units import Bohr, Hartree, kB
    from tblite.interface import Calculator

    calculator = Calculator(parameters, atoms.numbers, atoms.positions / Bohr, lattice=np.asarray(atoms.cell) / Bohr,
                            periodic=np.asarray(atoms.pbc))
    calculator.set('accuracy', spec.accuracy)
    calculator.set('temperature', spec.electronic_temperature * kB / Hartree)
    calculator.set('max-iter', spec.max_iterations)
    calculator.set('mixer-damping', spec.mixer_damping)
    calculator.set('verbosity', 0)
    result = calculator.singlepoint()
    virial = result.get('virial') * Hartree / atoms.get_volume()  # [3, 3]
    gap, vbm, cbm = gap_from_orbitals(result.get('orbital-energies') * Hartree, result.get('orbital-occupations'))
    return {'energy': float(result.get('energy')) * Hartree, 'forces': -result.get('gradient') * Hartree / Bohr,
            'stress': virial.flat[[0, 4, 8, 5, 2, 1]], 'gap': gap, 'vbm': vbm, 'cbm': cbm}


def _ase_single_point(atoms, calculator) -> dict:
    """Energy (eV), forces (eV/Å) and stress (eV/Å^3, Voigt, ASE sign) from an ASE calculator."""
    atoms.calc = calculator
    return {'energy': float(atoms.get_potential_energy()), 'forces': np.array(atoms.get_forces()),
            'stress': np.array(atoms.get_stress(voigt=True))}


def single_point_function(spec: CalculatorSpec) -> Callable:
    """Return ``f(atoms) -> dict`` of labels for ``spec``; models and parameter tables are loaded once, here."""
    wants_gap = 'gap' in spec.properties
    parameters = tblite_parameters(spec.method, spec.halogen_bond) if spec.name != 'emt' else None
    if parameters is not None:
        import tblite.interface  # noqa: F401 -- loads tblite's OpenMP runtime now, for openmp_threads to limit
    if spec.name == 'tblite':
        return lambda atoms: _tblite_single_point(atoms, spec, parameters)
    if spec.name == 'emt':
        from ase.calculators.emt import EMT

        emt = EMT()
        return lambda atoms: _ase_single_point(atoms, emt)
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    # The weights are read from the installed package; CHGNet never downloads these. CHGNet is float32 throughout:
    # it is built and run with that default dtype, whatever the process's default is (MACE may have set float64).
    with torch_default_dtype('float32'):
        calculator = CHGNetCalculator(CHGNet.load(model_name=spec.chgnet_model, use_device='cpu', verbose=False),
                                      use_device='cpu')

    def chgnet_single_point(atoms) -> dict:
        with torch_default_dtype('float32'):
            result = _ase_single_point(atoms, calculator)
        if wants_gap:
            edges = _tblite_single_point(atoms, spec, parameters)
            result.update(gap=edges['gap'], vbm=edges['vbm'], cbm=edges['cbm'])
        return result

    return chgnet_single_point


def relax_atoms(atoms, single_point: Callable, relax: RelaxSpec):
    """Relax ``atoms`` (a copy) with the calculator of ``single_point``: BFGS on the positions and, with
    ``relax.cell``, on the cell through ASE's ``FrechetCellFilter`` (zero stress), keeping the space group with
    ``FixSymmetry``. Returns the relaxed atoms (no constraint, no calculator) and a record: ``steps``, ``converged``,
    ``max_force`` (eV/Å) and ``max_stress`` (eV/Å^3) at the end."""
    from ase.constraints import FixSymmetry
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    work = atoms.copy()
    work.calc = engine_calculator(single_point)
    if relax.symprec is not None:
        work.set_constraint(FixSymmetry(work, symprec=relax.symprec))
    optimizer = BFGS(FrechetCellFilter(work) if relax.cell else work, logfile=None)
    with warnings.catch_warnings():  # scipy's logm of the cell deformation warns at 1e-13 accuracy
        warnings.filterwarnings('ignore', message='logm result may be inaccurate')
        converged = bool(optimizer.run(fmax=relax.fmax, steps=relax.max_steps))
    forces, stress = work.get_forces(), work.get_stress(voigt=True)  # symmetrised, as the optimiser saw them
    record = {'steps': int(optimizer.nsteps), 'converged': converged,
              'max_force': float(np.abs(forces).max()) if len(work) else 0.0,
              'max_stress': float(np.abs(stress).max()) if relax.cell else None}
    relaxed = atoms.copy()
    relaxed.set_cell(work.cell.array, scale_atoms=False)
    relaxed.positions = work.positions
    return relaxed, record


def engine_calculator(single_point: Callable):
    """The labeller's ``single_point`` (:func:`single_point_function`) as an ASE calculator: energy, forces and
    stress, with every other label of the last call (the gap, where the engine gives one) in ``calc.labels``."""
    from ase.calculators.calculator import Calculator, all_changes

    class Engine(Calculator):
        implemented_properties = ('energy', 'free_energy', 'forces', 'stress')

        def calculate(self, atoms=None, properties=('energy',), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            result = single_point(self.atoms.copy())
            self.labels = result
            self.results = {'energy': result['energy'], 'free_energy': result['energy'],
                            'forces': np.asarray(result['forces'])}
            if result.get('stress') is not None:
                self.results['stress'] = np.asarray(result['stress'])

    return Engine()


def engine_md(atoms, single_point: Callable, temperature: float, steps: int, *, timestep: float = 2.0,
              friction: float = 0.01, stride: int = 5, seed: int = 0) -> tuple[list, dict]:
    """Langevin MD driven by the labelling engine itself (``single_point``; ASE's integrator, an implementation
    independent of the package's TorchSim engine): the reference distribution that the potential's MD
    approximates.

    Velocities from Maxwell-Boltzmann at ``temperature`` (K) with the centre of mass fixed (3N - 3 degrees of
    freedom, as in the package's MD); ``timestep`` fs, ``friction`` 1/fs. Every ``stride`` steps (step 0 included)
    the frame is recorded *with the engine's labels of that step* (energy, forces, stress and gap where the engine
    gives them: an MD step is a label). Returns the labelled frames (``ase.Atoms`` with a single-point calculator)
    and the series ``time_fs``, ``temperature`` (K), ``potential_energy`` (eV), ``gap`` (eV, NaN without one)."""
    from ase import units
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    work = atoms.copy()
    work.calc = engine_calculator(single_point)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(work, temperature_K=temperature, rng=rng)
    Stationary(work)
    work.set_constraint(FixCom())
    dynamics = Langevin(work, timestep=timestep * units.fs, temperature_K=temperature, friction=friction / units.fs,
                        fixcm=False, rng=rng)
    frames, series = [], {'time_fs': [], 'temperature': [], 'potential_energy': [], 'gap': []}

    def record():
        labels = work.calc.labels
        frame = atoms.copy()
        frame.set_cell(work.cell.array)
        frame.positions = work.positions
        frame.calc = SinglePointCalculator(frame, energy=labels['energy'], forces=np.asarray(labels['forces']),
                                           stress=labels.get('stress'))
        frame.info['gap'] = float(labels.get('gap', np.nan))
        frames.append(frame)
        series['time_fs'].append(dynamics.nsteps * timestep)
        series['temperature'].append(float(work.get_temperature()))
        series['potential_energy'].append(float(labels['energy']))
        series['gap'].append(frame.info['gap'])

    work.get_potential_energy()
    dynamics.attach(record, interval=stride)
    dynamics.run(steps)
    return frames, series


def label_structures(structures: LabelledSet, spec: CalculatorSpec, isolate: bool = False,
                     relax: RelaxSpec | None = None) -> tuple[LabelledSet, list[dict]]:
    """Label every structure of ``structures``; return the labelled set (NaN rows for failures) and per-structure
    records.

    Each record is ``{'index', 'status': 'ok'|'failed', 'error', 'seconds', 'threads'}``. Only the requested
    properties are stored; the others stay NaN. With ``isolate`` the calculations run in a child process: a native
    crash (a segfault of the calculator's library) fails the structure it happened on, with the signal in its
    ``error``, and a new child labels the rest (:func:`_isolated_rows`); the labelling job runs this way.
    With ``relax`` each structure is first relaxed (:func:`relax_atoms`) and labelled at its relaxed geometry, which
    the returned set holds; its record gets ``relax`` (steps, converged, largest force and stress), and a structure
    that did not converge counts as failed.
    """
    rows = _isolated_rows(structures, spec, relax) if isolate else _rows(structures, spec, 0, lambda message: None,
                                                                          relax)
    n = len(structures)
    labels = {name: np.full(n, np.nan) for name in LABELS}
    stress = np.full((n, 6), np.nan)
    forces = np.full((int(structures.n_atoms.sum()), 3), np.nan)
    offsets = structures.offsets
    positions, cells = structures.positions.copy(), structures.cells.copy()
    records = []
    for index, (record, values, atom_forces, atom_stress, geometry) in enumerate(rows):
        records.append(record)
        for name in LABELS:
            labels[name][index] = values.get(name, np.nan)
        forces[offsets[index]:offsets[index + 1]] = atom_forces
        stress[index] = atom_stress
        if geometry is not None:
            positions[offsets[index]:offsets[index + 1]], cells[index] = geometry
    labelled = LabelledSet(numbers=structures.numbers, positions=positions, cells=cells,
                           n_atoms=structures.n_atoms, forces=forces, stress=stress, x=structures.x,
                           temperature=structures.temperature, origin=structures.origin,
                           structure_uuid=structures.structure_uuid, **labels)
    return labelled, records


#: The per-structure scalar labels.
LABELS = ('energy', 'gap', 'vbm', 'cbm')


def _rows(structures: LabelledSet, spec: CalculatorSpec, start: int, send,
          relax: RelaxSpec | None = None) -> list[tuple]:
    """Label structures ``start``, ``start + 1``... in this process: per structure ``(record, {label: value},
    forces [n_atoms, 3], stress [6], geometry)``, where geometry is ``(positions [n_atoms, 3], cell [3, 3])`` of a
    relaxed structure (None without ``relax``). ``send`` gets ``('start', index)`` before each calculation and
    ``('done', index, row)`` after it."""
    single_point = single_point_function(spec)
    wanted = set(spec.properties) | ({'vbm', 'cbm'} if 'gap' in spec.properties else set())
    rows = []
    with openmp_threads(spec.threads) as threads:
        for index in range(start, len(structures)):
            send(('start', index))
            atoms = structures.atoms(index, with_labels=False)
            labels = {name: np.full(1, np.nan) for name in LABELS}
            forces, stress = np.full((len(atoms), 3), np.nan), np.full(6, np.nan)
            geometry, relaxed, started = None, None, time.perf_counter()
            if relax is not None:
                try:
                    atoms, relaxed = relax_atoms(atoms, single_point, relax)
                    geometry = (atoms.positions, atoms.cell.array)
                except Exception as exception:  # noqa: BLE001 - a failed structure is recorded, the batch goes on
                    relaxed = {'converged': False, 'error': f'{type(exception).__name__}: {exception}'}
            if relaxed is not None and not relaxed['converged']:
                record = {'status': 'failed', 'seconds': time.perf_counter() - started,
                          'error': relaxed.get('error') or f'the relaxation did not reach fmax {relax.fmax} eV/Å in '
                                                           f'{relax.max_steps} steps'}
            else:
                record = _label_one(atoms, single_point, wanted, labels, forces, stress)
                record['seconds'] = time.perf_counter() - started  # with the relaxation
            record.update(index=index, threads=threads, **({'relax': relaxed} if relaxed is not None else {}))
            rows.append((record, {name: float(value[0]) for name, value in labels.items()}, forces, stress,
                         geometry))
            send(('done', index, rows[-1]))
    return rows


def _isolated_rows(structures: LabelledSet, spec: CalculatorSpec, relax: RelaxSpec | None = None) -> list[tuple]:
    """The rows of :func:`_rows`, computed in a child process. When the child dies in a calculation (a
    segfault, an abort), that structure's row records the signal and a new child goes on from the next one."""
    import multiprocessing
    import signal

    from threadpoolctl import threadpool_info

    # fork (1.4 s faster per job than a fresh interpreter) unless an OpenMP runtime runs here: its threads do not
    # survive a fork, and the child could hang
    openmp = any(pool['user_api'] == 'openmp' for pool in threadpool_info())
    context = multiprocessing.get_context('spawn' if openmp else 'fork')
    n, rows = len(structures), {}
    while len(rows) < n:
        start = min(set(range(n)) - set(rows))
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=_child, args=(structures, spec, start, sender, relax), daemon=True)
        child.start()
        sender.close()
        current = None
        try:
            while True:
                try:
                    message = receiver.recv()
                except EOFError:
                    break
                if message[0] == 'start':
                    current = message[1]
                else:
                    rows[message[1]], current = message[2], None
        except BaseException:  # a wall-clock limit, an interrupt: the child goes too
            child.kill()
            raise
        child.join()
        if len(rows) < n:  # the child died: in a calculation (current), or between two (the next one)
            crashed = current if current is not None else min(set(range(n)) - set(rows))
            code = child.exitcode
            cause = signal.Signals(-code).name if code is not None and code < 0 else f'exit code {code}'
            atoms = int(structures.n_atoms[crashed])
            formula = structures.atoms(crashed, with_labels=False).get_chemical_formula()
            rows[crashed] = ({'index': crashed, 'status': 'failed', 'seconds': None, 'threads': None,
                              'error': f'the calculation of structure {crashed} ({formula}) crashed its process '
                                       f'({cause}); the other structures of the batch were labelled in a new one'},
                             {}, np.full((atoms, 3), np.nan), np.full(6, np.nan), None)
    return [rows[index] for index in range(n)]


def _child(structures: LabelledSet, spec: CalculatorSpec, start: int, sender, relax: RelaxSpec | None) -> None:
    """The child process of :func:`_isolated_rows`: label from ``start`` on, sending every step to the parent."""
    _rows(structures, spec, start, sender.send, relax)
    sender.close()


@contextlib.contextmanager
def openmp_threads(threads: int | None):
    """Limit every OpenMP runtime loaded in this process (tblite's, torch's) to ``threads`` inside the block
    (``None``: leave them); yields the number of threads the runtimes use there (the largest, None without
    OpenMP)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(limits=threads, user_api='openmp'):
        used = [pool['num_threads'] for pool in threadpool_info() if pool['user_api'] == 'openmp']
        yield max(used) if used else None


def _label_one(atoms, single_point: Callable, wanted: set, labels: dict, forces: np.ndarray,
               stress: np.ndarray) -> dict:
    """Label one structure into ``labels`` (one-element arrays) and the arrays ``forces`` and ``stress``; return
    its record (status, error, seconds)."""
    start = time.perf_counter()
    record = {'status': 'ok', 'error': None}
    try:
        result = single_point(atoms)
    except Exception as exception:  # noqa: BLE001 - a failed structure is recorded, the batch goes on
        record.update(status='failed', error=f'{type(exception).__name__}: {exception}')
    else:
        for name in labels:
            if name in wanted and name in result:
                labels[name][0] = result[name]
        if 'forces' in wanted:
            forces[:] = result['forces']
        if 'stress' in wanted:
            stress[:] = result['stress']
    record['seconds'] = time.perf_counter() - start
    return record
