"""Sphinx configuration of the aiida-capthermo documentation (MyST Markdown pages)."""

project = 'aiida-capthermo'
author = 'aiida-capthermo developers'
import pathlib  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent / '_ext'))  # capthermo_settings: tables of settings classes
extensions = ['myst_parser', 'sphinx.ext.autodoc', 'sphinx.ext.napoleon', 'aiida.sphinxext', 'sphinx_click',
              'capthermo_settings']
source_suffix = {'.md': 'markdown'}
myst_enable_extensions = ['dollarmath', 'colon_fence']
exclude_patterns = ['_build']
html_theme = 'sphinx_rtd_theme'

# The process directives (aiida.sphinxext) load a profile before the process classes: an in-memory one, so that
# the documentation builds on a machine without any AiiDA configuration.
from aiida.manage import get_manager  # noqa: E402
from aiida.storage.sqlite_temp import SqliteTempBackend  # noqa: E402

if get_manager().get_profile() is None:
    get_manager().load_profile(SqliteTempBackend.create_profile('capthermo-docs'))
