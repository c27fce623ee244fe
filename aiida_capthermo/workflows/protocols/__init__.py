"""Protocols: YAML files of default inputs per workchain, merged defaults -> protocol -> overrides.

Every workchain names its protocols the same way: ``demo`` (a laptop demo, offline, minutes), ``fast`` (a small
study, the default: the local engine, no VASP) and ``paper`` (the papers' sizes; the study's with VASP). The names
say what a protocol reproduces rather than a numerical precision (aiida-quantumespresso's ``fast``/``moderate``/
``precise`` tune one DFT calculation; these size a whole study). Old names stay for one release as
:data:`ALIASES`, with a warning.
"""

from __future__ import annotations

import copy
import pathlib

import yaml

__all__ = ['ALIASES', 'ProtocolMixin', 'load_code', 'recursive_merge', 'set_options', 'to_node', 'unlanded_overrides']

#: Old protocol names and the names they have now (accepted with a FutureWarning until the next release).
ALIASES = {'balanced': 'paper'}


def recursive_merge(left: dict, right: dict) -> dict:
    """Return a deep copy of ``left`` updated recursively with ``right`` (right wins)."""
    merged = copy.deepcopy(left)
    for key, value in right.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = recursive_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def to_node(port, value):
    """A protocol ``value`` as the node type ``port`` takes (Dict, List, Bool, Int, Float, Str); a ValueError that
    names the port and the type it takes when the value is of another kind (``seed: abc``, a list for a mapping)."""
    from aiida import orm

    valid = port.valid_type if isinstance(port.valid_type, tuple) else (port.valid_type,)
    kinds = ((orm.Dict, dict, 'a mapping {key: value}'), (orm.List, (list, tuple), 'a list [a, b]'),
             (orm.Bool, bool, 'true or false'), (orm.Int, int, 'an integer'), (orm.Float, (int, float), 'a number'),
             (orm.Str, str, 'a string'))
    wanted = [(node_class, python, words) for node_class, python, words in kinds if node_class in valid]
    for node_class, python, _ in wanted:
        if isinstance(value, python) and not (isinstance(value, bool) and node_class in (orm.Int, orm.Float)):
            return node_class(list(value) if node_class is orm.List else value)
    if not wanted:
        raise ValueError(f'cannot set {port.name} from a protocol value {value!r}')
    raise ValueError(f'{port.name} must be {" or ".join(words for _, _, words in wanted)}, got {value!r}')


def load_code(value):
    """A code node from a node, a label (``name@computer``), a pk or a UUID; a clear error when there is none."""
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    if isinstance(value, orm.AbstractCode):
        return value
    try:
        return orm.load_code(value)
    except (NotExistent, MultipleObjectsError, ValueError) as exception:
        raise ValueError(f'no code {value!r} in this profile ({exception}); set one up with `capthermo setup-codes '
                         '--computer NAME` or `verdi code create`') from exception


def set_options(namespace, key: str, options: dict | None, own: dict | None) -> None:
    """``namespace[key]`` = the global scheduler ``options`` updated with a stage's ``own`` (the stage's win); left
    unset when both are empty."""
    from aiida import orm

    merged = {**(options or {}), **(own or {})}
    if merged:
        namespace[key] = orm.Dict(merged)


_MISSING = object()


def _child(container, key):
    """``container[key]`` for a builder namespace, a dict or a Dict node; ``_MISSING`` when absent."""
    from aiida import orm
    from aiida.engine.processes.builder import ProcessBuilderNamespace

    if isinstance(container, orm.Dict):
        container = container.get_dict()
    if isinstance(container, (ProcessBuilderNamespace, dict)):
        return container.get(key, _MISSING)  # a builder namespace is a Mapping too
    return _MISSING


def _plain(node):
    """The plain value of a builder entry (node or not), for comparison with an override."""
    from aiida import orm

    if isinstance(node, orm.List):
        return node.get_list()
    if isinstance(node, (orm.Int, orm.Float, orm.Str, orm.Bool)):
        return node.value
    return node


def unlanded_overrides(builder, overrides: dict, skip: tuple[str, ...] = (), prefix: str = '') -> list[str]:
    """Dotted paths of ``overrides`` whose value is not in ``builder`` (namespaces, Dict contents, node values; a
    code matches its label, full label, pk or UUID): an override that lands nowhere is a user's typo or an input the
    builder dropped, never something to ignore."""
    from aiida import orm
    from aiida.engine.processes.builder import ProcessBuilderNamespace

    missing = []
    for key, value in overrides.items():
        path = f'{prefix}{key}'
        if path in skip:
            continue
        target = _child(builder, key)
        if isinstance(value, dict) and isinstance(target, (ProcessBuilderNamespace, dict, orm.Dict)):
            missing.extend(unlanded_overrides(target, value, skip, f'{path}.'))
        elif target is _MISSING:
            missing.append(path)
        elif isinstance(target, orm.AbstractCode):
            if value not in (target, target.full_label, target.label, target.pk, target.uuid):
                missing.append(path)
        elif _plain(target) != value:
            missing.append(path)
    return missing


class ProtocolMixin:
    """Adds ``get_protocol_inputs`` reading ``protocols/<_protocol_file>.yaml`` next to this module."""

    _protocol_file: str

    @classmethod
    def _load_protocol_file(cls) -> dict:
        path = pathlib.Path(__file__).parent / f'{cls._protocol_file}.yaml'
        with path.open() as handle:
            return yaml.safe_load(handle)

    @classmethod
    def get_default_protocol(cls) -> str:
        return cls._load_protocol_file()['default_protocol']

    @classmethod
    def get_available_protocols(cls) -> dict:
        data = cls._load_protocol_file()
        return {key: {'description': value['description']} for key, value in data['protocols'].items()}

    @classmethod
    def get_protocol_inputs(cls, protocol: str | None = None, overrides: dict | None = None) -> dict:
        """Merge default inputs, the protocol and the overrides into a new dict."""
        data = cls._load_protocol_file()
        protocol = protocol or data['default_protocol']
        if protocol in ALIASES and protocol not in data['protocols']:
            import warnings

            warnings.warn(f'protocol {protocol!r} is now called {ALIASES[protocol]!r}; the old name goes in the next '
                          'release', FutureWarning, stacklevel=2)
            protocol = ALIASES[protocol]
        if protocol not in data['protocols']:
            raise ValueError(f'unknown protocol {protocol!r}; available: {sorted(data["protocols"])}')
        protocol_inputs = {k: v for k, v in data['protocols'][protocol].items() if k != 'description'}
        inputs = recursive_merge(data['default_inputs'], protocol_inputs)
        return recursive_merge(inputs, overrides or {})

    @classmethod
    def protocol_nodes(cls, inputs: dict, exclude: tuple[str, ...] = ()) -> dict:
        """Protocol ``inputs`` (plain values) as nodes of the types of this process's ports, less ``exclude``;
        a key that is no input port is an error."""
        ports = cls.spec().inputs
        unknown = sorted(set(inputs) - set(ports) - set(exclude))
        if unknown:
            raise ValueError(f'unknown inputs in protocol or overrides: {unknown}')
        return {key: to_node(ports[key], value) for key, value in inputs.items() if key not in exclude}
