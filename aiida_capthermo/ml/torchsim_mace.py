"""MACE as a TorchSim model whose neighbour list is built for every system of the batch at once, on the model's device.

TorchSim 0.3's own MACE wrapper builds the neighbour list system by system on the CPU (vesin, float64) and copies it
back: one Python iteration and two host-device copies per replica per step. On a GPU with hundreds of replicas that
loop, not the model, sets the step time. :func:`batched_neighbour_list` does the same search as one set of tensor
operations for all systems (minimum periodic images found from the cells' heights, all atom pairs of a system
against all images, a cut at ``cutoff``), chunked so that no more than ``pairs_per_chunk`` candidate pairs are held
at once. :class:`MaceModel` feeds it to the MACE ``torch.nn.Module`` as TorchSim's wrapper does (one-hot species,
``ptr``, shifts), so energies, forces and stress are the same to rounding (``tests/test_torchsim_mace.py`` checks
both the edges against vesin and the forces against TorchSim's wrapper).

With ``enable_cueq`` the model is converted to NVIDIA's cuEquivariance kernels (``mace.cli.convert_e3nn_cueq``) on
a GPU where ``cuequivariance_torch`` is installed (the optional extra ``cueq``); :attr:`MaceModel.kernels` records
which kernels run: ``'e3nn'`` or ``'cuequivariance'``.

Units: Å, eV.
"""

from __future__ import annotations

import itertools

import torch
from torch_sim.models.interface import ModelInterface

__all__ = ['batched_neighbour_list', 'periodic_images', 'cueq_available', 'MaceModel']

#: Candidate pairs (atom pairs x periodic images) held at once by :func:`batched_neighbour_list`.
PAIRS_PER_CHUNK = 20_000_000


def periodic_images(cells: torch.Tensor, cutoff: float) -> torch.Tensor:
    """The integer lattice translations [T, 3] that can bring an atom within ``cutoff`` (Å) of another atom of the
    same cell, for every cell of ``cells`` [S, 3, 3] (rows are lattice vectors) and positions wrapped into the cell:
    ``ceil(cutoff / h_i)`` repeats either way along axis ``i``, where ``h_i`` is the cell's height across the
    other two vectors (the largest over the systems)."""
    volume = torch.abs(torch.linalg.det(cells))  # [S]
    cross = torch.stack([torch.linalg.cross(cells[:, 1], cells[:, 2]), torch.linalg.cross(cells[:, 2], cells[:, 0]),
                         torch.linalg.cross(cells[:, 0], cells[:, 1])], dim=1)  # [S, 3, 3]
    heights = volume[:, None] / torch.linalg.norm(cross, dim=-1)  # [S, 3]
    repeats = torch.ceil(cutoff / heights).max(dim=0).values.to(torch.long).tolist()
    grid = itertools.product(*(range(-n, n + 1) for n in repeats))
    return torch.tensor(list(grid), dtype=cells.dtype, device=cells.device)


