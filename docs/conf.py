# Sphinx configuration for the reactor_mgmt documentation site.
#
# Build it (the `docs` extra has the tools) with warnings as errors:
#     pip install -e '.[docs]'
#     python -m sphinx -W --keep-going -b html docs build/docs
# tests/test_docs.py runs the same build into a temporary directory.
#
# Prose pages are Markdown (MyST), like the README and CHANGELOG.md; the reference pages are
# reStructuredText, because autodoc renders the docstrings, which are written in reST.
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # document this checkout, not whatever copy is installed

import reactor_mgmt  # noqa: E402

project = "reactor_mgmt"
author = "reactor_mgmt developers"
copyright = "reactor_mgmt developers"
version = release = reactor_mgmt.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# MyST: `(label)=` targets, ::: fences, definition lists, and anchors for every heading to
# level 3, so pages can link to a section as `protocol.md#limits`.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# autodoc: the package's own order, defaults as written in the source (`1 << 20`, not
# 1048576), and type hints in the signature, as the code spells them.
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"

html_theme = "furo"
html_title = f"reactor_mgmt {release}"
html_static_path: list = []
