"""Segments searched side by side on threads answer exactly as one after another."""

from __future__ import annotations

import numpy as np

from hbt.corpus import Document
from hbt.index import Index, IndexConfig, build_index
from hbt.index import fanout
from tests.fakes import HashEncoder

ENCODER = HashEncoder(dimension=16)


def test_fan_out_keeps_the_order_of_the_calls(monkeypatch):
    monkeypatch.setattr(fanout, "WORKERS", 4)
    assert fanout.fan_out([lambda i=i: i * i for i in range(9)]) == [i * i for i in range(9)]


def test_parallel_and_sequential_segment_searches_agree(tmp_path, monkeypatch):
    docs = [Document(f"d{i}", f"text {i}", "", ["en", "sw"][i % 2]) for i in range(800)]
    build_index(docs, ENCODER, tmp_path / "index", IndexConfig(M=8, ef_construction=64, segment_size=200))
    index = Index(tmp_path / "index")
    assert len(index.segments) == 4
    queries = ENCODER.encode_queries([f"q{i}" for i in range(5)])
    rankings = []
    for workers in (1, 4):
        monkeypatch.setattr(fanout, "WORKERS", workers)
        rankings.append([index.search(queries, 10, langs=langs) for langs in (None, ["sw"])])
    for sequential, parallel in zip(*rankings):
        assert np.array_equal(sequential.keys, parallel.keys) and sequential.plans == parallel.plans


def test_a_fan_out_from_the_pools_own_threads_runs_there_and_never_waits_on_the_pool(monkeypatch):
    import threading

    monkeypatch.setattr(fanout, "WORKERS", 2)

    def outer(i):
        inner = fanout.fan_out([lambda j=j: (j, threading.current_thread().name) for j in range(3)])
        return i, threading.current_thread().name, inner

    for i, thread, inner in fanout.fan_out([lambda i=i: outer(i) for i in range(2)]):
        assert thread.startswith(fanout.THREAD_PREFIX)
        assert inner == [(j, thread) for j in range(3)]  # on the calling pool thread, in order
