"""``DatasetData``: a labelled set of structures as one queryable AiiDA node."""

from __future__ import annotations

import numpy as np
from aiida import orm

from aiida_capthermo.core.dataset import LabelledSet

__all__ = ['DatasetData']


class DatasetData(orm.ArrayData):
    """A labelled set of structures (energies, forces, stresses, band gaps, composition, temperature).

    The arrays of :class:`~aiida_capthermo.core.dataset.LabelledSet` live in the file repository; the
    attributes answer the questions one queries a dataset by: ``n_structures``, ``fidelity``
    (``low``/``high``), ``method`` (``PBEsol``, ``HSEsol``, ``GFN1-xTB``...), ``engine``, ``scheme``,
    ``temperatures``, ``compositions``, ``labels`` (which labels are present) and ``statistics``.
    """

    @classmethod
    def from_labelled_set(cls, labelled: LabelledSet, **metadata) -> DatasetData:
        """Create an unstored node from a :class:`LabelledSet`; ``metadata`` becomes attributes."""
        if len(labelled) == 0:
            raise ValueError('a dataset must contain at least one structure')
        node = cls()
        for name in LabelledSet.array_names():
            node.set_array(name, np.ascontiguousarray(labelled[name]))
        stats = labelled.statistics()
        node.base.attributes.set('n_structures', len(labelled))
        node.base.attributes.set('n_atoms_total', int(labelled.n_atoms.sum()))
        node.base.attributes.set('temperatures', stats['temperatures'])
        node.base.attributes.set('compositions', stats['compositions'])
        node.base.attributes.set('origins', stats['origins'])
        node.base.attributes.set('labels', sorted(
            name for name in ('energy', 'forces', 'stress', 'gap', 'vbm', 'cbm') if labelled.has_label(name).any()))
        node.base.attributes.set('statistics', stats)
        for key, value in metadata.items():
            node.base.attributes.set(key, value)
        return node

    def get_labelled_set(self) -> LabelledSet:
        """Return the arrays as a :class:`LabelledSet`."""
        names = set(self.get_arraynames())
        return LabelledSet(**{name: self.get_array(name) for name in LabelledSet.array_names() if name in names})

    @property
    def n_structures(self) -> int:
        return self.base.attributes.get('n_structures')

    def write_extxyz(self, path, **kwargs) -> int:
        """Write the structures and labels as extxyz for MACE (see :meth:`LabelledSet.write_extxyz`)."""
        return self.get_labelled_set().write_extxyz(path, **kwargs)
