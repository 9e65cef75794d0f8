"""The segmented index: exact merges, the planner, snapshots, tombstones, merges, locks, crashes, format 1."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hbt.corpus import Document
from hbt.errors import DataError, SearchIndexError
from hbt.index import (Index, IndexConfig, add_documents, build_index, compact_index, delete_documents,
                       read_manifest, upgrade_index, verify_index)
from hbt.index.planner import ZEN4, choose_plan, widen
from hbt.search import Searcher
from tests.fakes import HashEncoder
from tests.pieces import PieceEncoder

LANGS = ["en", "de", "hi", "sw"]
REPO = Path(__file__).resolve().parents[1]


def docs(start: int, count: int, prefix: str = "d") -> list[Document]:
    """Documents with a skewed language mix: sw is rare."""
    return [Document(f"{prefix}{i}", f"text number {i} of {prefix}", lang=LANGS[0 if i % 7 else (i // 7) % 4])
            for i in range(start, start + count)]


def brute_force(documents: list[Document], query: np.ndarray, k: int, langs=None) -> list[str]:
    """The exact answer: ids by score, then id."""
    pool = [d for d in documents if not langs or d.lang in langs]
    scores = HashEncoder().encode_passages([d.text for d in pool]) @ query
    return [d.id for _, d in sorted(zip(-scores, pool), key=lambda pair: (round(float(pair[0]), 5), pair[1].id))][:k]


def result_ids(searcher: Searcher, query: str, k: int, langs=None) -> list[str]:
    return [hit.id for hit in searcher.search([query], k=k, langs=langs, mode="dense")[0]]  # against dense brute force


@pytest.fixture
def encoder():
    return PieceEncoder()  # its segments hold lexical parts: every test here covers them too


# The planner -----------------------------------------------------------------------------------------

@given(pool=st.integers(0, 10**7), extra=st.integers(0, 10**7), k=st.integers(1, 1000), ef=st.integers(1, 1000))
def test_plan_fetches_enough_within_the_graph(pool, extra, k, ef):
    size = pool + extra
    plan = choose_plan(pool, size, k, ef)
    if pool == 0:
        assert plan.kind == "skip"
    elif plan.kind == "exact":
        assert plan.fetch == pool
    else:
        assert min(k, pool) <= plan.fetch <= size and plan.ef >= max(plan.fetch, ef)
        assert plan.kind == ("hnsw" if extra == 0 else "filtered-hnsw")
        wider = widen(plan, size, pool)
        assert wider.kind == "exact" or wider.fetch > plan.fetch


def test_plan_scans_rare_languages_and_walks_the_graph_for_common_ones():
    assert choose_plan(1_000, 1_000_000, 10, 128).kind == "exact"  # 0.1%
    assert choose_plan(500_000, 1_000_000, 10, 128).kind == "filtered-hnsw"  # 50%
    assert choose_plan(1_000_000, 1_000_000, 10, 128).kind == "hnsw"
    assert choose_plan(1_000_000, 1_000_000, 10, 128, exact=True).kind == "exact"


# Search over segments --------------------------------------------------------------------------------

@pytest.fixture
def segmented(tmp_path, encoder):
    """300 documents in segments of at most 64."""
    corpus = docs(0, 300)
    build_index(corpus, encoder, tmp_path / "index", IndexConfig(M=8, ef_construction=64, segment_size=64))
    return tmp_path / "index", corpus


@pytest.mark.parametrize("langs", [None, ["sw"], ["de", "hi"], ["xx"]])
def test_segmented_search_equals_brute_force(segmented, encoder, langs):
    directory, corpus = segmented
    index = Index(directory)
    assert len(index.segments) == 5 and index.count == 300
    searcher = Searcher(encoder, index)
    for query in ("text number 3", "Katze", "sw 12"):
        expected = brute_force(corpus, encoder.encode_queries([query])[0], 10, langs)
        ranking = index.search(encoder.encode_queries([query]), 10, langs=langs, exact=True)
        assert [index.documents(ranking.keys[0])[key].id for key in ranking.keys[0]] == expected[:len(ranking.keys[0])]
        assert result_ids(searcher, query, 10, langs) == expected  # tiny segments: the planner scans too


def test_k_beyond_the_pool_is_clamped_alike_with_and_without_filter(segmented, encoder):
    searcher = Searcher(encoder, Index(segmented[0]))
    assert len(searcher.search(["q"], k=1000)[0]) == 300
    sw = sum(1 for d in segmented[1] if d.lang == "sw")
    assert len(searcher.search(["q"], k=1000, langs=["sw"])[0]) == sw
    with pytest.raises(DataError, match="k = 0"):
        searcher.search(["q"], k=0)


def test_graph_plans_agree_with_exact_search(tmp_path, encoder):
    """A segment large enough for the planner to walk its graph, filtered and not."""
    corpus = docs(0, 12_000)
    build_index(corpus, encoder, tmp_path / "index", IndexConfig(M=16, ef_construction=100))
    index = Index(tmp_path / "index", costs=ZEN4)  # fixed costs: each filter's plan is known
    queries = encoder.encode_queries([f"query {i}" for i in range(20)])
    for langs, kind in ((None, "hnsw"), (["en"], "filtered-hnsw"), (["sw"], "exact")):
        ranking = index.search(queries, 10, ef=40, langs=langs)
        assert kind in ranking.plans[0]
        exact = index.search(queries, 10, langs=langs, exact=True)
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ranking.keys, exact.keys)]) >= 0.95


# Updates, snapshots, tombstones ----------------------------------------------------------------------

def test_add_writes_a_segment_and_a_snapshot_keeps_its_answers(segmented, encoder):
    directory, _ = segmented
    searcher = Searcher(encoder, Index(directory))
    before = searcher.run(["brand new passage"], k=3)
    names = {p.name: p.stat().st_mtime_ns for p in directory.glob("seg-*/*")}
    add_documents(directory, [Document("new", "brand new passage", lang="sw")], encoder)
    assert {p.name: p.stat().st_mtime_ns for p in directory.glob("seg-*/*") if p.name in names} == names
    assert searcher.run(["brand new passage"], k=3).hits == before.hits  # the old snapshot
    assert searcher.refresh() and not searcher.refresh()
    hits = searcher.search(["brand new passage"], k=3)[0]
    assert hits[0].id == "new" and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_delete_then_readd_the_same_id(segmented, encoder):
    directory, _ = segmented
    manifest, missing = delete_documents(directory, ["d5", "nope"])
    assert missing == ["nope"] and manifest.count == 299
    assert "d5" not in result_ids(Searcher(encoder, Index(directory)), "text number 5 of d", 300)
    add_documents(directory, [Document("d5", "a different text")], encoder)
    assert result_ids(Searcher(encoder, Index(directory)), "a different text", 1) == ["d5"]
    with pytest.raises(DataError, match="duplicate document id 'd5'"):
        add_documents(directory, [Document("d5", "again")], encoder)


def test_a_forced_rebuild_replaces_every_document(segmented, encoder):
    directory, corpus = segmented
    build_index(corpus[:10] + docs(500, 5), encoder, directory, force=True)
    index = Index(directory)
    assert index.count == 15 and len(index.segments) == 1
    assert {p.name for p in directory.iterdir()} == {index.segments[0].segment.name, "manifest.json", "write.lock"}


def test_many_ids_beyond_sqlite_variable_limit(tmp_path, encoder):
    corpus = docs(0, 2500)
    build_index(corpus, encoder, tmp_path / "index", IndexConfig(M=8, ef_construction=32))
    manifest, missing = delete_documents(tmp_path / "index", [d.id for d in corpus[:2100]] + ["x"])
    assert manifest.count == 400 and missing == ["x"]
    hits = Searcher(encoder, Index(tmp_path / "index")).search([f"q{i}" for i in range(200)], k=10)
    assert {h.id for row in hits for h in row} <= {d.id for d in corpus[2100:]}


OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 30)),
    st.tuples(st.just("delete"), st.lists(st.integers(0, 120), max_size=12)),
    st.tuples(st.just("compact"), st.just(0)),
), min_size=1, max_size=8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS, langs=st.none() | st.lists(st.sampled_from(LANGS), min_size=1, max_size=2))
def test_deleted_documents_never_come_back(tmp_path_factory, encoder, operations, langs):
    directory = tmp_path_factory.mktemp("ops") / "index"
    live = {d.id: d for d in docs(0, 20)}
    build_index(list(live.values()), encoder, directory, IndexConfig(M=8, ef_construction=32, segment_size=16))
    next_id = 20
    for operation, argument in operations:
        if operation == "add":
            added = docs(next_id, argument)
            next_id += argument
            add_documents(directory, added, encoder)
            live.update({d.id: d for d in added})
        elif operation == "delete":
            ids = [f"d{i}" for i in argument]
            delete_documents(directory, ids)
            for i in ids:
                live.pop(i, None)
        else:
            compact_index(directory)
        index = Index(directory)
        assert index.count == len(live)
        query = encoder.encode_queries(["probe"])
        for exact in (True, False):
            ranking = index.search(query, len(live) or 1, langs=langs, exact=exact) if live else None
            found = [index.documents(ranking.keys[0])[k].id for k in ranking.keys[0]] if live else []
            assert set(found) == {i for i, d in live.items() if not langs or d.lang in langs}


def test_merge_policy_bounds_the_segments_of_many_small_adds(tmp_path, encoder):
    build_index(docs(0, 5), encoder, tmp_path / "index", IndexConfig(segment_size=10_000))
    for i in range(25):
        add_documents(tmp_path / "index", docs(100 + i, 1, prefix="a"), encoder)
    index = Index(tmp_path / "index")
    assert index.count == 30 and len(index.segments) < 10
    assert verify_index(tmp_path / "index")["recall_at_k"] == 1.0


def test_compact_rewrites_segments_with_many_tombstones_and_packs_small_ones(segmented, encoder):
    directory, _ = segmented
    delete_documents(directory, ["d1"] + [f"d{i}" for i in range(64, 128, 3)])  # 1 of the first 64, a third of the next
    add_documents(directory, docs(1000, 2), encoder)
    manifest = compact_index(directory)
    names = [e.name for e in manifest.segments]
    assert manifest.count == 279 and len(names) == 5 and [e.deleted for e in manifest.segments] == [1, 0, 0, 0, 0]
    manifest = compact_index(directory, expunge_deletes=True)
    assert manifest.count == 279 and all(not e.deleted for e in manifest.segments)
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [e.name for e in manifest.segments] + ["manifest.json", "write.lock"])


# Concurrency and crashes -----------------------------------------------------------------------------

ADD_SCRIPT = """
import sys
from hbt.corpus import Document
from hbt.index import add_documents
from tests.fakes import HashEncoder
prefix = sys.argv[2]
add_documents(sys.argv[1], [Document(f"{prefix}{i}", f"{prefix} text {i}") for i in range(50)], HashEncoder())
"""


def test_concurrent_writers_lose_nothing(segmented):
    directory, _ = segmented
    writers = [subprocess.Popen([sys.executable, "-c", ADD_SCRIPT, str(directory), prefix], cwd=REPO)
               for prefix in ("p", "q")]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    assert Index(directory).count == 400


FAULT_SCRIPT = """
import os, sys
from hbt.corpus import Document
from hbt.index import IndexConfig, add_documents, build_index, compact_index, delete_documents
from tests.pieces import PieceEncoder as HashEncoder  # with lexical parts

