"""The batched MACE model of the MD engine: its neighbour list against vesin's, its energies, forces and stress
against TorchSim 0.3's own MACE wrapper, the memory-sized batching on the CPU, and float32 against float64 MD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_sim as ts

from aiida_capthermo.core.structures import antiperovskite
from aiida_capthermo.ml.mace import load_mace_model, random_mace
from aiida_capthermo.ml.thermal import batch_plan, load_torchsim_model, memory_batch_size, run_replicas
from aiida_capthermo.ml.torchsim_mace import MaceModel, batched_neighbour_list

from mlip_helpers import mace_model_file, small_cell  # noqa: F401 -- the module fixture; tests/ is on sys.path


def awkward_systems() -> list:
    """Systems of different sizes: a rattled 40-atom cell, a sheared 10-atom one with atoms outside the cell, and a
    5-atom cell far smaller than the cutoffs (several images along each axis)."""
    rng = np.random.default_rng(3)
    big = antiperovskite('Ag', 'S', 'I', 4.8).repeat(2)
    big.positions += rng.normal(0, 0.1, big.positions.shape)
    sheared = small_cell(True, seed=1)
    sheared.set_cell(sheared.cell[:] + np.array([[0, 0, 0], [1.5, 0, 0], [0.7, 0.4, 0]]), scale_atoms=True)
    sheared.positions[3] += 2 * sheared.cell[0] - sheared.cell[2]  # unwrapped: two cells away
    sheared.positions[7] -= sheared.cell[1]
    unit = antiperovskite('Ag', 'S', 'Br', 4.6)
    unit.positions += rng.normal(0, 0.05, unit.positions.shape)
    return [big, sheared, unit]


def edges_of(edge_index, shifts, start: int, stop: int) -> list:
    keep = (edge_index[0] >= start) & (edge_index[0] < stop)
    return sorted(zip((edge_index[0][keep] - start).tolist(), (edge_index[1][keep] - start).tolist(),
                      [tuple(int(round(v)) for v in row) for row in shifts[keep].tolist()]))


@pytest.mark.parametrize('cutoff', [3.0, 5.0, 6.0, 9.5])
@pytest.mark.parametrize('pairs_per_chunk', [1, 20_000_000])
def test_neighbour_list_is_vesins_for_every_system(cutoff, pairs_per_chunk):
    """Every (i, j, lattice translation) within the cutoff, each system separately, exactly as vesin finds them,
    whether the systems are searched one chunk at a time or all together."""
    from vesin import NeighborList

    systems = awkward_systems()
    state = ts.io.atoms_to_state(systems, 'cpu', torch.float64)
    edge_index, shifts = batched_neighbour_list(state.positions, state.row_vector_cell, state.system_idx, cutoff,
                                                pairs_per_chunk=pairs_per_chunk)
    start = 0
    for atoms in systems:
        i, j, s = NeighborList(cutoff=cutoff, full_list=True).compute(atoms.positions, atoms.cell[:], True, 'ijS')
        expected = sorted(zip(i.tolist(), j.tolist(), map(tuple, s.tolist())))
        assert edges_of(edge_index, shifts, start, start + len(atoms)) == expected
        assert len(expected) > 0
        start += len(atoms)
    # the vectors the model sees are the minimum-image-free distances below the cutoff
    system_of_edge = state.system_idx[edge_index[0]]
    vectors = (state.positions[edge_index[1]] - state.positions[edge_index[0]]
               + torch.einsum('ek,ekl->el', shifts, state.row_vector_cell[system_of_edge]))
    assert float(vectors.norm(dim=1).max()) < cutoff


def test_mace_model_matches_torchsims_wrapper():
    """Energies, forces and stress of the same MACE through the batched neighbour list and through TorchSim 0.3's
    own wrapper (vesin, system by system) agree to rounding."""
    from torch_sim.models.mace import MaceModel as TorchSimMace

    module = random_mace('demo', [16, 35, 47, 53], scale=1.0)
    systems = awkward_systems()[:2]
    state = ts.io.atoms_to_state(systems, 'cpu', torch.float64)
    ours = MaceModel(module, 'cpu', torch.float64, compute_stress=True)(state)
    theirs = TorchSimMace(model=module, device=torch.device('cpu'), dtype=torch.float64, compute_forces=True,
                          compute_stress=True)(state)
    assert float(theirs['forces'].abs().max()) > 1e-3  # a test that could fail
    for key in ('energy', 'forces', 'stress'):
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-10, atol=1e-12)


def test_mace_model_forces_are_minus_the_energy_gradient():
    """A central finite difference of the energy along one atom's coordinate is minus that force component."""
    module = random_mace('demo', [16, 35, 47, 53], scale=1.0)
    model = MaceModel(module, 'cpu', torch.float64)
    atoms = awkward_systems()[1]
    forces = model(ts.io.atoms_to_state([atoms], 'cpu', torch.float64))['forces'].numpy()
    h, energies = 1e-4, []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions[2, 1] += sign * h
        energies.append(float(model(ts.io.atoms_to_state([moved], 'cpu', torch.float64))['energy'][0]))
    assert -(energies[0] - energies[1]) / (2 * h) == pytest.approx(forces[2, 1], abs=1e-7)


