"""One contract for every index snapshot: ``Index`` in this process and ``RayIndex`` on a local Ray cluster.

Each test takes ``open_snapshot`` and runs once per implementation; the Ray ones are
marked ``ray`` (slow: a cluster and actors) and skip without the extra.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hbt.corpus import Document
from hbt.errors import DataError
from hbt.index import (Index, IndexConfig, IndexSnapshot, add_documents, build_index, delete_documents, document_key,
                       merge_rankings, passage_text, read_manifest)
from tests.fakes import HashEncoder

REPO = Path(__file__).resolve().parents[1]
LANGS = ["en", "de", "fr", "sw", "sw", "sw", "sw", "sw"]  # sw common, the others rarer
ENCODER = HashEncoder()
CONFIG = IndexConfig(M=8, ef_construction=64, segment_size=150)  # 400 documents: three segments


def corpus(count: int, prefix: str = "d") -> list[Document]:
    return [Document(f"{prefix}{i:04d}", f"text {i} of {prefix}", f"title {i % 5}" if i % 3 else "",
                     LANGS[i % len(LANGS)]) for i in range(count)]


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'hbt[ray]'")
    started = not ray.is_initialized()
    if started:
        os.environ["RAY_AUTH_MODE"] = "disabled"
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(params=["local", pytest.param("ray", marks=[pytest.mark.ray, pytest.mark.timeout(240)])])
def open_snapshot(request):
    """A function opening the index at a directory as the parameter's implementation; closed after the test."""
    opened = []

    def open_one(directory: Path) -> IndexSnapshot:
        if request.param == "local":
            snapshot = Index(directory)
        else:
            request.getfixturevalue("ray_cluster")
            from hbt.distributed.search import RayIndex

            snapshot = RayIndex(directory, groups=2)
        opened.append(snapshot)
        return snapshot

    yield open_one
    for snapshot in opened:
        snapshot.close()


@pytest.fixture
def directory(tmp_path) -> Path:
    build_index(corpus(400), ENCODER, tmp_path / "index", CONFIG)
    delete_documents(tmp_path / "index", ["d0007", "d0100", "d0399"])
    return tmp_path / "index"


def brute_force(queries: np.ndarray, documents: list[Document], k: int) -> list[list[str]]:
    """The k best ids per query by score, then id: what every snapshot's exact search must return."""
    vectors = ENCODER.encode_passages([passage_text(d) for d in documents])
    scores = queries @ vectors.T
    return [[documents[i].id for i in sorted(range(len(documents)), key=lambda i: (-row[i], documents[i].id))[:k]]
            for row in scores]


def ranked_ids(snapshot: IndexSnapshot, ranking) -> list[list[str]]:
    found = ranking.documents or snapshot.documents(np.unique(ranking.keys))
    return [[found[key].id for key in row] for row in ranking.keys.tolist()]


def test_a_snapshot_states_its_commit(open_snapshot, directory):
    snapshot = open_snapshot(directory)
    manifest = read_manifest(directory)
    assert isinstance(snapshot, IndexSnapshot)
    assert (snapshot.generation, snapshot.count, snapshot.languages) == (
        manifest.generation, 397, {"de": 50, "en": 50, "fr": 50, "sw": 247})  # d0007, d0100, d0399: sw
    assert snapshot.info()["segments"] == [{"name": e.name, "documents": e.count - e.deleted, "deleted": e.deleted,
                                            "languages": e.languages} for e in manifest.segments]


@pytest.mark.parametrize("langs", [None, ["fr"], ["de", "en"]])
def test_exact_search_is_brute_force_over_the_live_admitted_documents(open_snapshot, directory, langs):
    snapshot = open_snapshot(directory)
    live = [d for d in corpus(400) if d.id not in {"d0007", "d0100", "d0399"} and (not langs or d.lang in langs)]
    queries = ENCODER.encode_queries(["a question", "another one", "text 12"])
    ranking = snapshot.search(queries, 10, langs=langs, exact=True)
    assert ranked_ids(snapshot, ranking) == brute_force(queries, live, 10)
    assert np.all(np.diff(ranking.scores, axis=1) <= 0) and ranking.keys.dtype == np.int64


def test_graph_search_finds_the_exact_neighbours_and_every_key_names_a_document(open_snapshot, directory):
    snapshot = open_snapshot(directory)
    queries = ENCODER.encode_queries([f"question {i}" for i in range(20)])
    found = ranked_ids(snapshot, snapshot.search(queries, 10))
    exact = ranked_ids(snapshot, snapshot.search(queries, 10, exact=True))
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert recall >= 0.95
    keys = snapshot.search(queries, 10).keys
    assert set(snapshot.documents(keys.ravel().tolist())) == set(keys.ravel().tolist())


def test_k_is_clamped_to_the_admitted_documents_and_refused_below_one(open_snapshot, directory):
    snapshot = open_snapshot(directory)
    queries = ENCODER.encode_queries(["q"])
    assert snapshot.search(queries, 1000, langs=["en"]).keys.shape == (1, 50)
    assert snapshot.search(queries, 5, langs=["xx"]).keys.shape == (1, 0)
    with pytest.raises(DataError, match="k = 0"):
        snapshot.search(queries, 0)


def test_reopen_sees_the_next_commit_and_is_itself_when_none(open_snapshot, directory):
    snapshot = open_snapshot(directory)
    assert snapshot.reopen() is snapshot
    add_documents(directory, corpus(20, prefix="new"), ENCODER)
    newer = snapshot.reopen()
    try:
        assert (newer.generation, newer.count) == (snapshot.generation + 1, snapshot.count + 20)
        assert snapshot.count == 397  # the old snapshot is unchanged
    finally:
        if newer is not snapshot:
            newer.close()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from([0.5, 0.25, 0.0, -0.25]), st.integers(0, 40)), max_size=8),
                min_size=1, max_size=4), st.integers(1, 12))
def test_merge_rankings_keeps_the_k_best_by_score_then_id(searches, k):
    """For any searches' candidates (ties included), the merge is a full sort by score, then document id, cut at k."""
    rows = [{document_key(position, label): score for score, label in candidates}
            for position, candidates in enumerate(searches)]
    ids = {key: f"id-{(key * 7919) % 101:03d}-{key}" for row in rows for key in row}  # id order is not key order
    scores = [np.array([list(row.values())], np.float32).reshape(1, -1) for row in rows]
    keys = [np.array([list(row)], np.int64).reshape(1, -1) for row in rows]
    merged_keys, merged_scores = merge_rankings(scores, keys, k, lambda tied: {key: ids[key] for key in tied.tolist()})
    expected = sorted(((score, key) for row in rows for key, score in row.items()), key=lambda p: (-p[0], ids[p[1]]))[:k]
    assert merged_keys[0].tolist() == [key for _, key in expected]
    assert merged_scores[0].tolist() == [score for score, _ in expected]