kill_at, operation, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3]
calls = 0

def counted(function):
    def call(*args, **kwargs):
        global calls
        calls += 1
        if calls == kill_at:
            os._exit(9)  # as if killed: no cleanup, no flush
        return function(*args, **kwargs)
    return call

for name in ("fsync", "replace", "rename", "unlink", "rmdir", "mkdir"):
    setattr(os, name, counted(getattr(os, name)))
fresh = [Document(f"n{i}", f"fresh text {i}", lang="de") for i in range(40)]
if operation == "build":
    build_index(fresh, HashEncoder(), directory, IndexConfig(M=8, ef_construction=32, segment_size=16), force=True)
elif operation == "add":
    add_documents(directory, fresh, HashEncoder())
elif operation == "delete":
    delete_documents(directory, [f"d{i}" for i in range(0, 300, 2)])
else:
    compact_index(directory, expunge_deletes=True)
print(calls)
"""


def index_state(directory: Path, encoder) -> tuple | None:
    """Everything a user sees: live ids and the answers to fixed queries."""
    try:
        index = Index(directory)
    except SearchIndexError:
        return None
    searcher = Searcher(encoder, index)
    ids = frozenset(h.id for h in searcher.search(["all"], k=10_000)[0])
    answers = tuple(tuple((h.id, round(h.score, 5)) for h in searcher.search([q], k=5, langs=langs, mode=mode)[0])
                    for q in ("alpha", "fresh text 3") for langs in (None, ["de"]) for mode in ("dense", "lexical", "hybrid"))
    return ids, answers


def run_fault(kill_at: int, operation: str, directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FAULT_SCRIPT, str(kill_at), operation, str(directory)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("operation", ["build", "add", "delete", "compact"])
def test_a_crash_at_any_file_operation_leaves_one_commit(segmented, encoder, tmp_path, operation):
    """Kill the writer at its Nth fsync/rename/replace/unlink/mkdir, for every N: the index is the
    state before or after, exactly, and the next write removes what the crash left."""
    import shutil

    base, _ = segmented
    delete_documents(base, ["d7"])  # tombstones for compaction to drop
    before = index_state(base, encoder)
    finished = tmp_path / "finished"
    shutil.copytree(base, finished)
    total = int(run_fault(0, operation, finished).stdout)
    after = index_state(finished, encoder)
    changed = json.loads((finished / "manifest.json").read_text())["segments"] != json.loads(
        (base / "manifest.json").read_text())["segments"]
    assert changed and total > 3 and (after != before or operation == "compact")  # compaction changes no answer
    for kill_at in range(1, total + 1):
        trial = tmp_path / f"trial-{kill_at}"
        shutil.copytree(base, trial)
        assert run_fault(kill_at, operation, trial).returncode == 9
        assert index_state(trial, encoder) in (before, after), f"killed at call {kill_at} of {total}"
        delete_documents(trial, ["no-such-id"])  # a write: it cleans up
        manifest = json.loads((trial / "manifest.json").read_text())
        named = {e["name"]: set(e["files"]) for e in manifest["segments"]}
        assert {p.name for p in trial.iterdir()} == set(named) | {"manifest.json", "write.lock"}
        assert all({p.name for p in (trial / name).iterdir()} == files for name, files in named.items())
        shutil.rmtree(trial)


def test_disk_errors_are_one_line_and_change_nothing(segmented, encoder, monkeypatch):
    directory, _ = segmented
    before, files = index_state(directory, encoder), sorted(directory.rglob("*"))
    real_replace = os.replace

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(SearchIndexError, match="No space left on device.*unchanged"):
        add_documents(directory, docs(1000, 10), encoder)
    assert sorted(directory.rglob("*")) == files  # the segment written for the failed commit is gone already
    monkeypatch.setattr(os, "replace", real_replace)
    assert index_state(directory, encoder) == before


# Damage, format 1 ------------------------------------------------------------------------------------

def test_damaged_files_are_refused_in_one_line(segmented):
    directory, _ = segmented
    graph = next(directory.glob("seg-*/graph.hnsw"))
    graph.write_bytes(graph.read_bytes()[:100])
    with pytest.raises(SearchIndexError, match=f"{graph}: 100 bytes, the manifest says"):
        Index(directory)
    (directory / "manifest.json").write_text("{broken")
    with pytest.raises(SearchIndexError, match="manifest.json: corrupted"):
        Index(directory)


@pytest.mark.parametrize("field, value", [
    ("name", "../../etc"), ("name", "/tmp/seg-000001"), ("tombstones", "../x.npy"), ("count", -1)])
def test_hostile_manifests_are_refused(segmented, field, value):
    directory, _ = segmented
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["segments"][0][field] = value
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SearchIndexError, match="invalid manifest"):
        Index(directory)


@pytest.mark.parametrize("field", ["generation", "M", "segments", "languages", "segments.0.files.graph.hnsw.bytes",
                                   "segments.0.language_codes", "bundle.fingerprint"])
def test_a_manifest_missing_any_field_is_refused_in_one_line(segmented, field):
    directory, _ = segmented
    manifest = json.loads((directory / "manifest.json").read_text())
    *parents, last = field.replace("graph.hnsw", "graph_hnsw").split(".")
    record = manifest
    for key in parents:
        record = record[int(key)] if key.isdigit() else record[key.replace("graph_hnsw", "graph.hnsw")]
    del record[last]
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SearchIndexError, match=f"invalid manifest .*{last}") as error:
        Index(directory)
    assert "\n" not in str(error.value)


def test_a_manifest_reads_back_as_it_was_written(segmented):
    directory, _ = segmented
    written = json.loads((directory / "manifest.json").read_text())
    assert read_manifest(directory).to_json() == written


def write_format_1(directory: Path, corpus: list[Document], encoder, deleted: set[str]) -> None:
    """An index as hbt wrote it before segments: one graph, one store, deletes marked in the graph."""
    import hnswlib

    directory.mkdir()
    graph = hnswlib.Index(space="ip", dim=encoder.dimension)
    graph.init_index(max_elements=len(corpus), M=8, ef_construction=32)
    graph.add_items(encoder.encode_passages([d.text for d in corpus]), np.arange(len(corpus)))
    db = sqlite3.connect(directory / "docs.sqlite")
    db.execute("CREATE TABLE docs (label INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, text TEXT NOT NULL, "
               "title TEXT, lang TEXT, meta TEXT)")
    for label, doc in enumerate(corpus):
        if doc.id in deleted:
            graph.mark_deleted(label)
        else:
            db.execute("INSERT INTO docs VALUES (?, ?, ?, ?, ?, '{}')", (label, doc.id, doc.text, "", doc.lang))
    db.commit()
    db.close()
    graph.save_index(str(directory / "hnsw.bin"))
    (directory / "manifest.json").write_text(json.dumps({
        "format": "hbt-index", "format_version": 1, "hbt_version": "0.1.0",
        "bundle": {"path": "hash-encoder", "fingerprint": encoder.manifest.fingerprint},
        "dimension": encoder.dimension, "space": "ip", "M": 8, "ef_construction": 32, "ef": 64,
        "created": "2026-01-01T00:00:00", "updated": "2026-01-01T00:00:00", "count": len(corpus) - len(deleted),
        "capacity": len(corpus), "next_label": len(corpus), "files": {}}))


def test_format_1_is_upgraded_in_place(tmp_path, encoder):
    corpus = docs(0, 60)
    write_format_1(tmp_path / "old", corpus, encoder, deleted={"d3", "d4"})
    with pytest.raises(SearchIndexError, match="hbt-index upgrade"):
        Index(tmp_path / "old")
    manifest = upgrade_index(tmp_path / "old", tokenizer=encoder.tokenizer)
    assert manifest.count == 58 and not (tmp_path / "old" / "hnsw.bin").exists()
    assert all("lexical.bin" in entry.files for entry in manifest.segments)  # added in the same upgrade
    live = [d for d in corpus if d.id not in ("d3", "d4")]
    searcher = Searcher(encoder, Index(tmp_path / "old"))
    assert result_ids(searcher, "text number 3 of d", 10) == brute_force(live, encoder.encode_queries(
        ["text number 3 of d"])[0], 10)
    assert verify_index(tmp_path / "old")["recall_at_k"] == 1.0


def test_verify_finds_vectors_without_a_document(segmented):
    """A store that lost a live document's row, with checksums made to match: only the count check sees it."""
    from hbt.bundle import sha256_file

    directory, _ = segmented
    manifest = json.loads((directory / "manifest.json").read_text())
    entry = manifest["segments"][0]
    store = directory / entry["name"] / "docs.sqlite"
    db = sqlite3.connect(store)
    db.execute("DELETE FROM docs WHERE label = 3")
    db.commit()
    db.close()
    entry["files"]["docs.sqlite"] = {"sha256": sha256_file(store), "bytes": store.stat().st_size}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SearchIndexError, match="does not hold the 64 live documents"):
        verify_index(directory)


