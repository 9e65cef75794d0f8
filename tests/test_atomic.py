"""Directory replacement: the target path always holds a whole directory, old or new."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

from hbt import atomic
from hbt.atomic import replace_directory


def staged(parent: Path, content: str) -> Path:
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=parent))
    (staging / "model.onnx").write_text(content)
    return staging


def test_replace_creates_then_exchanges(tmp_path, monkeypatch):
    target = tmp_path / "bundle"
    replace_directory(staged(tmp_path, "one"), target)
    seen = []
    exchange = atomic._exchange
    # The target must exist at the moment of the swap, and the swap must be one call.
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: seen.append(b.is_dir()) or exchange(a, b))
    replace_directory(staged(tmp_path, "two"), target)
    assert seen == [True] and (target / "model.onnx").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # the old copy is gone


def test_without_renameat2_the_two_renames_still_replace(tmp_path, monkeypatch):
    target = tmp_path / "bundle"
    replace_directory(staged(tmp_path, "one"), target)
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    replace_directory(staged(tmp_path, "two"), target)
    assert (target / "model.onnx").read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_exchange_swaps_on_linux(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    assert atomic._exchange(a, b) and (b / "x").read_text() == "a" and not (a / "x").exists()
