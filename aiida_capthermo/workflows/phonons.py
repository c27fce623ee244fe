"""``ParentPhononsWorkChain``: harmonic force constants of a parent compound by finite displacements.

The displaced supercells come from aiida-phonopy's ``PreProcessData`` (a calcfunction, so each is linked to
the parent), are labelled by the chosen engine, and the forces become a ``ForceConstantsData`` node that the
displacement sampler reads.
"""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction
from aiida.plugins import DataFactory

from aiida_capthermo.exit_codes import EXIT_CODES
from aiida_capthermo.workflows.engines import engine_namespace, label_batch_inputs

__all__ = ['ParentPhononsWorkChain', 'force_constants_from_labels']

PreProcessData = DataFactory('phonopy.preprocess')
ForceConstantsData = DataFactory('phonopy.force_constants')


@calcfunction
def force_constants_from_labels(preprocess_data, labels):
    """Force constants from the forces of the displaced supercells (labels in supercell key order)."""
    phonon = preprocess_data.get_phonopy_instance()
    keys = labels.base.attributes.get('keys')  # supercell_1, ... zero-padded: sorted = phonopy's order
    n_displacements = len(phonon.dataset['first_atoms'])
    if len(keys) != n_displacements:
        raise ValueError(f'forces of {len(keys)} displaced supercells for {n_displacements} displacements')
    labelled = labels.get_labelled_set()
    n_atoms = len(phonon.supercell)
    phonon.forces = labelled.forces.reshape(len(keys), n_atoms, 3)
    phonon.produce_force_constants()
    phonon.symmetrize_force_constants()
    primitive = phonon.primitive_matrix
    node = ForceConstantsData(phonopy_atoms=phonon.unitcell, supercell_matrix=phonon.supercell_matrix.tolist(),
                              primitive_matrix=None if primitive is None else np.asarray(primitive).tolist(),
                              symprec=phonon.symmetry.tolerance)
    node.set_force_constants(phonon.force_constants)
    return node


class ParentPhononsWorkChain(WorkChain):
    """Finite-displacement harmonic phonons of one parent structure with a labelling engine."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('structure', valid_type=orm.StructureData, help='The parent unit cell (relaxed or prototype).')
        spec.input('supercell_matrix', valid_type=orm.List, help='Diagonal supercell, e.g. [2, 2, 2].')
        spec.input('displacement', valid_type=orm.Float, default=lambda: orm.Float(0.01),
                   help='Finite displacement amplitude in Å.')
        engine_namespace(spec, 'engine', help='Engine that computes the forces of the displaced supercells.')
        spec.outline(cls.setup, cls.run_forces, cls.inspect_forces, cls.results)
        spec.output('force_constants', valid_type=ForceConstantsData,
                    help='Harmonic force constants (eV/Å^2) with the unit cell and supercell matrix.')
        spec.output('preprocess_data', valid_type=PreProcessData, help='The displacement dataset (phonopy).')
        spec.exit_code(EXIT_CODES['ERROR_FORCES_FAILED'], 'ERROR_FORCES_FAILED',
                       message='The forces of displaced supercells could not be computed: {message}')

    def setup(self):
        self.ctx.preprocess = PreProcessData.generate_preprocess_data(
            structure=self.inputs.structure, supercell_matrix=self.inputs.supercell_matrix,
            displacement_generator=orm.Dict({'distance': self.inputs.displacement.value}))

    def run_forces(self):
        supercells = self.ctx.preprocess.calcfunctions.get_supercells_with_displacements()
        process, inputs = label_batch_inputs(self.inputs.engine, supercells, 'low')
        inputs['metadata'] = {'call_link_label': 'forces'}
        self.report(f'computing forces of {len(supercells)} displaced supercells')
        return ToContext(forces=self.submit(process, **inputs))

    def inspect_forces(self):
        node = self.ctx.forces
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_FORCES_FAILED.format(message=f'labelling failed: {node.exit_message}')
        failed = node.outputs.labels.base.attributes.get('failed')
        if failed:
            return self.exit_codes.ERROR_FORCES_FAILED.format(message=f'no forces for {failed}')
        return None

    def results(self):
        self.out('preprocess_data', self.ctx.preprocess)
        self.out('force_constants', force_constants_from_labels(self.ctx.preprocess, self.ctx.forces.outputs.labels))
