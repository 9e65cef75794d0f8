"""Per-language graphs: a segment's mid-sized languages get an HNSW graph of their own (Qdrant's payload graphs).

A filter to one language of a segment is searched on the main graph with a beam widened
to k·size/pool, or by an exact scan of the language's vectors: at 1M documents, a
language holding 1% of them cost 14× an unfiltered query either way. A graph of that
language's vectors alone answers at about the cost of one unfiltered query. A segment
builds one (``lang-NNNNN.hnsw``, NNNNN its language code) for each language whose
document count lies between two bounds, both derived from the index's ``ef`` and the
planner's costs measured on the machine (``hbt.index.calibrate``):

- lower: half of ``ef·beam / exact`` documents, the count at which an exact scan costs
  one graph search (the planner still picks the cheaper of the two at query time);
- upper: the share ``k·OVERFETCH / ef`` (k = TYPICAL_K), above which filtered search on
  the main graph keeps its beam at ``ef``, so it costs what an unfiltered query does.

A language graph is built with CONSTRUCTION_FACTOR times the index's ``ef_construction``:
built like the main graph, a graph of a share of the documents can find fewer true
neighbours at the same ef. At 1M benchmark documents (34k real vectors and 29 rotated
copies: 30 far-apart clusters, every query's neighbours in the real one), the 10%
language's graph had recall@10 .984 at ef 128, an unfiltered 100k sample of the same
corpus .977, the main graph .997; some queries found none of their neighbours. Built at
ef_construction 400, the language's graph had .997 at ef 128 and no such query. Its
search costs the same; its build about twice as much (a few percent of the segment's).

A graph holds copies of its vectors (hnswlib keeps them in the graph), so the graphs of
a segment hold at most MEMORY_SHARE of its documents together, rarest languages first.
Labels are the segment's own: documents and tombstones apply unchanged, and a merge
rebuilds the graphs of the segment it writes.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from hbt.errors import DataError
from hbt.index.calibrate import machine_costs
from hbt.index.format import LANGUAGE_GRAPH_MODES, IndexConfig, language_graph_name
from hbt.index.graph import INSERT_BATCH, add_shuffled, load_graph, new_graph
from hbt.index.planner import OVERFETCH, Costs, Plan, choose_plan, widen

TYPICAL_K = 10  # the k a segment's graphs are chosen for: hbt-search's default
MEMORY_SHARE = 0.3  # language graphs hold at most this share of a segment's documents (copies of their vectors)
LOWER_MARGIN = 0.5  # a graph from half the documents at which an exact scan costs one graph search
CONSTRUCTION_FACTOR = 2  # a language graph's ef_construction, in multiples of the index's: its recall matches the main's


def graph_languages(languages: dict[str, int], count: int, ef: int, costs: Costs) -> list[str]:
    """The languages (live documents each, of a segment of ``count``) that get a graph of their own, rarest first."""
    # An exact scan of fewer documents costs less than a graph search; halved, as measured costs on a busy
    # machine are off by up to 2x, and a graph of so few documents costs little memory.
    lower = ef * costs.beam / costs.exact * LOWER_MARGIN
    upper = count * TYPICAL_K * OVERFETCH / ef  # more: filtered search on the main graph needs no wider beam
    chosen, budget = [], MEMORY_SHARE * count
    for language, documents in sorted(languages.items(), key=lambda item: (item[1], item[0])):
        if lower < documents < upper and documents <= budget:
            chosen.append(language)
            budget -= documents
    return chosen


def write_language_graphs(directory: Path, graph, codes: np.ndarray, language_codes: Sequence[str],
                          languages: dict[str, int], config: IndexConfig) -> list[str]:
    """Build and save the graphs of a finished segment's languages (its main ``graph`` holds the vectors
    of labels 0 .. len(codes)-1, ``codes`` their languages); returns the files written."""
    if config.language_graphs not in LANGUAGE_GRAPH_MODES:
        raise DataError(f"language_graphs = {config.language_graphs!r}: must be one of "
                        f"{', '.join(LANGUAGE_GRAPH_MODES)}")
    if config.language_graphs == "off" or not len(codes):
        return []
    costs = machine_costs(graph, graph.dim, config.M)
    names = []
    for language in graph_languages(languages, len(codes), config.ef, costs):
        code = language_codes.index(language)
        labels = np.flatnonzero(codes == code)
        language_graph = new_graph(graph.dim, len(labels), replace(
            config, ef_construction=config.ef_construction * CONSTRUCTION_FACTOR))
        for start in range(0, len(labels), INSERT_BATCH):
            part = labels[start : start + INSERT_BATCH]
            add_shuffled(language_graph, np.asarray(graph.get_items(part), dtype=np.float32), part, config.threads)
        names.append(language_graph_name(code))
        language_graph.save_index(str(directory / names[-1]))
    return names


def load_language_graphs(segment, files: dict[str, str]) -> dict[str, object]:
    """A segment's language graphs (``files``: language -> file name) by language, each checked to hold as many
    vectors as the segment has labels in its language."""
    return {language: load_graph(segment.directory / name, segment.dimension, int(np.count_nonzero(
        segment.codes == segment.language_codes.index(language)))) for language, name in files.items()}


def search(view, queries: np.ndarray, k: int, ef: int, langs: frozenset, plan: Plan,
           costs: Costs) -> tuple[np.ndarray, np.ndarray, Plan] | None:
    """Search ``view`` (a SegmentView) for ``langs`` through their language graphs, the other languages by
    the main graph's plan, merged: scores and labels [Q, min(k, pool)] and the plan; or None when the
    language graphs would cost more than ``plan``, the main graph's."""
    graphs = view.segment.language_graphs
    own = sorted(language for language in langs if language in graphs and view.languages.get(language))
    if not own:
        return None
    rest = frozenset(langs) - set(own)
    # A graph was built because it beats a scan of its language (by the bound, with a margin), so it is not
    # priced against one here: measured at open on a busy machine, the two costs were off by 3x together (1M
    # documents: a 1% language scanned for 1.2 ms where its graph takes about 0.3). Against the main graph's
    # filtered search, both priced by the beam, the cheaper wins.
    graph_only = Costs(math.inf, costs.beam, costs.source)
    parts = {language: choose_plan(view.languages[language], graphs[language].get_current_count(), k, ef,
                                   costs=graph_only) for language in own}
    rest_plan = choose_plan(view.pool(rest), view.segment.count, k, ef, costs=costs)
    cost = sum(part.cost(costs) for part in parts.values()) + rest_plan.cost(costs)
    if plan.kind != "exact" and cost >= plan.cost(costs):
        return None
    scores, labels, _ = view.run(queries, k, rest, rest_plan, costs)
    found, described = [(scores, labels)], []
    for language, part in parts.items():
        scores, labels, part = _search_graph(view, graphs[language], language, queries, k, part, costs)
        found.append((scores, labels))
        described.append(f"{language}: {part.describe()}")
    scores, labels = np.hstack([s for s, _ in found]), np.hstack([lab for _, lab in found])  # [Q, parts·k]
    order = np.lexsort((labels, -scores), axis=1)[:, : min(k, view.pool(langs))]  # by score, then label
    return (np.take_along_axis(scores, order, 1), np.take_along_axis(labels, order, 1),
            Plan("language-graphs", sum(part.fetch for part in parts.values()), ef, tuple(described)))


def _search_graph(view, graph, language: str, queries: np.ndarray, k: int, plan: Plan,
                  costs: Costs) -> tuple[np.ndarray, np.ndarray, Plan]:
    """One language's k best [Q, k'] from its graph, past its tombstones (widening, exact at the end)."""
    size, pool = graph.get_current_count(), view.languages[language]
    k = min(k, pool)
    while plan.kind != "exact":
        labels, scores = view.segment.knn(queries, plan.fetch, plan.ef, graph)
        keep = view.live_mask[labels]  # [Q, fetch]: the graph holds only this language
        if (keep.sum(axis=1) >= k).all():
            first = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # live ones, in graph order
            return np.take_along_axis(scores, first, 1), np.take_along_axis(labels, first, 1), plan
        plan = widen(plan, size, pool, costs)
    scores, labels, _ = view.run(queries, k, frozenset({language}), plan, costs)
    return scores, labels, plan

