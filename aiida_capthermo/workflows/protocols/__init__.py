"""Protocols: YAML files of default inputs per workchain, merged defaults -> protocol -> overrides."""

from __future__ import annotations

import copy
import pathlib

import yaml

__all__ = ['ProtocolMixin', 'recursive_merge', 'to_node']


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
    """A protocol ``value`` as the node type ``port`` takes (Dict, List, Bool, Int, Float, Str)."""
    from aiida import orm

    valid = port.valid_type if isinstance(port.valid_type, tuple) else (port.valid_type,)
    for node_class in (orm.Dict, orm.List, orm.Bool, orm.Int, orm.Float, orm.Str):
        if node_class in valid:
            return node_class(value)
    raise ValueError(f'cannot set {port.name} from a protocol value {value!r}')


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
