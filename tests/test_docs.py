"""The documentation builds without a warning: its reference pages are generated from the code (the ports, exit
codes and help strings of every process through aiida.sphinxext, the command line through sphinx-click, the API
through autodoc), so a help string that does not render or a process that cannot be loaded fails here."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

DOCS = pathlib.Path(__file__).parent.parent / 'docs'


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip('sphinx', reason='the docs tools are not installed (pip install -e .[docs])')
    pytest.importorskip('sphinx_click', reason='sphinx-click is not installed (pip install -e .[docs])')
    result = subprocess.run([sys.executable, '-m', 'sphinx', '-b', 'html', '-W', '--keep-going', '-q', str(DOCS),
                             str(tmp_path / 'html')], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    reference = (tmp_path / 'html' / 'reference.html').read_text()
    for expected in ('evaluate_code', 'max_frame_force', 'capthermo-gap', 'frequency_cutoff',
                     'ModelData.predict'):
        assert expected in reference, expected
    # Every key of every settings class the reference lists is in its generated table, with its default.
    import importlib
    import re

    classes = re.findall(r'```\{capthermo-settings\} (\S+)', (DOCS / 'reference.md').read_text())
    assert len(classes) >= 9
    for path in classes:
        module, _, name = path.rpartition('.')
        for key in getattr(importlib.import_module(module), name).model_fields:
            assert f'<span class="pre">{key}</span>' in reference, (path, key)
    assert re.search(r'forces_weight</span>.*?150\.0', reference, re.S)