def batched_neighbour_list(positions: torch.Tensor, cells: torch.Tensor, system_idx: torch.Tensor, cutoff: float,
                           pairs_per_chunk: int = PAIRS_PER_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair of atoms of the same system closer than ``cutoff`` (Å) under periodic boundary conditions.

    Parameters
    ----------
    positions
        [N, 3] Å, systems contiguous (as in a TorchSim state).
    cells
        [S, 3, 3] Å, rows are lattice vectors.
    system_idx
        [N] system of each atom, sorted.
    cutoff
        Å.
    pairs_per_chunk
        Candidate pairs (atom pairs x periodic images) held at once; systems are searched in chunks below it.

    Returns
    -------
    edge_index
        [2, E] (i, j), both directions, as matscipy's and vesin's ``ij``.
    unit_shifts
        [E, 3] integer lattice translations (in the positions' dtype): the vector from i to j is
        ``positions[j] - positions[i] + unit_shifts @ cells[system of i]``, for the positions as given (unwrapped).
    """
    n_systems = cells.shape[0]
    device = positions.device
    counts = torch.bincount(system_idx, minlength=n_systems)
    starts = torch.cumsum(counts, 0) - counts
    # Wrap into the cell, remembering the lattice translation taken off each atom.
    inverse = torch.linalg.inv(cells)
    fractional = torch.einsum('ni,nij->nj', positions, inverse[system_idx])
    offset = torch.floor(fractional)
    wrapped = torch.einsum('ni,nij->nj', fractional - offset, cells[system_idx])
    images = periodic_images(cells, cutoff)  # [T, 3]
    pairs_of_system = (counts * counts).tolist()
    per_image = len(images)
    edges, shifts = [], []
    first = 0
    while first < n_systems:  # chunks of whole systems
        last, held = first, 0
        while last < n_systems and (last == first or held + pairs_of_system[last] * per_image <= pairs_per_chunk):
            held += pairs_of_system[last] * per_image
            last += 1
        atoms = torch.arange(int(starts[first]), int(starts[last - 1] + counts[last - 1]), device=device)
        partners = counts[system_idx[atoms]]  # each atom pairs with every atom of its system
        i = torch.repeat_interleave(atoms, partners)
        within = torch.arange(len(i), device=device) - torch.repeat_interleave(torch.cumsum(partners, 0) - partners,
                                                                               partners)
        j = starts[system_idx[i]] + within
        lattice = torch.einsum('tk,pkl->ptl', images, cells[system_idx[i]])  # [P, T, 3]
        vectors = (wrapped[j] - wrapped[i])[:, None, :] + lattice
        close = (vectors * vectors).sum(-1) < cutoff * cutoff
        close &= ~((i == j)[:, None] & (images == 0).all(-1)[None, :])  # not an atom with itself
        pair, image = torch.nonzero(close, as_tuple=True)
        i, j = i[pair], j[pair]
        edges.append(torch.stack((i, j)))
        shifts.append(images[image] + offset[i] - offset[j])
        first = last
    return torch.cat(edges, dim=1), torch.cat(shifts, dim=0)


def cueq_available() -> bool:
    """True when NVIDIA's cuEquivariance for torch is importable (the optional extra ``cueq``)."""
    try:
        import cuequivariance_torch  # noqa: F401
    except ImportError:
        return False
    return True


class MaceModel(ModelInterface):
    """A MACE ``torch.nn.Module`` as a TorchSim model, with :func:`batched_neighbour_list`.

    Parameters
    ----------
    model
        The MACE module (``aiida_capthermo.ml.mace.load_mace_model``).
    device, dtype
        Where and in which precision it runs (the module is moved and cast).
    compute_forces, compute_stress
        What :meth:`forward` returns beside the energy.
    enable_cueq
        Convert to cuEquivariance kernels on a GPU where they are installed; otherwise e3nn's, recorded in
        :attr:`kernels`.
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device = 'cpu', dtype: torch.dtype = torch.float64,
                 compute_forces: bool = True, compute_stress: bool = False, enable_cueq: bool = False,
                 pairs_per_chunk: int = PAIRS_PER_CHUNK) -> None:
        super().__init__()
        self._device, self._dtype = torch.device(device), dtype
        self._compute_forces, self._compute_stress = compute_forces, compute_stress
        self._memory_scales_with = 'n_atoms_x_density'
        self.kernels = 'e3nn'
        model = model.to(self._device).to(dtype).eval()
        if enable_cueq and self._device.type == 'cuda' and cueq_available():
            from mace.cli.convert_e3nn_cueq import run as e3nn_to_cueq

            model = e3nn_to_cueq(model, device=str(self._device))
            self.kernels = 'cuequivariance'
        self.model = model
        self.r_max = float(model.r_max)
        self.pairs_per_chunk = pairs_per_chunk
        species = [int(z) for z in model.atomic_numbers]
        index = torch.full((max(species) + 1,), -1, dtype=torch.long)
        index[species] = torch.arange(len(species))
        self.species_index = index.to(self._device)
        self.n_species = len(species)
        self._checked_numbers = None

    @property
    def precision(self) -> str:
        """``'float32'`` or ``'float64'``: the dtype the model runs in, as the settings name it."""
        return str(self._dtype).removeprefix('torch.')

    def forward(self, state, **kwargs) -> dict[str, torch.Tensor]:
        numbers = state.atomic_numbers
        if numbers is not self._checked_numbers:  # once per state, not every MD step (two host syncs each)
            if int(numbers.max()) >= len(self.species_index) or bool((self.species_index[numbers] < 0).any()):
                raise ValueError(f'the state has elements the model was not trained on: '
                                 f'{sorted(set(numbers.tolist()))} (model: {self.model.atomic_numbers.tolist()})')
            self._checked_numbers = numbers
        n_systems = state.n_systems
        system_idx = state.system_idx
        cells = state.row_vector_cell
        counts = torch.bincount(system_idx, minlength=n_systems)
        ptr = torch.cat((counts.new_zeros(1), torch.cumsum(counts, 0)))
        edge_index, unit_shifts = batched_neighbour_list(state.positions.detach(), cells.detach(), system_idx,
                                                         self.r_max, self.pairs_per_chunk)
        shifts = torch.einsum('ek,ekl->el', unit_shifts, cells[system_idx[edge_index[0]]])
        node_attrs = torch.nn.functional.one_hot(self.species_index[numbers], self.n_species).to(self._dtype)
        out = self.model(
            {'ptr': ptr, 'node_attrs': node_attrs, 'batch': system_idx, 'pbc': state.pbc, 'cell': cells,
             'positions': state.positions, 'edge_index': edge_index, 'unit_shifts': unit_shifts, 'shifts': shifts},
            compute_force=self._compute_forces, compute_stress=self._compute_stress)
        results = {'energy': out['energy'].detach()}
        if self._compute_forces:
            results['forces'] = out['forces'].detach()
        if self._compute_stress:
            results['stress'] = out['stress'].detach()
        return results
