"""Packaging: extras that cannot move each other's transformers, the lock, and the export's version check."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from hbt.compat import EXPORT_REQUIREMENTS, OPTIMUM_ONNX, TRANSFORMERS, check_export_versions, installed_version
from hbt.errors import HbtError

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
LOCK = ROOT / "requirements" / "lock.txt"
# Packages whose own requirements name transformers: an extra that lists one pulls it.
PULL_TRANSFORMERS = {"transformers", "sentence-transformers", "optimum", "optimum-onnx"}
# The platform the lock is resolved for (the Makefile's lock target).
LOCK_ENVIRONMENT = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
                    "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                    "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(line).name) for line in requirements}


def test_every_extra_that_lists_a_transformers_user_carries_the_supported_range():
    pulling = {extra for extra, requirements in EXTRAS.items() if names(requirements) & PULL_TRANSFORMERS}
    assert {"train", "bench"} <= pulling
    for extra in pulling:
        assert TRANSFORMERS in EXTRAS[extra], f"[{extra}] must list {TRANSFORMERS!r} (hbt.compat.TRANSFORMERS)"
    assert OPTIMUM_ONNX in EXTRAS["train"]


def pulls(requirement: Requirement, target: str, seen: set) -> bool:
    """Whether installing ``requirement`` installs ``target``, by the installed packages' metadata."""
    name = canonicalize_name(requirement.name)
    if name == target:
        return True
    key = (name, frozenset(requirement.extras))
    if key in seen:
        return False
    seen.add(key)
    for line in metadata.requires(name) or []:
        dependency = Requirement(line)
        wanted = dependency.marker is None or any(dependency.marker.evaluate({"extra": extra})
                                                  for extra in ("", *requirement.extras))
        if wanted and installed_version(dependency.name) is not None and pulls(dependency, target, seen):
            return True
    return False


def test_installed_metadata_finds_transformers_only_behind_extras_that_pin_it():
    """The list above can miss a new package that pulls transformers; the installed metadata cannot."""
    missing = [line for lines in EXTRAS.values() for line in lines if installed_version(Requirement(line).name) is None]
    if missing:
        pytest.skip(f"needs every extra installed (make install); missing {missing[0]}")
    pulling = {extra for extra, lines in EXTRAS.items()
               if any(pulls(Requirement(line), "transformers", set()) for line in lines)}
    assert {"train", "bench"} <= pulling
    for extra in pulling:
        assert TRANSFORMERS in EXTRAS[extra], f"[{extra}] pulls transformers, so it must list {TRANSFORMERS!r}"


def test_the_range_ends_where_optimum_onnx_own_pin_does():
    if installed_version("optimum-onnx") is None:
        pytest.skip("optimum-onnx is not installed (pip install 'hbt[train]')")
    ours = Requirement(TRANSFORMERS).specifier
    theirs = [Requirement(line) for line in metadata.requires("optimum-onnx") if Requirement(line).name == "transformers"]
    bound = {spec.operator: Version(spec.version) for spec in theirs[0].specifier}
    assert {spec.operator: Version(spec.version) for spec in ours}["<"] == bound["<"]
    assert {spec.operator: Version(spec.version) for spec in ours}[">="] >= bound[">="]
    assert Requirement(OPTIMUM_ONNX).specifier.contains(installed_version("optimum-onnx"))


def test_the_installed_export_libraries_pass_the_check():
    if installed_version("transformers") is None or installed_version("optimum-onnx") is None:
        pytest.skip("the export's libraries are not installed (pip install 'hbt[train]')")
    check_export_versions()


WORKING = {"transformers": "4.57.6", "optimum-onnx": "0.1.0"}


def versions(**overrides):
    known = WORKING | {name.replace("_", "-"): version for name, version in overrides.items()}
    return known.get


@given(major=st.integers(3, 6), minor=st.integers(0, 80), patch=st.integers(0, 9))
def test_the_check_refuses_exactly_the_transformers_outside_the_range(major, minor, patch):
    inside = (4, 40) <= (major, minor) < (4, 58)
    version = f"{major}.{minor}.{patch}"
    if inside:
        check_export_versions(versions(transformers=version))
    else:
        with pytest.raises(HbtError, match=re.escape(f"transformers {version} is installed")):
            check_export_versions(versions(transformers=version))


@pytest.mark.parametrize("version, works", [("4.57.6+cpu", True), ("4.58.0rc1", False), ("4.58.0.dev0", False),
                                            ("4.40.0", True), ("4.39.3", False)])
def test_the_check_reads_local_and_pre_release_versions(version, works):
    if works:
        check_export_versions(versions(transformers=version))
    else:
        with pytest.raises(HbtError):
            check_export_versions(versions(transformers=version))


def test_a_wrong_version_is_one_line_with_the_range_and_the_pip_command():
    with pytest.raises(HbtError) as error:
        check_export_versions(versions(transformers="5.24.0"))
    message = str(error.value)
    assert "\n" not in message
    assert f"works with {TRANSFORMERS}" in message
    assert message.endswith("pip install " + " ".join(f"'{line}'" for line in EXPORT_REQUIREMENTS))
    with pytest.raises(HbtError, match=re.escape(f"works with {OPTIMUM_ONNX}, and optimum-onnx 0.2.0 is installed")):
        check_export_versions(versions(optimum_onnx="0.2.0"))


def test_a_missing_library_names_the_train_extra():
    with pytest.raises(HbtError, match=r"^hbt-export needs the train extra \(optimum-onnx is not installed\): "
                                       r"pip install 'hbt\[train\]'$"):
        check_export_versions(versions(optimum_onnx=None))


def locked() -> dict[str, Version]:
    pins = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith((" ", "#")):
            name, version = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line).groups()
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_the_lock_satisfies_every_requirement_of_pyproject():
    pins = locked()
    lines = PROJECT["dependencies"] + [line for group in EXTRAS.values() for line in group]
    for line in lines:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(LOCK_ENVIRONMENT | {"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{LOCK} lacks {name}: run make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"{LOCK} pins {name} {pins[name]}, outside {line}: run make lock"


def test_the_lock_holds_torch_cpu_wheel_the_makefile_installs():
    pins = locked()
    makefile_torch = re.search(r"^TORCH = torch==(\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    assert pins["torch"].public == makefile_torch
    assert pins["torch"].local == "cpu"
    assert not [name for name in pins if name.startswith("nvidia-") or name == "triton"], "CUDA packages in the lock"


@pytest.mark.slow
def test_the_wheel_carries_the_page_without_setuptools_warnings(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("hbt", "export", "bench"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "reports"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
                            "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True, check=True)
    assert not re.findall(r"\w+Warning\b.*", build.stdout + build.stderr)
    wheel = next((tmp_path / "wheel").glob("hbt-*.whl"))
    listing = subprocess.run([sys.executable, "-m", "zipfile", "-l", str(wheel)], capture_output=True, text=True,
                             check=True).stdout
    for page_file in (ROOT / "hbt" / "serve" / "static").iterdir():
        assert f"hbt/serve/static/{page_file.name}" in listing