def test_mace_model_rejects_elements_it_was_not_trained_on():
    model = MaceModel(random_mace('demo', [16, 47, 53]), 'cpu', torch.float64)
    with pytest.raises(ValueError, match='not trained on'):
        model(ts.io.atoms_to_state([antiperovskite('Ag', 'S', 'Br', 4.6)], 'cpu', torch.float64))


def test_memory_batch_size_on_the_cpu_takes_every_system():
    model = MaceModel(random_mace('demo', [16, 35, 47, 53]), 'cpu', torch.float64)
    sized = memory_batch_size(model, awkward_systems() * 4)
    assert sized == {'batch_size': 12, 'bytes_per_atom': None, 'free_bytes': None, 'fraction': 0.5, 'device': 'cpu'}


def test_loading_leaves_torchs_default_dtype_alone(mace_model_file):
    """MACE sets the process-wide default dtype while it loads; the loader restores it (a float64 default broke
    every float32 tensor built after it, the GNN benchmark's too)."""
    before = torch.get_default_dtype()
    load_mace_model(str(mace_model_file), 'cpu', 'float64')
    assert torch.get_default_dtype() == before


def test_float32_md_agrees_with_float64_within_its_statistical_error(mace_model_file):
    """The same replicas (same seeds) in float32 and float64 diverge step by step, as any two chaotic runs do, but
    their averages must agree: the mean potential energy per atom and the mean kinetic temperature of the second
    half, over 12 replicas at 300 K, within 3.5 combined standard errors of the replica means."""
    model_path = str(mace_model_file)
    systems = [small_cell(bool(i % 2), seed=i, rattle=0.02) for i in range(12)]
    averages = {}
    for dtype in ('float32', 'float64'):
        model = load_torchsim_model(model_path, 'cpu', dtype)
        assert model.dtype == getattr(torch, dtype)
        runs = run_replicas(model, systems, [300.0] * 12, list(range(12)), steps=400, stride=10, friction=0.02)
        assert all(run.broke is None for run in runs)
        half = len(runs[0].potential_energy) // 2
        averages[dtype] = {
            'energy': np.array([run.potential_energy[half:].mean() / len(systems[0]) for run in runs]),
            'temperature': np.array([run.temperature[half:].mean() for run in runs])}
    for quantity in ('energy', 'temperature'):
        single, double = averages['float32'][quantity], averages['float64'][quantity]
        error = np.hypot(single.std(ddof=1), double.std(ddof=1)) / np.sqrt(len(single))
        assert abs(single.mean() - double.mean()) < 3.5 * error, (quantity, single.mean(), double.mean(), error)
    assert abs(averages['float64']['temperature'].mean() - 300.0) < 60.0


def test_batch_plan_says_how_the_batch_was_sized():
    model = MaceModel(random_mace('demo', [16, 35, 47, 53]), 'cpu', torch.float64)
    systems = awkward_systems()
    assert batch_plan(model, systems, 2) == {'batch_size': 2, 'sized_by': 'max_batch'}
    assert batch_plan(model, systems, None) == {'batch_size': 3, 'sized_by': 'all'}
    auto = batch_plan(model, systems, 'auto')
    assert auto['sized_by'] == 'memory' and auto['batch_size'] == 3 and auto['device'] == 'cpu'


def test_cuequivariance_is_asked_for_only_on_a_gpu():
    """On the CPU the model stays on e3nn's kernels even when cuEquivariance is asked for (its CPU path is a slow
    reference implementation); the kernels used are recorded."""
    model = MaceModel(random_mace('demo', [16, 35, 47, 53]), 'cpu', torch.float64, enable_cueq=True)
    assert model.kernels == 'e3nn'


def test_precision_auto_is_float32_for_md_and_relaxation_on_a_gpu_only(monkeypatch):
    """``dtype: auto``: float64 on the CPU; on a GPU float32 for MD and relaxations, float64 for the
    finite-displacement phonons; an explicit dtype always wins."""
    import aiida_capthermo.ml.mace as mace
    from aiida_capthermo.ml.settings import MdConfig, ModesConfig, PhononConfig, ScreenConfig, ThermalMdConfig

    settings = [ThermalMdConfig(), MdConfig(), ScreenConfig(), PhononConfig(), ModesConfig()]
    assert [s.precision() for s in settings] == ['float64'] * 5  # this machine has no GPU
    monkeypatch.setattr(mace, 'resolve_device', lambda device='auto': 'cuda')
    assert [s.precision() for s in settings] == ['float32', 'float32', 'float32', 'float64', 'float64']
    assert ThermalMdConfig(dtype='float64').precision() == 'float64'
    assert 'gpu_dtype' not in ThermalMdConfig().model_dump()
