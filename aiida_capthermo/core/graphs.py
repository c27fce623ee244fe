"""Periodic radius graphs and atomic node features for the band-gap GNN (numpy only).

A structure becomes a graph whose nodes are its atoms and whose edges are all pairs ``(i, j, S)``
with ``|r_j + S @ cell - r_i| < cutoff`` for every integer lattice translation ``S`` (periodic
image). An atom bonded to its own periodic image is a self-edge ``(i, i, S)`` with ``S != 0``; the
trivial ``(i, i, 0)`` is never an edge. Both directions ``(i, j, S)`` and ``(j, i, -S)`` are present,
so the edge set is exactly that of ``ase.neighborlist.neighbor_list(..., self_interaction=False)``.

Correctness of the image range: with fractional coordinates wrapped into ``[0, 1)`` the difference
``df = f_j - f_i`` lies in ``(-1, 1)`` and the component of an edge vector along reciprocal vector
``b_k`` (``a_l . b_k = delta_lk``, ``|b_k| = 1 / d_k`` with ``d_k`` the spacing of lattice planes) is
``s_k + df_k``; it is bounded by ``cutoff * |b_k|``. Hence ``|s_k| <= ceil(cutoff * |b_k|)`` covers
every edge for any cell shape, including cells smaller than twice the cutoff.

Units: positions, cells, distances and cutoffs in Å; masses in amu; radii in Å; electronegativity on
the Pauling scale.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    'PeriodicGraph', 'radius_graph_pbc', 'radius_graphs_pbc', 'radius_graph_pbc_loop', 'image_range',
    'NODE_FEATURE_NAMES',
    'node_features', 'MinMaxScaler', 'bond_types',
]

DEFAULT_CUTOFF = 5.5  # Å, the papers' converged value
NODE_FEATURE_NAMES = ('atomic_number', 'atomic_mass', 'atomic_radius', 'electronegativity')


@dataclasses.dataclass
class PeriodicGraph:
    """Edges of one periodic structure.

    ``edge_index[0]`` is the centre atom ``i``, ``edge_index[1]`` the neighbour ``j``;
    ``vectors = positions[j] + shifts @ cell - positions[i]`` with the positions as given (not wrapped).
    """

    edge_index: np.ndarray  # [2, n_edges] int64
    shifts: np.ndarray  # [n_edges, 3] int64, lattice translation of atom j
    distances: np.ndarray  # [n_edges] Å
    vectors: np.ndarray  # [n_edges, 3] Å

    @property
    def n_edges(self) -> int:
        return self.edge_index.shape[1]

    def edge_set(self) -> set[tuple[int, int, int, int, int]]:
        """The edges as a set of ``(i, j, s1, s2, s3)`` tuples, for comparisons."""
        return set(map(tuple, np.column_stack([self.edge_index.T, self.shifts]).tolist()))


def image_range(cell: np.ndarray, cutoff: float, pbc: Sequence[bool] = (True, True, True)) -> np.ndarray:
    """Largest lattice translation needed along each cell vector: ``ceil(cutoff * |b_k|)`` (0 if not periodic).

    Parameters
    ----------
    cell : [3, 3] array, Å, lattice vectors as rows.
    cutoff : float, Å.
    pbc : three booleans.

    Returns
    -------
    [3] int array.
    """
    reciprocal = np.linalg.inv(np.asarray(cell, dtype=float))  # columns b_k, a_l . b_k = delta_lk
    n_images = np.ceil(cutoff * np.linalg.norm(reciprocal, axis=0) - 1e-12).astype(np.int64)  # [3]
    return np.where(np.asarray(pbc, dtype=bool), np.maximum(n_images, 0), 0)


def _validate(positions, cell, cutoff) -> tuple[np.ndarray, np.ndarray]:
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    cell = np.asarray(cell, dtype=float).reshape(3, 3)
    if not cutoff > 0:
        raise ValueError(f'the cutoff must be positive, got {cutoff}')
    if abs(np.linalg.det(cell)) < 1e-8:
        raise ValueError('the cell is singular (zero volume); a periodic graph needs three lattice vectors')
    if not np.all(np.isfinite(positions)):
        raise ValueError('positions contain NaN or infinite values')
    return positions, cell


def radius_graph_pbc(positions: np.ndarray, cell: np.ndarray, cutoff: float = DEFAULT_CUTOFF,
                     pbc: Sequence[bool] = (True, True, True)) -> PeriodicGraph:
    """All edges within ``cutoff`` of one structure with periodic images (see :func:`radius_graphs_pbc`).

    Parameters
    ----------
    positions : [n_atoms, 3] array, Å (may lie outside the cell).
    cell : [3, 3] array, Å, lattice vectors as rows.
    cutoff : float, Å; an edge has distance strictly below it.
    pbc : periodicity along each cell vector.
    """
    return radius_graphs_pbc([positions], [cell], cutoff, pbc)[0]


def radius_graphs_pbc(positions: Sequence[np.ndarray], cells: Sequence[np.ndarray], cutoff: float = DEFAULT_CUTOFF,
                      pbc: Sequence[bool] = (True, True, True), max_elements: int = 1_000_000) -> list[PeriodicGraph]:
    """Periodic radius graphs of many structures, vectorised over structures, atom pairs and images.

    Structures with the same number of atoms and the same image range are processed together in chunks of
    about ``max_elements`` candidate (pair, image) distances. Candidates are screened with
    ``|d + T|^2 = |d|^2 + 2 d.T + |T|^2`` (one matrix product) and every survivor is re-checked with its
    explicit vector, so the edge set is exact.

    Parameters
    ----------
    positions : per structure an [n_atoms, 3] array, Å.
    cells : per structure a [3, 3] array, Å, lattice vectors as rows.
    cutoff : float, Å.
    pbc : periodicity along each cell vector (same for all structures).
    max_elements : memory bound of a chunk (8 bytes each, a few arrays of this size).

    Returns
    -------
    One :class:`PeriodicGraph` per structure; edges ordered by ``i``, then ``j``, then image.
    """
    if len(positions) != len(cells):
        raise ValueError(f'{len(positions)} position arrays for {len(cells)} cells')
    checked = [_validate(p, c, cutoff) for p, c in zip(positions, cells)]
    pbc = np.asarray(pbc, dtype=bool)
    groups: dict[tuple, list[int]] = {}
    for index, (pos, cell) in enumerate(checked):
        groups.setdefault((len(pos), tuple(image_range(cell, cutoff, pbc))), []).append(index)
    graphs: list[PeriodicGraph | None] = [None] * len(checked)
    for (n_atoms, n_images), indices in groups.items():
        images = np.array(list(itertools.product(*(range(-n, n + 1) for n in n_images))), dtype=np.int64)  # [M, 3]
        chunk = max(1, max_elements // max(1, n_atoms * n_atoms * len(images)))
        for start in range(0, len(indices), chunk):
            selected = indices[start:start + chunk]
            batch = _graphs_same_shape(np.stack([checked[i][0] for i in selected]),
                                       np.stack([checked[i][1] for i in selected]), images, cutoff, pbc)
            for index, graph in zip(selected, batch):
                graphs[index] = graph
    return graphs


def _graphs_same_shape(positions: np.ndarray, cells: np.ndarray, images: np.ndarray, cutoff: float,
                       pbc: np.ndarray) -> list[PeriodicGraph]:
    """Graphs of B structures with the same atom count and image set (see :func:`radius_graphs_pbc`).

    Only pairs ``i <= j`` are searched (the image set is symmetric, ``S`` and ``-S`` both in it); the edges
    ``(j, i, -S)`` of ``i < j`` are added by mirroring, which halves the work.
    """
    n_batch, n_atoms = positions.shape[:2]
    fractional = positions @ np.linalg.inv(cells)  # [B, n, 3]
    wrap = np.where(pbc, np.floor(fractional), 0.0)  # [B, n, 3] translation that brings each atom into the cell
    wrapped = (fractional - wrap) @ cells  # [B, n, 3] Å
    upper_i, upper_j = np.triu_indices(n_atoms)  # [P] pairs i <= j
    pair = wrapped[:, upper_j, :] - wrapped[:, upper_i, :]  # [B, P, 3]  r_j - r_i
    translations = np.einsum('mk,bkl->bml', images.astype(float), cells)  # [B, M, 3] Å
    # screening in single precision (half the memory traffic); the margin covers its rounding
    pair32, translations32 = pair.astype(np.float32), translations.astype(np.float32)
    distance2 = pair32 @ (2.0 * translations32).transpose(0, 2, 1)  # [B, P, M], in place from here on
    distance2 += np.einsum('bpk,bpk->bp', pair32, pair32)[:, :, None]
    distance2 += np.einsum('bmk,bmk->bm', translations32, translations32)[:, None, :]
    cutoff2 = cutoff * cutoff
    scale = float(np.max(np.abs(pair))) + float(np.max(np.abs(translations))) + cutoff
    b, p, m = np.nonzero(distance2 < np.float32(cutoff2 + 1e-5 * scale * scale))
    i, j = upper_i[p], upper_j[p]
    candidate = pair[b, p] + translations[b, m]  # [n_candidates, 3] explicit float64 vectors
    zero_image = int(np.flatnonzero(np.all(images == 0, axis=1))[0])
    length2 = np.einsum('ek,ek->e', candidate, candidate)
    keep = (length2 < cutoff2) & ~((i == j) & (m == zero_image))
    b, i, j, image = b[keep], i[keep], j[keep], images[m[keep]]
    vectors, length2 = candidate[keep], length2[keep]
    mirror = i != j  # (i, i, S) and (i, i, -S) were both searched; (j, i, -S) of i < j were not
    b = np.concatenate([b, b[mirror]])
    i, j = np.concatenate([i, j[mirror]]), np.concatenate([j, i[mirror]])
    image = np.concatenate([image, -image[mirror]])
    vectors = np.concatenate([vectors, -vectors[mirror]])  # [E, 3]; equal to r_j + S.cell - r_i as given
    length2 = np.concatenate([length2, length2[mirror]])
    order = np.argsort((b * n_atoms + i) * n_atoms + j, kind='stable')  # by structure, then i, then j
    b, i, j, image, vectors = b[order], i[order], j[order], image[order], vectors[order]
    distances = np.sqrt(length2[order])
    shifts = image + (wrap[b, i] - wrap[b, j]).astype(np.int64)  # [E, 3] shift for the positions as given
    bounds = np.searchsorted(b, np.arange(n_batch + 1))
    return [PeriodicGraph(edge_index=np.stack([i[lo:hi], j[lo:hi]]).astype(np.int64), shifts=shifts[lo:hi],
                          distances=distances[lo:hi], vectors=vectors[lo:hi])
            for lo, hi in itertools.pairwise(bounds)]


def radius_graph_pbc_loop(positions: np.ndarray, cell: np.ndarray, cutoff: float = DEFAULT_CUTOFF) -> PeriodicGraph:
    """The same graph with a plain per-pair, per-image Python loop (reference and benchmark baseline)."""
    positions, cell = _validate(positions, cell, cutoff)
    inverse = np.linalg.inv(cell)
    frac = (positions @ inverse).tolist()
    wrap = [[math.floor(f) for f in row] for row in frac]
    frac_wrapped = [[f - w for f, w in zip(row, wrap_row)] for row, wrap_row in zip(frac, wrap)]
    a = cell.tolist()
    n1, n2, n3 = (int(n) for n in image_range(cell, cutoff))
    edges, distances = [], []
    for i, fi in enumerate(frac_wrapped):
        for j, fj in enumerate(frac_wrapped):
            for s1 in range(-n1, n1 + 1):
                for s2 in range(-n2, n2 + 1):
                    for s3 in range(-n3, n3 + 1):
                        if i == j and s1 == 0 and s2 == 0 and s3 == 0:
                            continue
                        d1, d2, d3 = fj[0] - fi[0] + s1, fj[1] - fi[1] + s2, fj[2] - fi[2] + s3
                        x = d1 * a[0][0] + d2 * a[1][0] + d3 * a[2][0]
                        y = d1 * a[0][1] + d2 * a[1][1] + d3 * a[2][1]
                        z = d1 * a[0][2] + d2 * a[1][2] + d3 * a[2][2]
                        r = math.sqrt(x * x + y * y + z * z)
                        if r < cutoff:
                            edges.append((i, j, s1 + wrap[i][0] - wrap[j][0], s2 + wrap[i][1] - wrap[j][1],
                                          s3 + wrap[i][2] - wrap[j][2]))
                            distances.append(r)
    edges_array = np.array(edges, dtype=np.int64).reshape(-1, 5)
    shifts = edges_array[:, 2:]
    vectors = positions[edges_array[:, 1]] + shifts @ cell - positions[edges_array[:, 0]]
    return PeriodicGraph(edge_index=edges_array[:, :2].T.copy(), shifts=shifts,
                         distances=np.array(distances, dtype=float), vectors=vectors)


# ---------------------------------------------------------------------------------------------- node features
def element_table(numbers: Sequence[int]) -> dict[int, tuple[float, float, float, float]]:
    """Raw features of each element: atomic number, mass (amu), atomic radius (Å), Pauling electronegativity.

    Masses come from ASE (``ase.data.atomic_masses``), empirical atomic radii and electronegativities from
    pymatgen's periodic table (``Element.atomic_radius``, ``Element.X``), both maintained upstream.
    """
    from ase.data import atomic_masses
    from pymatgen.core.periodic_table import Element

    table = {}
    for number in sorted({int(n) for n in numbers}):
        element = Element.from_Z(number)
        radius = element.atomic_radius
        if radius is None or not np.isfinite(element.X):
            raise ValueError(f'no atomic radius or electronegativity is tabulated for {element.symbol}')
        table[number] = (float(number), float(atomic_masses[number]), float(radius), float(element.X))
    return table


def node_features(numbers: Sequence[int]) -> np.ndarray:
    """Raw (not normalised) node features, [n_atoms, 4], in the order of :data:`NODE_FEATURE_NAMES`."""
    numbers = np.asarray(numbers, dtype=np.int64)
    table = element_table(numbers)
    return np.array([table[int(n)] for n in numbers], dtype=float).reshape(-1, len(NODE_FEATURE_NAMES))


@dataclasses.dataclass
class MinMaxScaler:
    """Min-max normalisation ``(v - minimum) / (maximum - minimum)`` per column, JSON round-trippable.

    A column with ``maximum == minimum`` (e.g. a single element) maps to 0.
    """

    minimum: np.ndarray
    maximum: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> MinMaxScaler:
        values = np.asarray(values, dtype=float)
        if values.size == 0 or not np.all(np.isfinite(values)):
            raise ValueError('min-max normalisation needs at least one finite value and no NaN')
        return cls(minimum=np.atleast_1d(values.min(axis=0)), maximum=np.atleast_1d(values.max(axis=0)))

    @property
    def span(self) -> np.ndarray:
        span = self.maximum - self.minimum
        return np.where(span > 0, span, 1.0)

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=float) - self.minimum) / self.span

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=float) * self.span + self.minimum

    def to_dict(self) -> dict:
        return {'minimum': self.minimum.tolist(), 'maximum': self.maximum.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> MinMaxScaler:
        return cls(minimum=np.asarray(data['minimum'], dtype=float), maximum=np.asarray(data['maximum'], dtype=float))


def bond_types(numbers: np.ndarray, edge_index: np.ndarray) -> np.ndarray:
    """Bond type of every edge as ``'A-B'`` with the element symbols in alphabetical order: [n_edges] str."""
    from ase.data import chemical_symbols

    symbols = np.array(chemical_symbols)[np.asarray(numbers)]
    first, second = symbols[edge_index[0]], symbols[edge_index[1]]
    low = np.where(first <= second, first, second)
    high = np.where(first <= second, second, first)
    return np.char.add(np.char.add(low, '-'), high)