KILL_SCRIPT = """
import sys
from hbt.corpus import Document
from hbt.index import IndexConfig, add_documents, build_index, compact_index, delete_documents
from tests.pieces import PieceEncoder as HashEncoder  # with lexical parts

operation, directory, trial = sys.argv[1], sys.argv[2], int(sys.argv[3])
fresh = [Document(f"t{trial}-{i}", f"trial {trial} text {i}", lang="de") for i in range(3000)]
print("ready", flush=True)
if operation == "build":
    build_index(fresh, HashEncoder(), directory, IndexConfig(M=16, ef_construction=100, segment_size=1000), force=True)
elif operation == "add":
    add_documents(directory, fresh, HashEncoder())
elif operation == "delete":
    delete_documents(directory, [f"d{i}" for i in range(trial % 3, 300, 3)])
else:
    compact_index(directory, expunge_deletes=True)
"""


def test_kill_9_at_random_moments_leaves_one_commit(segmented, encoder, tmp_path):
    """20 seeded trials: SIGKILL at a random moment of build, add, delete or compact (fresh ids each time)."""
    import shutil
    import time

    base, _ = segmented
    delete_documents(base, ["d8"])
    before = index_state(base, encoder)
    rng = np.random.default_rng(7)
    for trial in range(20):
        operation = ("build", "add", "delete", "compact")[trial % 4]
        finished, killed = tmp_path / f"finished-{trial}", tmp_path / f"killed-{trial}"
        shutil.copytree(base, finished)
        shutil.copytree(base, killed)
        command = [sys.executable, "-c", KILL_SCRIPT, operation]
        process = subprocess.Popen([*command, str(finished), str(trial)], cwd=REPO, stdout=subprocess.PIPE)
        process.stdout.readline()  # imports done: time the operation alone
        start = time.perf_counter()
        assert process.wait(timeout=120) == 0
        duration = time.perf_counter() - start
        process = subprocess.Popen([*command, str(killed), str(trial)], cwd=REPO, stdout=subprocess.PIPE)
        process.stdout.readline()
        time.sleep(rng.uniform(0, 1) * duration)
        process.kill()
        process.wait()
        assert index_state(killed, encoder) in (before, index_state(finished, encoder)), f"trial {trial}: {operation}"
        shutil.rmtree(finished)
        shutil.rmtree(killed)


