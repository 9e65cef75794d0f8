"""The planner's costs: measured on this machine at open, shown by hbt-search -v, and deciding the plan."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from hbt.cli.search import main as search_main
from hbt.corpus import Document
from hbt.encoder import Encoder
from hbt.index import Costs, Index, IndexConfig, build_index, new_graph
from hbt.index.calibrate import CACHE_FILE, machine_costs, measure_costs
from hbt.index.planner import ZEN4, choose_plan
from tests.fakes import HashEncoder

ENCODER = HashEncoder(dimension=32)


def test_the_plan_follows_the_costs():
    """The same filter (5% of 100k vectors) is a scan where scans are cheap and a graph search where beams are."""
    cheap_scan, cheap_beam = Costs(exact=0.01, beam=5.0), Costs(exact=1.0, beam=0.5)
    assert choose_plan(5_000, 100_000, 10, 128, costs=cheap_scan).kind == "exact"
    assert choose_plan(5_000, 100_000, 10, 128, costs=cheap_beam).kind == "filtered-hnsw"


def test_costs_are_measured_on_a_graph():
    costs = measure_costs(small_graph(), 32)
    assert costs.source == "measured" and all(math.isfinite(c) and c > 0 for c in (costs.exact, costs.beam))
    assert measure_costs(new_graph(32, 1), 32).beam == ZEN4.beam  # nothing to time in an empty graph


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Each test's own cache directory, never the user's."""
    monkeypatch.setenv("HBT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / CACHE_FILE


def small_graph(count: int = 2_000):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((count, 32)).astype(np.float32)
    graph = new_graph(32, count, IndexConfig(M=8, ef_construction=64))
    graph.add_items(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), np.arange(count))
    return graph


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    langs = ["en", "de", "fr", "sw"]
    docs = [Document(f"d{i}", f"text {i}", "", langs[i % 4]) for i in range(2_000)]
    out = tmp_path_factory.mktemp("planner") / "index"
    build_index(docs, ENCODER, out, IndexConfig(M=8, ef_construction=64))
    return out


def test_costs_are_measured_once_per_machine_then_read_from_the_cache(cache):
    graph = small_graph()
    first = machine_costs(graph, 32, 8)
    assert first.source == "measured" and cache.is_file()
    again = machine_costs(graph, 32, 8)
    assert (again.exact, again.beam) == (first.exact, first.beam) and "cached" in again.source
    assert machine_costs(graph, 32, 16).source == "measured"  # another M: another entry


def test_an_index_plans_with_the_cached_costs(directory, cache):
    """The plan changes when this machine's constants do."""
    Index(directory)  # measures and caches
    kinds = []
    for exact, beam in ((0.01, 5.0), (10.0, 0.01)):
        cache.write_text(json.dumps({key: {"exact": exact, "beam": beam} for key in json.loads(cache.read_text())}))
        plan = Index(directory).search(ENCODER.encode_queries(["q"]), 10, langs=["sw"]).plans[0]
        kinds.append(plan.split(": ")[1].split(" ")[0])
    assert kinds == ["exact", "filtered-hnsw"]


def test_an_index_plans_with_the_costs_it_measured_or_was_given(directory):
    index = Index(directory)
    assert index.costs.exact > 0 and index.reopen().costs is index.costs  # measured once per lineage
    query = ENCODER.encode_queries(["q"])
    plans = {costs: Index(directory, costs=costs).search(query, 10, langs=["sw"]).plans[0]
             for costs in (Costs(exact=0.01, beam=5.0), Costs(exact=10.0, beam=0.01))}
    assert [plan.split(": ")[1].split(" ")[0] for plan in plans.values()] == ["exact", "filtered-hnsw"]


def test_hbt_search_verbose_shows_the_costs(tiny_bundle, tmp_path):
    index = tmp_path / "index"
    build_index([Document(f"d{i}", f"text {i}", "", "en") for i in range(50)], Encoder(tiny_bundle), index)
    result = CliRunner().invoke(search_main, ["query", "text 3", "--index", str(index), "-v"])
    assert result.exit_code == 0, result.output
    assert "planner costs: exact " in result.output and "µs/vector" in result.output


@pytest.mark.parametrize("queries", [1, 4, 5, 40])
def test_exact_scores_are_the_products_on_either_path(queries):
    """A few queries take numpy's own loop, a batch takes BLAS: the same similarities either way."""
    from hbt.index.planner import exact_scores

    rng = np.random.default_rng(queries)
    q, v = rng.standard_normal((queries, 32), dtype=np.float32), rng.standard_normal((300, 32), dtype=np.float32)
    np.testing.assert_allclose(exact_scores(q, v), q.astype(np.float64) @ v.T.astype(np.float64), rtol=1e-4, atol=1e-4)
