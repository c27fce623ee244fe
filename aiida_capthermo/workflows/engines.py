"""Labelling engines behind one namespace: which process labels a batch, and with what inputs.

A workchain that labels structures declares ``engine_namespace(spec, 'low')`` and calls
:func:`label_batch_inputs` with a batch of structures; both engines return a ``labels`` DatasetData
(see ``LocalLabelWorkChain`` for the contract).
"""

from __future__ import annotations

from aiida import orm
from aiida.plugins import WorkflowFactory

__all__ = ['ENGINES', 'engine_namespace', 'label_batch_inputs', 'relax_engine_error', 'validate_engine_namespace']

ENGINES = ('local', 'vasp')


def validate_engine_namespace(value, _) -> str | None:
    """Check one engine namespace; a namespace with nothing but the default ``engine`` counts as not given."""
    if not value or set(value) <= {'engine'}:
        return None
    engine = value['engine'].value if 'engine' in value else 'local'
    if engine not in ENGINES:
        return f'unknown engine {engine!r}; choose one of {ENGINES}'
    if 'code' not in value:
        return f'the {engine} engine needs a `code`'
    from aiida_capthermo.calculations.base import code_error, options_error

    error = code_error(value['code'], 'vasp.vasp' if engine == 'vasp' else 'capthermo.label')
    if error:
        return f'{error} (the {engine} engine)'
    if 'options' in value:
        error = options_error(value['options'].get_dict())
        if error:
            return error
    if engine == 'vasp':
        settings = value['vasp'].get_dict() if 'vasp' in value else {}
        missing = [key for key in ('potential_family', 'potential_mapping') if key not in settings]
        if missing:
            return f'the vasp engine needs {missing} in its `vasp` settings'
        unknown = set(settings) - set(_VASP_SETTINGS)
        if unknown:
            return f'unknown vasp engine settings {sorted(unknown)}; known: {sorted(_VASP_SETTINGS)}'
    if engine == 'local' and 'calculator' in value:
        from aiida_capthermo.calculations.label import validate_calculator

        return validate_calculator(value['calculator'])
    return None


def _validate_required_engine_namespace(value, port) -> str | None:
    if not value or 'code' not in value:
        return 'the engine needs a `code`'
    return validate_engine_namespace(value, port)


def engine_namespace(spec, name: str, help: str, required: bool = True) -> None:
    """Declare the ports of one labelling engine under namespace ``name``."""
    spec.input_namespace(name, required=required, validator=validate_engine_namespace if not required else
                         _validate_required_engine_namespace, help=help)
    spec.input(f'{name}.engine', valid_type=orm.Str, default=lambda: orm.Str('local'),
               help="Who labels the structures: 'local' (ASE calculator via capthermo-label) or 'vasp' (aiida-vasp).")
    spec.input(f'{name}.code', valid_type=orm.AbstractCode, required=False,
               help='local: a capthermo-label code on the target computer; vasp: a VASP code.')
    spec.input(f'{name}.calculator', valid_type=orm.Dict, required=False,
               help='local engine: calculator spec (name, method, accuracy, electronic_temperature K, ...).')
    spec.input(f'{name}.vasp', valid_type=orm.Dict, required=False,
               help='vasp engine: potential_family, potential_mapping, preset (PBEsol|HSEsol), parameters '
                    'overrides, kpoints_length (Å), energy_type.')
    spec.input(f'{name}.options', valid_type=orm.Dict, required=False,
               help='Scheduler options of every labelling job (resources, max_wallclock_seconds, queue_name, '
                    'custom_scheduler_commands ...).')


def label_batch_inputs(namespace: dict, structures: dict, fidelity: str,
                       relax: orm.Dict | None = None) -> tuple[type, dict]:
    """Return the process class and its inputs that label ``structures`` with the engine of ``namespace``; with
    ``relax`` (a RelaxSpec dict; the local engine only, see :func:`relax_engine_error`) each structure is relaxed first
    and the labels hold the relaxed geometry."""
    engine = namespace['engine'].value if 'engine' in namespace else 'local'
    options = namespace['options'].get_dict() if 'options' in namespace else {}
    if engine == 'local':
        process = WorkflowFactory('capthermo.label_local')
        label = {'code': namespace['code'], 'structures': structures, 'metadata': {'options': options}}
        if 'calculator' in namespace:
            label['calculator'] = namespace['calculator']
        if relax is not None:
            label['relax'] = relax
        return process, {'label': label, 'fidelity': orm.Str(fidelity)}
    if relax is not None:
        raise ValueError(relax_engine_error(namespace))
    process = WorkflowFactory('capthermo.label_vasp')
    settings = namespace['vasp'].get_dict()  # keys checked by validate_engine_namespace
    inputs = {'structures': structures, 'fidelity': orm.Str(fidelity), 'code': namespace['code']}
    for key, value in settings.items():
        inputs[key] = _VASP_SETTINGS[key](value)
    if options:
        inputs['options'] = orm.Dict(options)
    return process, inputs


def relax_engine_error(namespace: dict) -> str | None:
    """Why the engine of ``namespace`` cannot relax structures, or None: the local engine relaxes them in its labelling
    job; with VASP, relax the end members in a VASP relaxation (ISIF = 3) and give them as the study's parents."""
    engine = namespace['engine'].value if 'engine' in namespace else 'local'
    if engine != 'local':
        return (f'the {engine} engine does not relax structures here: relax the end members with it yourself (e.g. '
                'an aiida-vasp relaxation, ISIF = 3) and give them as parents.host and parents.guest, or leave out '
                '`relax`')
    return None


_VASP_SETTINGS = {
    'potential_family': orm.Str, 'potential_mapping': orm.Dict, 'preset': orm.Str, 'parameters': orm.Dict,
    'kpoints_length': orm.Float, 'energy_type': orm.Str, 'settings': orm.Dict, 'max_iterations': orm.Int,
    'clean_workdir': orm.Bool,
}
