"""Sphinx configuration of the aiida-capthermo documentation (MyST Markdown pages)."""

project = 'aiida-capthermo'
author = 'aiida-capthermo developers'
extensions = ['myst_parser', 'sphinx.ext.autodoc', 'sphinx.ext.napoleon']
source_suffix = {'.md': 'markdown'}
myst_enable_extensions = ['dollarmath', 'colon_fence']
exclude_patterns = ['_build']
html_theme = 'sphinx_rtd_theme'
