"""The versions of the export's third-party libraries that hbt works with, and the check that says so.

Torch-free, and it imports neither library: it reads their installed metadata, so a
mismatched transformers is reported in one line before its import could fail (transformers
5 breaks optimum-onnx 0.1 at import, with an ImportError deep inside optimum).
"""

from __future__ import annotations

from importlib import metadata
from typing import Callable

from packaging.requirements import Requirement

from hbt.errors import HbtError

# optimum-onnx 0.1's own pin on transformers, and the line the export's graphs were checked on.
# pyproject.toml's extras repeat these strings (tests/test_packaging.py keeps them equal).
TRANSFORMERS = "transformers>=4.40,<4.58"
OPTIMUM_ONNX = "optimum-onnx>=0.1,<0.2"
EXPORT_REQUIREMENTS = (TRANSFORMERS, OPTIMUM_ONNX)


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_export_versions(version_of: Callable[[str], str | None] = installed_version) -> None:
    """Raise HbtError in one line unless transformers and optimum-onnx are installed in the working range."""
    for line in EXPORT_REQUIREMENTS:
        requirement = Requirement(line)
        version = version_of(requirement.name)
        if version is None:
            raise HbtError(f"hbt-export needs the train extra ({requirement.name} is not installed): "
                           "pip install 'hbt[train]'")
        # prereleases=True: a release candidate inside the range works; "<4.58" still refuses 4.58.0rc1.
        if not requirement.specifier.contains(version, prereleases=True):
            pins = " ".join(f"'{pin}'" for pin in EXPORT_REQUIREMENTS)
            raise HbtError(f"hbt-export works with {line}, and {requirement.name} {version} is installed: "
                           f"pip install {pins}")
