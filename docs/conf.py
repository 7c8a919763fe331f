"""Sphinx configuration: the API reference from the docstrings, plus the algorithm reference and
the tutorial (Markdown, through MyST). Built by tests/test_docs.py with warnings as errors."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

project = "jaxrl_llm"
author = "the jaxrl_llm developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
autodoc_default_options = {"members": True, "undoc-members": False, "ignore-module-all": True}
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # signatures stay short; the docstrings give shapes and dtypes.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]
html_theme = "alabaster"
napoleon_use_ivar = True
