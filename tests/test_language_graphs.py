"""Per-language graphs: which languages get one, search through them equals exact filtered search
(tombstones and several languages included), merges rebuild them, and indexes without them still open."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hbt.cli.index import main as index_main
from hbt.corpus import Document
from hbt.errors import SearchIndexError
from hbt.index import (Costs, Index, IndexConfig, add_documents, build_index, compact_index, delete_documents,
                       read_manifest, verify_index)
from hbt.index import language_graphs
from hbt.index.language_graphs import CONSTRUCTION_FACTOR, MEMORY_SHARE, TYPICAL_K, graph_languages
from hbt.index.planner import OVERFETCH, Plan
from tests.fakes import HashEncoder

ENCODER = HashEncoder(dimension=16)
# Costs under which any graph search beats an exact scan: every language gets a graph, and the planner uses it.
GRAPHS_WIN = Costs(exact=1.0, beam=0.001)
CONFIG = IndexConfig(M=8, ef_construction=64, ef=16)
LANGS = ["en", "sw", "fr", "de"]  # ef 16: languages up to 94% of a segment get a graph


@pytest.fixture(autouse=True)
def build_costs(monkeypatch):
    """Builds choose their graphs with GRAPHS_WIN and without the memory cap (tests that check them set theirs)."""
    monkeypatch.setattr(language_graphs, "machine_costs", lambda graph, dimension, M: GRAPHS_WIN)
    monkeypatch.setattr(language_graphs, "MEMORY_SHARE", 1.0)


def documents(count: int, langs: list[str], seed: int = 0, prefix: str = "d") -> list[Document]:
    chosen = np.random.default_rng(seed).choice(len(langs), size=count)
    return [Document(f"{prefix}{i}", f"text {prefix}{i} {seed}", "", langs[c]) for i, c in enumerate(chosen)]


def graph_files(directory) -> set[str]:
    return {f"{path.parent.name}/{path.name}" for path in directory.glob("seg-*/lang-*.hnsw")}


def recall(index: Index, queries: np.ndarray, k: int, langs: list[str]) -> float:
    """Share of hits that score as well as the k-th exact filtered neighbour (ties are not misses)."""
    exact = index.search(queries, k, langs=langs, exact=True)
    found = index.search(queries, k, ef=64, langs=langs)  # a beam past these small graphs' sizes: near exact
    assert found.keys.shape == exact.keys.shape
    return float(np.mean(found.scores >= exact.scores[:, -1:] - 1e-5))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(40, 300), seed=st.integers(0, 10_000), k=st.integers(1, 20),
       deleted=st.floats(0.0, 0.6), chosen=st.sets(st.sampled_from(["en", "de", "sw", "fr"]), min_size=1))
def test_language_graph_search_equals_exact_filtered_search(tmp_path_factory, count, seed, k, deleted, chosen):
    """Through the language graphs (the main graph's plan priced out), past tombstones, several languages merged."""
    out = tmp_path_factory.mktemp("graphs") / "index"
    docs = documents(count, ["en", "de", "sw", "fr"], seed)
    build_index(docs, ENCODER, out, CONFIG)
    rng = np.random.default_rng(seed)
    gone = [d.id for d in docs if rng.random() < deleted]
    if gone:
        delete_documents(out, gone)
    index = Index(out, costs=GRAPHS_WIN)
    (view,) = index.segments
    queries = ENCODER.encode_queries([f"query {seed} {i}" for i in range(8)])
    langs = frozenset(chosen)
    found = language_graphs.search(view, queries, k, 64, langs, Plan("exact", 10**6), GRAPHS_WIN)
    if not view.pool(langs):
        assert found is None
        return
    scores, labels, plan = found
    assert plan.kind == "language-graphs" and labels.shape == (8, min(k, view.pool(langs)))
    assert view.admitted(langs)[labels].all()  # live, and in one of the languages
    exact, _, _ = view.search(queries, k, 64, langs, exact=True)
    assert np.mean(scores >= exact[:, -1:] - 1e-5) >= 0.99
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first


def test_tombstones_are_filtered_out_of_a_language_graph(tmp_path):
    out = tmp_path / "index"
    docs = documents(600, ["en", "sw"])
    build_index(docs, ENCODER, out, CONFIG)
    index = Index(out, costs=GRAPHS_WIN)
    query = ENCODER.encode_queries(["q"])
    best = index.documents(index.search(query, 20, langs=["sw"]).keys[0])
    delete_documents(out, [doc.id for doc in best.values()])  # the language's 20 nearest, all gone
    index = index.reopen()
    ranking = index.search(query, 20, langs=["sw"])
    assert "language-graphs" in ranking.plans[0] and ranking.keys.shape == (1, 20)
    assert not {doc.id for doc in index.documents(ranking.keys[0]).values()} & {doc.id for doc in best.values()}
    assert recall(index, query, 20, ["sw"]) == 1.0


def test_a_merge_rebuilds_the_language_graphs(tmp_path):
    out = tmp_path / "index"
    build_index(documents(300, ["en", "sw"]), ENCODER, out, CONFIG)
    add_documents(out, documents(300, ["en", "sw"], seed=1, prefix="a"), ENCODER)
    before = graph_files(out)
    assert len(before) == 4  # two segments, two languages each
    delete_documents(out, [f"d{i}" for i in range(100)])
    manifest = compact_index(out, expunge_deletes=True)
    (segment,) = manifest.segments
    assert segment.live == 500 and set(segment.language_graphs) == {"en", "sw"}
    assert graph_files(out) == {f"{segment.name}/{name}" for name in segment.language_graphs.values()}
    assert verify_index(out)["checksums"] == "ok"
    assert recall(Index(out, costs=GRAPHS_WIN), ENCODER.encode_queries(["a", "b"]), 10, ["sw"]) >= 0.99


def test_language_graphs_off_builds_none_and_stays_off(tiny_bundle, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.id, "text": d.text, "lang": d.lang}) + "\n"
                              for d in documents(200, ["en", "sw"])))
    for mode in ("auto", "off"):
        result = CliRunner().invoke(index_main, ["build", str(corpus), "--bundle", str(tiny_bundle), "--index",
                                                 str(tmp_path / mode), "--M", "8", "--ef", "16",
                                                 "--language-graphs", mode])
        assert result.exit_code == 0, result.output
    assert graph_files(tmp_path / "auto") and not graph_files(tmp_path / "off")
    assert read_manifest(tmp_path / "off").language_graphs == "off"
    from hbt.encoder import Encoder

    add_documents(tmp_path / "off", documents(200, ["en", "sw"], prefix="a"), Encoder(tiny_bundle))
    assert not graph_files(tmp_path / "off")  # later segments follow the index's setting
    info = CliRunner().invoke(index_main, ["info", "--index", str(tmp_path / "auto")])
    assert "language graphs: en, sw" in info.output


