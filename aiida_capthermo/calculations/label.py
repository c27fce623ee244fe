"""``LabelCalcJob``: label a batch of structures with an ASE calculator through ``capthermo-label`` (the ``local``
engine)."""

from __future__ import annotations

import json

from aiida import orm
from aiida.common import CalcInfo, CodeInfo

from aiida_capthermo.calculations.base import CapthermoCalcJob, pydantic_error
from aiida_capthermo.data.dataset import DatasetData
from aiida_capthermo.data.structures import labelled_set_from_structures
from aiida_capthermo.exit_codes import EXIT_CODES

__all__ = ['LabelCalcJob']


def validate_calculator(value: orm.Dict, _=None) -> str | None:
    from aiida_capthermo.ml.settings import CalculatorSpec

    return pydantic_error(CalculatorSpec, value.get_dict(), 'calculator specification')


def validate_relax(value: orm.Dict, _=None) -> str | None:
    from aiida_capthermo.ml.settings import RelaxSpec

    return pydantic_error(RelaxSpec, value.get_dict(), 'relaxation specification')


def validate_structures(value, _) -> str | None:
    if not value:
        return 'at least one structure is needed in `structures`'
    return None


class LabelCalcJob(CapthermoCalcJob):
    """Label structures with energy, forces, stress and Γ-point band gap on the target computer.

    One job labels a whole batch; a structure whose SCF fails is recorded in the summary and left out of the
    ``labels`` output instead of failing the job.
    """

    _STRUCTURES = 'structures.npz'
    _CALCULATOR = 'calculator.json'
    _RELAX = 'relax.json'
    #: Share of the job's walltime given to the script as its wall-clock limit.
    WALLTIME_FRACTION = 0.8
    _LABELS = 'labels.npz'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input_namespace('structures', valid_type=orm.StructureData, dynamic=True, validator=validate_structures,
                             help='The structures to label, keyed by a label that is kept in the output records.')
        spec.input('calculator', valid_type=orm.Dict,
                   default=lambda: orm.Dict({'name': 'tblite', 'method': 'GFN1-xTB'}),
                   validator=validate_calculator,
                   help='Calculator spec: name (tblite|chgnet|emt), method (GFN1-xTB|GFN2-xTB|IPEA1-xTB), '
                        'halogen_bond (default false: GFN1/IPEA1 without the halogen-bond term, `GFN1-xTB-noXB`), '
                        'chgnet_model, accuracy, electronic_temperature (K), max_iterations, mixer_damping, '
                        'properties (energy, forces, stress, gap).')
        spec.input('relax', valid_type=orm.Dict, required=False, validator=validate_relax,
                   help='Relax every structure first (fmax eV/Å, max_steps, cell, symprec) and label it at its relaxed '
                        'geometry, which the output holds; a structure that does not converge counts as failed.')
        spec.inputs['metadata']['options']['parser_name'].default = 'capthermo.label'
        spec.output('labels', valid_type=DatasetData,
                    help='DatasetData of the structures that were labelled (energies eV, forces eV/Å, stress eV/Å^3, '
                         'gaps eV), in sorted key order, with the keys of the failed ones in its `failed` attribute.')
        spec.exit_code(EXIT_CODES['ERROR_NO_STRUCTURE_LABELLED'], 'ERROR_NO_STRUCTURE_LABELLED',
                       message='No structure of the batch could be labelled (first error: {error}).')

    def prepare_for_submission(self, folder):
        structures = labelled_set_from_structures(self.inputs.structures)
        with folder.open(self._STRUCTURES, 'wb') as handle:
            structures.save(handle)
        with folder.open(self._CALCULATOR, 'w') as handle:
            json.dump(self.inputs.calculator.get_dict(), handle, indent=2)

        if 'relax' in self.inputs:
            with folder.open(self._RELAX, 'w') as handle:
                json.dump(self.inputs.relax.get_dict(), handle, indent=2)

        codeinfo = CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = ['--structures', self._STRUCTURES, '--calculator', self._CALCULATOR,
                                   '--output', self._LABELS, '--summary', self._SUMMARY]
        if 'relax' in self.inputs:
            codeinfo.cmdline_params += ['--relax', self._RELAX]
        walltime = self.inputs.metadata.options.get('max_wallclock_seconds')
        if walltime:  # the script stops itself (exit 400, restarted with more time) before the scheduler kills it
            codeinfo.cmdline_params += ['--max-seconds', str(self.WALLTIME_FRACTION * walltime)]
        codeinfo.stdout_name = self.metadata.options.output_filename

        calcinfo = CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.retrieve_list = [self._LABELS, self._SUMMARY, self.metadata.options.output_filename]
        return calcinfo