# Issue 21: races, bounded caches, snapshots that own their files, one-line damage ------------------------

class GatedEncoder(HashEncoder):
    """Blocks in its first call until the test releases it: a build that holds the lock as long as wanted."""

    def __init__(self):
        super().__init__()
        self.started, self.release = threading.Event(), threading.Event()

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        self.started.set()
        if not self.release.wait(60):
            raise TimeoutError("the test never released the encoder")
        return self.encode(texts)


def test_a_build_that_waited_for_the_lock_refuses_the_index_built_meanwhile(tmp_path, caplog):
    """The reported race: a second build started while the first ran replaced its index, both exiting 0."""
    directory, outcome = tmp_path / "race", {}

    def build(name: str, corpus: list[Document], encoder) -> None:
        try:
            outcome[name] = build_index(corpus, encoder, directory, IndexConfig(M=8, ef_construction=32)).count
        except SearchIndexError as e:
            outcome[name] = e

    slow = GatedEncoder()
    first = threading.Thread(target=build, args=("first", docs(0, 300), slow))
    first.start()
    assert slow.started.wait(60)  # the first build holds the lock, its index not committed yet
    second = threading.Thread(target=build, args=("second", docs(0, 5, prefix="s"), HashEncoder()))
    with caplog.at_level(logging.WARNING, logger="hbt.index.durable"):
        second.start()
        deadline = time.monotonic() + 10  # a writer that never says it waits: go on after 10 s all the same
        while "waiting" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        slow.release.set()
        first.join(60)
        second.join(60)
    assert outcome["first"] == 300
    error = outcome["second"]
    assert isinstance(error, SearchIndexError) and "already exists" in str(error) and "\n" not in str(error)
    assert f"waiting for another process (pid {os.getpid()})" in caplog.text
    assert Index(directory).count == 300 and verify_index(directory)["recall_at_k"] == 1.0


