"""Protocols: YAML files of default inputs per workchain, merged defaults -> protocol -> overrides."""

from __future__ import annotations

import copy
import pathlib

import yaml

__all__ = ['ProtocolMixin', 'recursive_merge']


def recursive_merge(left: dict, right: dict) -> dict:
    """Return a deep copy of ``left`` updated recursively with ``right`` (right wins)."""
    merged = copy.deepcopy(left)
    for key, value in right.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = recursive_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


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
