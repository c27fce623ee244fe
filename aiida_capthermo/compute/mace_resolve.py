"""Resolve ``device: auto`` and a named foundation model in a ``mace_run_train`` config, before the training starts.

Run by :class:`~aiida_capthermo.calculations.mace.FinetuneMaceCalcJob` on the compute side as
``python resolve_remote.py config.yaml remote_resolution.json '<request JSON>'`` with the interpreter of the
``mace_run_train`` code: the job copies this file into its folder, so the computer needs only the standard library,
torch and mace (nothing of this package, no AiiDA); ``python -m aiida_capthermo.compute.mace_resolve`` runs the same
where the package is installed.

The request holds ``device`` (``auto`` is replaced by ``cuda`` when torch sees a GPU, else ``cpu``) and, for a named
model, ``foundation_name``, ``search_paths``, ``allow_download`` and ``download_timeout`` (s). A named model is looked
up in the folders of ``search_paths``, in the mace package (``medium-mpa-0`` ships with it) and in MACE's cache, and
downloaded only when its host answers within the timeout, so an offline node fails in seconds instead of hanging.
The config is rewritten in place; the result file holds ``device``, ``foundation`` (name, path, sha256), ``error``
and ``error_kind`` (``foundation_not_obtainable`` or ``resolve_failed``, keys of
:data:`aiida_capthermo.compute.summary.ERROR_KINDS`) and ``seconds``. Exit status 1 when the resolution failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import urllib.parse

__all__ = ['main', 'resolve']

#: The error kinds this script reports (a LookupError: the named model cannot be had; anything else).
NOT_OBTAINABLE, FAILED = 'foundation_not_obtainable', 'resolve_failed'


def sha256(path: str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _auto_device() -> str:
    import torch

    return 'cuda' if torch.cuda.is_available() else 'cpu'


def _foundation_path(name: str, request: dict) -> str:
    """Path of the named MACE foundation model on this computer, downloaded when needed and allowed.

    Raises ``LookupError`` when the name is unknown, or the model is not here and cannot be downloaded.
    """
    from mace.calculators import foundations_models as fm
    from mace.tools.utils import get_cache_dir

    if name not in fm.mace_mp_urls:
        raise LookupError(f'unknown MACE foundation model name {name!r}; known: {sorted(fm.mace_mp_urls)}')
    url = fm.mace_mp_urls[name]
    cached = os.path.join(get_cache_dir(), ''.join(c for c in os.path.basename(url) if c.isalnum() or c == '_'))
    candidates = [os.path.join(folder, os.path.basename(url)) for folder in request.get('search_paths', [])]
    if name == 'medium-mpa-0':
        candidates.append(fm.local_model_path)
    candidates.append(cached)
    path = next((c for c in candidates if os.path.isfile(c)), None)
    if path is not None:
        return path
    if not request.get('allow_download', True):
        raise LookupError(f'foundation model {name!r} is not on this computer (looked in {candidates}) and '
                          'downloads are disabled')
    host = urllib.parse.urlsplit(url).netloc
    timeout = float(request.get('download_timeout', 20.0))
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as exception:
        raise LookupError(f'foundation model {name!r} is not on this computer (looked in {candidates}) and '
                          f'cannot be downloaded from {url}: {host} unreachable ({exception})') from exception
    if hasattr(fm, '_DOWNLOAD_TIMEOUT'):
        fm._DOWNLOAD_TIMEOUT = timeout
    return fm.download_mace_mp_checkpoint(name)


def resolve(lines: list[str], request: dict, resolved: dict) -> list[str]:
    """The config ``lines`` with ``device`` and ``foundation_model`` resolved; what was resolved goes into
    ``resolved`` as it is found (``device``; ``foundation``: name, path, sha256), so a failure keeps the rest."""
    if request.get('device') == 'auto':
        resolved['device'] = _auto_device()
        lines = [f"device: {resolved['device']}" if line.startswith('device:') else line for line in lines]
    name = request.get('foundation_name')
    if name:
        path = _foundation_path(name, request)
        resolved['foundation'] = {'name': name, 'path': path, 'sha256': sha256(path)}
        lines = [f'foundation_model: {json.dumps(path)}' if line.startswith('foundation_model:') else line
                 for line in lines]
    return lines


def main(argv: list[str] | None = None) -> int:
    """``resolve_remote.py CONFIG RESULT REQUEST_JSON``: rewrite CONFIG, write RESULT; 1 when the resolution failed."""
    config_file, result_file, request = (sys.argv[1:] if argv is None else argv)[:3]
    result = {'device': None, 'foundation': None, 'error': None, 'error_kind': None}
    start = time.time()
    try:
        with open(config_file) as handle:
            lines = handle.read().splitlines()
        lines = resolve(lines, json.loads(request), result)
        with open(config_file, 'w') as handle:
            handle.write('\n'.join(lines) + '\n')
    except Exception as exception:  # noqa: BLE001 -- reported to the parser, which maps the kind to an exit code
        result['error'] = f'{type(exception).__name__}: {exception}'
        result['error_kind'] = NOT_OBTAINABLE if isinstance(exception, LookupError) else FAILED
    result['seconds'] = time.time() - start
    with open(result_file, 'w') as handle:
        json.dump(result, handle, indent=1)
    return 1 if result['error'] else 0


if __name__ == '__main__':
    sys.exit(main())