def test_many_language_subsets_keep_the_scan_cache_within_one_copy_of_the_vectors(tmp_path, encoder):
    """The reported growth: a cache entry per distinct language subset (2^L of them), never evicted."""
    import gc
    import itertools
    import tracemalloc

    languages = [f"l{i:02d}" for i in range(12)]
    corpus = [Document(f"d{i}", f"text {i}", lang=languages[i % 12]) for i in range(2400)]
    build_index(corpus, encoder, tmp_path / "index", IndexConfig(M=8, ef_construction=32))
    index = Index(tmp_path / "index")
    query = encoder.encode_queries(["probe"])
    subsets = [combo for size in (2, 3) for combo in itertools.combinations(languages, size)]  # 286
    tracemalloc.start()
    try:
        for language in languages:
            index.search(query, 10, langs=[language])
        gc.collect()
        warm = tracemalloc.get_traced_memory()[0]
        for subset in subsets:
            ranking = index.search(query, 10, langs=subset)
            assert "exact" in ranking.plans[0]  # the cached path: scans
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - warm
    finally:
        tracemalloc.stop()
    one_copy = len(corpus) * (encoder.dimension * 4 + 8)  # every live vector and its label
    assert grown < one_copy, f"the cache grew {grown} bytes over {len(subsets)} subsets"
    for subset in subsets[::40]:  # blocks combined answer as one scan over the subset
        np.testing.assert_array_equal(index.search(query, 10, langs=subset).keys,
                                      index.search(query, 10, langs=subset, exact=True).keys)


