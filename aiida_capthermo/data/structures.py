"""Conventions for the package's metadata on ``StructureData`` nodes and conversion to a :class:`LabelledSet`.

The calcfunctions that create structures record, as attributes of the new node (set before it is
stored, so they are part of the immutable node), the composition ``x``, the temperature and the
origin of the structure. Labelling engines copy them into the labelled sets they return.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from aiida import orm

from aiida_capthermo.core.dataset import LabelledSet

__all__ = ['set_structure_metadata', 'get_structure_metadata', 'labelled_set_from_structures']

_PREFIX = 'capthermo_'


def set_structure_metadata(structure: orm.StructureData, *, x: float | None = None, temperature: float | None = None,
                           origin: str | None = None) -> orm.StructureData:
    """Record composition ``x``, temperature (K) and origin on an unstored structure; return it (NaN is left out)."""
    if structure.is_stored:
        raise ValueError('metadata must be set before the structure is stored')
    for key, value in (('x', x), ('temperature', temperature), ('origin', origin)):
        if value is not None and not (isinstance(value, float) and np.isnan(value)):  # NaN: not recorded
            structure.base.attributes.set(_PREFIX + key, value)
    return structure


def get_structure_metadata(structure: orm.StructureData) -> dict:
    """Return ``{'x', 'temperature', 'origin'}`` of a structure (NaN / '' where not recorded)."""
    attributes = structure.base.attributes
    return {
        'x': float(attributes.get(_PREFIX + 'x', np.nan)),
        'temperature': float(attributes.get(_PREFIX + 'temperature', np.nan)),
        'origin': str(attributes.get(_PREFIX + 'origin', '')),
    }


def labelled_set_from_structures(structures: Mapping[str, orm.StructureData] | list) -> LabelledSet:
    """Unlabelled :class:`LabelledSet` of structures (mapping: sorted by key), with metadata and node UUIDs."""
    nodes = [structures[key] for key in sorted(structures)] if isinstance(structures, Mapping) else list(structures)
    atoms_list = [node.get_ase() for node in nodes]
    metadata = [get_structure_metadata(node) for node in nodes]
    return LabelledSet.from_atoms_list(
        atoms_list,
        x=np.array([m['x'] for m in metadata]),
        temperature=np.array([m['temperature'] for m in metadata]),
        origin=np.array([m['origin'] for m in metadata], dtype=str),
        structure_uuid=np.array([node.uuid if node.is_stored else '' for node in nodes], dtype=str),
    )
