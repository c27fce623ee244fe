"""The domain a model was trained on, and whether a structure lies in it.

A potential or a gap model trained on displaced Ag3S(Br,I) cells returns a number for any cell: all-Fe, two atoms on
top of each other, a cell scaled 100 times. That number means nothing. Each trained model records its training domain
(:func:`training_domain`): the elements, the closest pair of atoms and the range of volume per atom over the training
structures, and for a gap model the range of its target. :func:`domain_violations` says, for one structure, what lies
outside:

* an element the model never saw;
* a closest pair under :data:`MIN_DISTANCE_FACTOR` times the closest pair in training;
* a volume per atom outside the training range widened by :data:`VOLUME_MARGIN` on both sides.

Only numpy and ase (no AiiDA, no torch). Units: Å, Å^3.
"""

from __future__ import annotations

from collections.abc import Sequence

import ase
import numpy as np

__all__ = ['MIN_DISTANCE_FACTOR', 'VOLUME_MARGIN', 'closest_pair', 'training_domain', 'merge_domains',
           'domain_violations', 'violation_kind']

#: A structure whose closest pair is below this fraction of the closest pair in training is outside the domain
#: (the repulsive wall of a potential sits there; a gap model has never seen it).
MIN_DISTANCE_FACTOR = 0.8
#: The volume per atom may lie this fraction below the smallest or above the largest in training.
VOLUME_MARGIN = 0.25
#: Pairs are searched within this distance (Å); a structure with none is isolated atoms.
PAIR_CUTOFF = 5.0


def closest_pair(atoms: ase.Atoms) -> float | None:
    """The shortest interatomic distance (Å, minimum image in periodic directions), or None when no two atoms are
    within :data:`PAIR_CUTOFF`."""
    from ase.neighborlist import neighbor_list

    if len(atoms) < 2 and not atoms.pbc.any():
        return None
    distances = neighbor_list('d', atoms, PAIR_CUTOFF)
    return float(distances.min()) if len(distances) else None


def _volume_per_atom(atoms: ase.Atoms) -> float | None:
    return float(abs(atoms.get_volume()) / len(atoms)) if atoms.pbc.all() else None


def training_domain(structures: Sequence[ase.Atoms], targets: Sequence[float] | None = None) -> dict:
    """The domain of a training set: ``elements`` (sorted symbols), ``min_distance`` (Å, the closest pair over
    all structures), ``volume_per_atom`` ([smallest, largest] Å^3 of the periodic structures), ``target``
    ([smallest, largest] of the finite ``targets``, when given) and ``n_structures``."""
    if not structures:
        raise ValueError('a training domain needs at least one structure')
    elements = sorted({symbol for atoms in structures for symbol in atoms.get_chemical_symbols()})
    pairs = [d for d in map(closest_pair, structures) if d is not None]
    volumes = [v for v in map(_volume_per_atom, structures) if v is not None]
    domain = {'elements': elements, 'min_distance': min(pairs) if pairs else None,
              'volume_per_atom': [min(volumes), max(volumes)] if volumes else None, 'target': None,
              'n_structures': len(structures)}
    if targets is not None:
        finite = np.asarray(targets, dtype=float)
        finite = finite[np.isfinite(finite)]
        domain['target'] = [float(finite.min()), float(finite.max())] if finite.size else None
    return domain


def merge_domains(first: dict, second: dict) -> dict:
    """The domain of a model trained on ``first``'s structures and then on ``second``'s (a fine-tuned model):
    the union of elements and volumes, the closer closest pair; the target range of ``second``, the last
    training."""
    pairs = [d for d in (first.get('min_distance'), second.get('min_distance')) if d is not None]
    ranges = [r for r in (first.get('volume_per_atom'), second.get('volume_per_atom')) if r]
    return {'elements': sorted(set(first['elements']) | set(second['elements'])),
            'min_distance': min(pairs) if pairs else None,
            'volume_per_atom': [min(r[0] for r in ranges), max(r[1] for r in ranges)] if ranges else None,
            'target': second.get('target'), 'n_structures': first['n_structures'] + second['n_structures']}


def domain_violations(domain: dict, atoms: ase.Atoms) -> list[str]:
    """What about ``atoms`` lies outside ``domain`` (:func:`training_domain`), one sentence each; empty when it
    lies inside."""
    reasons = []
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(domain['elements']))
    if unknown:
        reasons.append(f'elements {unknown} were not in the training set ({domain["elements"]})')
    closest = closest_pair(atoms)
    if domain.get('min_distance') is not None and closest is not None \
            and closest < MIN_DISTANCE_FACTOR * domain['min_distance']:
        reasons.append(f'its closest pair is {closest:.3g} Å apart, below {MIN_DISTANCE_FACTOR} x the closest pair '
                       f'in training ({domain["min_distance"]:.3f} Å)')
    volume = _volume_per_atom(atoms)
    if domain.get('volume_per_atom') and volume is not None:
        low, high = domain['volume_per_atom']
        if not (1 - VOLUME_MARGIN) * low <= volume <= (1 + VOLUME_MARGIN) * high:
            reasons.append(f'its volume per atom is {volume:.4g} Å^3, outside the training range {low:.2f}-'
                           f'{high:.2f} Å^3 (with a {VOLUME_MARGIN:.0%} margin)')
    return reasons


def violation_kind(reason: str) -> str:
    """The kind of a sentence of :func:`domain_violations`: ``elements``, ``closest`` or ``volume`` (for counts)."""
    words = reason.split()
    return words[1] if words[0] == 'its' else words[0]