def test_a_snapshot_filter_searches_after_compact_removed_its_files(segmented, encoder):
    directory, corpus = segmented
    delete_documents(directory, [f"d{i}" for i in range(0, 300, 2)])
    snapshot = Index(directory)
    compact_index(directory, expunge_deletes=True)
    assert not any((directory / view.segment.name).exists() for view in snapshot.segments)
    live = [d for d in corpus if int(d.id[1:]) % 2]
    searcher = Searcher(encoder, snapshot)
    for langs in (["sw"], ["de", "hi"], None):
        query = "text number 7 of d"
        assert result_ids(searcher, query, 10, langs) == brute_force(live, encoder.encode_queries([query])[0], 10,
                                                                     langs)


DROP = object()


@pytest.mark.parametrize("path, value", [
    (("M",), DROP), (("generation",), DROP), (("segments", 0, "language_codes"), DROP),
    (("segments", 0, "files", "graph.hnsw", "bytes"), DROP), (("bundle", "fingerprint"), DROP),
    (("next_segment",), DROP), (("languages",), DROP), (("ef",), "128"), (("segments", 0, "languages", "en"), -1),
    (("segments", 0, "language_codes"), ["en", "en"]), (("next_segment",), 0), (("count",), 7)])
def test_incomplete_or_inconsistent_manifests_are_refused_at_open(segmented, path, value):
    directory, _ = segmented
    manifest = json.loads((directory / "manifest.json").read_text())
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    if value is DROP:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SearchIndexError, match="invalid manifest") as error:
        Index(directory)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("pattern", ["langs.npy", "deletes-*.npy"])