def test_an_index_without_language_graphs_opens_and_searches(tmp_path):
    """An index written before language graphs: no manifest setting, no graph files."""
    out = tmp_path / "index"
    build_index(documents(300, ["en", "sw"]), ENCODER, out, IndexConfig(M=8, ef_construction=64, ef=16,
                                                                        language_graphs="off"))
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["language_graphs"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    index = Index(out, costs=GRAPHS_WIN)
    assert index.manifest.language_graphs == "auto" and not graph_files(out)
    assert "language-graphs" not in index.search(ENCODER.encode_queries(["q"]), 5, langs=["sw"]).plans[0]
    add_documents(out, documents(300, ["en", "sw"], prefix="a"), ENCODER)  # new segments get theirs
    assert len(graph_files(out)) == 2 and recall(Index(out, costs=GRAPHS_WIN), ENCODER.encode_queries(["q"]), 10,
                                                 ["sw"]) >= 0.99


def test_the_manifest_refuses_a_language_graph_of_no_language(tmp_path):
    out = tmp_path / "index"
    build_index(documents(200, ["en", "sw"]), ENCODER, out, CONFIG)
    manifest = json.loads((out / "manifest.json").read_text())
    files = manifest["segments"][0]["files"]
    files["lang-00007.hnsw"] = files.pop("lang-00001.hnsw")
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SearchIndexError, match="lists files"):
        read_manifest(out)
    manifest["language_graphs"] = "always"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SearchIndexError, match="language_graphs"):
        read_manifest(out)


