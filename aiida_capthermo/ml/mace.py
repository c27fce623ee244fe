"""MACE on the compute side: load a model (file or named foundation), batched prediction, evaluation, phonon check.

Units: energies eV, forces eV/Å, stress eV/Å^3 as Voigt ``(xx, yy, zz, yz, xz, xy)`` with ASE's sign (the sign MACE
is trained with from ``REF_stress``), frequencies THz.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.ml.gnn.metrics import regression_metrics  # MAE, RMSE, R^2 over all components

__all__ = ['resolve_device', 'load_mace_model', 'random_mace', 'predict', 'regression_metrics', 'evaluate_model',
           'phonon_frequency_check']


def resolve_device(device: str = 'auto') -> str:
    """``auto`` -> ``cuda`` when a CUDA device is visible, else ``cpu``."""
    import torch

    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    return device


def load_mace_model(model: str, device: str = 'auto', dtype: str = 'float64'):
    """Load a MACE model from a ``.model`` file or, when ``model`` is not a file, a named MACE-MP foundation model.

    A named model (``medium-mpa-0``...) goes through MACE's own resolution (package copy, cache, download); offline
    and uncached it raises. Returns the ``torch.nn.Module`` in ``dtype`` on ``device``, gradients off for weights.
    """
    import os

    import torch

    from aiida_capthermo.ml.settings import torch_default_dtype

    device = resolve_device(device)
    with torch_default_dtype(dtype):  # MACE loads in the process-wide default; the caller's default is restored
        if os.path.isfile(model):
            module = torch.load(model, map_location=device, weights_only=False)
        else:
            from mace.calculators import mace_mp

            module = mace_mp(model=model, device=device, default_dtype=dtype, return_raw_model=True)
    module = module.to(device).to(torch.float64 if dtype == 'float64' else torch.float32)
    for parameter in module.parameters():
        parameter.requires_grad = False
    return module


#: Architectures of :func:`random_mace`: the demo's potential and one of the size of the MACE-MPA-0 medium
#: foundation (128x0e + 128x1o, correlation 3, 2 interactions, r_max 6 Å, 89 elements).
ARCHITECTURES = {
    'demo': {'num_channels': 16, 'max_L': 1, 'correlation': 2, 'num_interactions': 2, 'r_max': 5.0},
    'medium': {'num_channels': 128, 'max_L': 1, 'correlation': 3, 'num_interactions': 2, 'r_max': 6.0},
}


def random_mace(architecture: str | dict, atomic_numbers: Sequence[int] = tuple(range(1, 90)), seed: int = 0,
                scale: float = 0.05, avg_num_neighbors: float = 40.0):
    """A MACE (``ScaleShiftMACE``, residual interactions, max_ell 3, 8 Bessel functions) with random weights, of a
    named architecture of :data:`ARCHITECTURES` or a dict of the same keys, in float64 on the CPU.

    Its energies mean nothing: it exists to time the MD, relaxation and fine-tuning machinery with a model of a
    given size, and to test plumbing that must give the same numbers for any model. ``scale`` (eV) keeps its
    forces small enough that short runs stay near their starting structures.
    """
    import mace  # noqa: F401 -- before e3nn: importing mace allows the full torch.load that e3nn's import needs
    import torch
    from e3nn import o3
    from mace import modules

    from aiida_capthermo.ml.settings import torch_default_dtype

    arch = ARCHITECTURES[architecture] if isinstance(architecture, str) else architecture
    numbers = sorted(int(z) for z in atomic_numbers)
    hidden = o3.Irreps(' + '.join(f"{arch['num_channels']}x{ell}{'e' if ell % 2 == 0 else 'o'}"
                                  for ell in range(arch['max_L'] + 1)))
    residual = modules.interaction_classes['RealAgnosticResidualInteractionBlock']
    with torch_default_dtype('float64'):
        torch.manual_seed(seed)
        model = modules.ScaleShiftMACE(
            r_max=float(arch['r_max']), num_bessel=8, num_polynomial_cutoff=5, max_ell=3, interaction_cls=residual,
            interaction_cls_first=residual, num_interactions=int(arch['num_interactions']),
            num_elements=len(numbers), hidden_irreps=hidden, MLP_irreps=o3.Irreps('16x0e'),
            atomic_energies=np.zeros(len(numbers)), avg_num_neighbors=avg_num_neighbors, atomic_numbers=numbers,
            correlation=int(arch['correlation']), gate=torch.nn.functional.silu, atomic_inter_scale=scale,
            atomic_inter_shift=0.0)
    for parameter in model.parameters():
        parameter.requires_grad = False
    return model


def predict(model, atoms_list: Sequence, batch_size: int = 8, device: str | None = None) -> dict[str, np.ndarray]:
    """Batched energies [n] (eV), forces [n_atoms_total, 3] (eV/Å), stresses [n, 6] (eV/Å^3) of ``atoms_list``."""
    from mace import data as mace_data
    from mace.tools import torch_geometric, utils

    from aiida_capthermo.ml.settings import torch_default_dtype

    device = device or next(model.parameters()).device
    z_table = utils.AtomicNumberTable([int(z) for z in model.atomic_numbers])
    heads = getattr(model, 'heads', None)
    configs = [mace_data.config_from_atoms(atoms) for atoms in atoms_list]
    with torch_default_dtype(str(next(model.parameters()).dtype).removeprefix('torch.')):  # MACE's data: the default
        dataset = [mace_data.AtomicData.from_config(c, z_table=z_table, cutoff=float(model.r_max), heads=heads)
                   for c in configs]
    loader = torch_geometric.dataloader.DataLoader(dataset=dataset, batch_size=batch_size, shuffle=False,
                                                   drop_last=False)
    energies, forces, stresses = [], [], []
    for batch in loader:
        batch = batch.to(device)
        output = model(batch.to_dict(), compute_stress=True, training=False)
        energies.append(output['energy'].detach().cpu().numpy())
        forces.append(output['forces'].detach().cpu().numpy())
        stress = output['stress'].detach().cpu().numpy()  # [n_graphs, 3, 3]
        stresses.append(stress[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]])
    return {'energy': np.concatenate(energies), 'forces': np.concatenate(forces), 'stress': np.concatenate(stresses)}


def evaluate_model(model, labelled: LabelledSet, batch_size: int = 8) -> tuple[dict, dict[str, np.ndarray]]:
    """Errors of ``model`` on the labelled structures and the parity arrays.

    Energy errors are reported total (eV) and per atom (eV/atom), forces per Cartesian component (eV/Å), stress per
    Voigt component (eV/Å^3). Each label is compared on the structures that carry it.

    Returns
    -------
    (metrics, parity): parity holds ``energy_ref``/``energy_pred`` [n] eV, ``n_atoms`` [n], ``forces_ref``/
    ``forces_pred`` [n_atoms_total, 3] eV/Å, ``stress_ref``/``stress_pred`` [n, 6] eV/Å^3 (NaN where unlabelled).
    """
    start = time.perf_counter()
    prediction = predict(model, labelled.to_atoms_list(with_labels=False), batch_size=batch_size)
    seconds = time.perf_counter() - start
    parity = {'energy_ref': labelled.energy, 'energy_pred': prediction['energy'], 'n_atoms': labelled.n_atoms,
              'forces_ref': labelled.forces, 'forces_pred': prediction['forces'], 'stress_ref': labelled.stress,
              'stress_pred': prediction['stress']}
    metrics: dict = {'n_structures': len(labelled), 'n_atoms_total': int(labelled.n_atoms.sum()),
                     'seconds': seconds, 'structures_per_second': len(labelled) / seconds,
                     'units': {'energy': 'eV', 'energy_per_atom': 'eV/atom', 'forces': 'eV/Å', 'stress': 'eV/Å^3'}}
    has_e = labelled.has_label('energy')
    if has_e.any():
        metrics['energy'] = regression_metrics(labelled.energy[has_e], prediction['energy'][has_e])
        metrics['energy_per_atom'] = regression_metrics(labelled.energy[has_e] / labelled.n_atoms[has_e],
                                                        prediction['energy'][has_e] / labelled.n_atoms[has_e])
    finite_f = np.all(np.isfinite(labelled.forces), axis=1)
    if finite_f.any():
        metrics['forces'] = regression_metrics(labelled.forces[finite_f], prediction['forces'][finite_f])
    has_s = labelled.has_label('stress')
    if has_s.any():
        metrics['stress'] = regression_metrics(labelled.stress[has_s], prediction['stress'][has_s])
    return metrics, parity


def phonon_frequency_check(model, numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray,
                           supercell_matrix: np.ndarray, reference_force_constants: np.ndarray,
                           mesh: Sequence[int] = (4, 4, 4), displacement: float = 0.01) -> tuple[dict, dict]:
    """Harmonic frequencies with ``model`` vs reference force constants on a Γ-centred q-mesh (paper Fig. 5).

    Parameters
    ----------
    numbers, positions, cell
        The unit cell (positions and cell in Å).
    supercell_matrix
        [3, 3] supercell of the finite displacements (the same as the reference's).
    reference_force_constants
        [n_s, n_s, 3, 3] force constants (eV/Å^2) of that supercell.
    mesh
        q-point mesh; displacement: finite displacement amplitude in Å.

    Returns
    -------
    (outputs, arrays): ``frequency_mae_thz``, ``frequency_rmse_thz``, ``max_abs_error_thz``, counts of imaginary
    modes; arrays ``qpoints`` [n_q, 3], ``frequencies_model``/``frequencies_reference`` [n_q, 3 n_atoms] THz.
    """
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    unit = PhonopyAtoms(numbers=list(numbers), positions=positions, cell=cell)
    phonon = Phonopy(unit, supercell_matrix=np.asarray(supercell_matrix, dtype=int), primitive_matrix=None)
    phonon.generate_displacements(distance=displacement)
    import ase

    supercells = [ase.Atoms(numbers=sc.numbers, positions=sc.positions, cell=sc.cell, pbc=True)
                  for sc in phonon.supercells_with_displacements]
    forces = predict(model, supercells, batch_size=4)['forces'].reshape(len(supercells), -1, 3)
    phonon.forces = forces
    phonon.produce_force_constants()
    phonon.run_mesh(list(mesh), is_gamma_center=True)
    mesh_result = phonon.get_mesh_dict()
    model_freq, qpoints = mesh_result['frequencies'], mesh_result['qpoints']  # [n_q, 3 n_atoms] THz, [n_q, 3]
    phonon.force_constants = np.asarray(reference_force_constants, dtype=float)
    phonon.run_mesh(list(mesh), is_gamma_center=True)
    ref_freq = phonon.get_mesh_dict()['frequencies']
    error = model_freq - ref_freq
    outputs = {'frequency_mae_thz': float(np.mean(np.abs(error))),
               'frequency_rmse_thz': float(np.sqrt(np.mean(error ** 2))),
               'max_abs_error_thz': float(np.max(np.abs(error))), 'n_qpoints': int(len(qpoints)),
               'n_imaginary_model': int(np.sum(model_freq < -1e-3)),
               'n_imaginary_reference': int(np.sum(ref_freq < -1e-3)),
               'n_displacements': len(supercells)}
    return outputs, {'qpoints': qpoints, 'frequencies_model': model_freq, 'frequencies_reference': ref_freq}
