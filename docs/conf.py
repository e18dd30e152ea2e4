"""
Sphinx configuration of the twisted_smtpconn documentation.

Built with warnings as errors (``sphinx-build -W -b html docs
docs/_build/html``, as ``scripts/test.sh`` does).  autodoc documents the
package that Python imports, which in CI is the installed wheel; a checkout
without an install falls back to the source tree next to this directory.
No intersphinx: the build must not need the network.
"""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent

try:
    import twisted_smtpconn  # noqa: F401
except ImportError:
    sys.path.insert(0, str(_REPO))

# The one place the version is written down is setup.cfg.
_setup = configparser.ConfigParser()
_setup.read(_REPO / "setup.cfg", encoding="utf-8")

project = "twisted_smtpconn"
author = "the twisted_smtpconn authors"
copyright = "the twisted_smtpconn authors; MIT license"
release = _setup.get("metadata", "version", fallback="unknown")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

# The examples are included with literalinclude; they are not pages.
exclude_patterns = ["_build", "examples"]
root_doc = "index"
source_suffix = {".rst": "restructuredtext"}

# Documents in the order they are written; type hints go into the
# description, where they read as prose instead of a wall of signature.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
}
# Private modules are an implementation detail: show the public path.
add_module_names = False

highlight_language = "python3"
pygments_style = "sphinx"

html_theme = "alabaster"
html_title = f"twisted_smtpconn {release}"
html_static_path: list[str] = []
html_theme_options = {
    "description": "An SMTP and LMTP client for Twisted",
    "fixed_sidebar": True,
}