def test_zeroed_arrays_are_refused_in_one_line(segmented, pattern):
    directory, _ = segmented
    delete_documents(directory, ["d1"])
    path = next(directory.glob(f"seg-*/{pattern}"))
    path.write_bytes(bytes(path.stat().st_size))  # the size the manifest says, all zeros
    with pytest.raises(SearchIndexError, match=f"{path}: not a readable array"):
        Index(directory)


def test_add_names_a_missing_segment_file(segmented, encoder):
    directory, _ = segmented
    missing = next(directory.glob("seg-*/langs.npy"))
    missing.unlink()
    with pytest.raises(SearchIndexError, match=f"{missing}: missing") as error:
        add_documents(directory, docs(1000, 3), encoder)
    assert "free space" not in str(error.value)


def test_a_failed_add_removes_the_segments_it_wrote(segmented, encoder):
    """Segments finished and unfinished by a failed add go at once: they may be what filled the disk."""
    directory, _ = segmented
    before = sorted(p.relative_to(directory) for p in directory.rglob("*"))
    with pytest.raises(DataError, match="duplicate document id 'd5'"):
        add_documents(directory, docs(1000, 600) + [Document("d5", "again")], encoder)  # 8 segments, then d5
    assert sorted(p.relative_to(directory) for p in directory.rglob("*")) == before
    assert Index(directory).count == 300