def test_a_damaged_language_graph_is_refused_in_one_line(tmp_path):
    out = tmp_path / "index"
    build_index(documents(200, ["en", "sw"]), ENCODER, out, CONFIG)
    path = next(out.glob("seg-*/lang-*.hnsw"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)  # zeroed half
    path.write_bytes(bytes(data))
    with pytest.raises(SearchIndexError, match="lang-00000.hnsw: .*damaged"):
        verify_index(out)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(shares=st.lists(st.integers(1, 1000), min_size=1, max_size=12), ef=st.integers(16, 512),
       exact=st.floats(0.01, 1.0), beam=st.floats(0.1, 20.0))
def test_graphs_go_to_languages_between_the_bounds_within_the_memory_share(monkeypatch, shares, ef, exact, beam):
    monkeypatch.setattr(language_graphs, "MEMORY_SHARE", MEMORY_SHARE)
    languages = {f"l{i}": n for i, n in enumerate(shares)}
    count = sum(shares)
    chosen = graph_languages(languages, count, ef, Costs(exact, beam))
    lower, upper = ef * beam / exact * language_graphs.LOWER_MARGIN, count * TYPICAL_K * OVERFETCH / ef
    assert all(lower < languages[lang] < upper for lang in chosen)
    assert sum(languages[lang] for lang in chosen) <= language_graphs.MEMORY_SHARE * count
    skipped = [n for lang, n in languages.items() if lang not in chosen and lower < n < upper]
    room = language_graphs.MEMORY_SHARE * count - sum(languages[lang] for lang in chosen)
    assert all(n > room for n in skipped)  # left out only for want of memory


def test_language_graphs_are_built_with_a_wider_construction_beam(tmp_path):
    """A segment's language graphs are built at CONSTRUCTION_FACTOR times the index's ef_construction (hnswlib keeps
    it in the file); the main graph at the index's own."""
    import hnswlib

    out = tmp_path / "index"
    build_index(documents(600, LANGS), ENCODER, out, CONFIG)
    built = {}
    for path in out.glob("seg-*/*.hnsw"):
        graph = hnswlib.Index(space="ip", dim=ENCODER.dimension)
        graph.load_index(str(path))
        built[path.name] = graph.ef_construction
    assert built.pop("graph.hnsw") == CONFIG.ef_construction and len(built) == len(LANGS)
    assert set(built.values()) == {CONFIG.ef_construction * CONSTRUCTION_FACTOR}
    # At 1M documents the 10% language's graph had recall@10 .984 at ef 128 built at 200, .997 at 400.
    assert CONSTRUCTION_FACTOR >= 2


def test_the_memory_share_caps_the_graphs(monkeypatch):
    monkeypatch.setattr(language_graphs, "MEMORY_SHARE", MEMORY_SHARE)
    assert MEMORY_SHARE <= 0.35  # the memory target: 35% more at most
    languages = {"a": 200, "b": 200, "c": 200, "d": 400}  # all between the bounds at ef 16
    chosen = graph_languages(languages, 1000, 16, GRAPHS_WIN)
    assert sum(languages[lang] for lang in chosen) <= MEMORY_SHARE * 1000 and chosen


def test_the_planner_takes_a_language_graph_when_the_measured_costs_say_so(tmp_path):
    out = tmp_path / "index"
    build_index(documents(2_000, ["en", "sw", "fr", "de"]), ENCODER, out, CONFIG)
    query = ENCODER.encode_queries(["q"])
    kinds = [Index(out, costs=costs).search(query, k, langs=["sw"]).plans[0].split(": ")[1].split(" ")[0]
             for costs, k in ((Costs(exact=0.0001, beam=5.0), 10), (GRAPHS_WIN, 10), (GRAPHS_WIN, 2))]
    # A graph that exists beats a scan whatever the costs; the main graph (k 2: fetch 12, ef 16) beats it when the
    # beams are as wide.
    assert kinds == ["language-graphs", "language-graphs", "filtered-hnsw"]
    # Two languages: one ranking, each language through its own graph (at k 20 two beams of 20 cost less than
    # one of 60 on the main graph for half its documents).
    ranking = Index(out, costs=GRAPHS_WIN).search(query, 20, langs=["sw", "fr"])
    assert "sw: " in ranking.plans[0] and "fr: " in ranking.plans[0]


def test_a_snapshot_keeps_its_language_graphs_after_a_merge_removes_their_files(tmp_path):
    out = tmp_path / "index"
    build_index(documents(300, LANGS), ENCODER, out, CONFIG)
    add_documents(out, documents(300, LANGS, seed=1, prefix="a"), ENCODER)
    snapshot = Index(out, costs=GRAPHS_WIN)
    query = ENCODER.encode_queries(["q"])
    before = snapshot.search(query, 20, ef=64, langs=["sw"])
    compact_index(out, expunge_deletes=True)  # one new segment: the files the snapshot opened are gone
    assert not any((out / view.segment.name).exists() for view in snapshot.segments)
    after = snapshot.search(query, 20, ef=64, langs=["sw"])
    assert "language-graphs" in after.plans[0] and np.array_equal(before.keys, after.keys)
