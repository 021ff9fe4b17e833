"""The package version, in a leaf module that any other module may import.

``__version__`` is the installed distribution's version (``importlib.metadata``), or
:data:`FALLBACK_VERSION` when the package runs from a source tree that is not installed.
This module imports nothing of ``hub_cutinit``.

Example:
    >>> from hub_cutinit._version import __version__
    >>> __version__.count(".") >= 2
    True
"""

from importlib import metadata

#: The version in pyproject.toml (tests/test_wheel.py checks that they agree).
FALLBACK_VERSION = "0.1.0"

#: The distribution name on PyPI (``pip install hub-cutinit``).
DISTRIBUTION = "hub-cutinit"


def _installed_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return FALLBACK_VERSION


__version__: str = _installed_version()
