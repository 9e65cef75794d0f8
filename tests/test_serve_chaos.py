"""Mixed load on hbt-serve, bounded in time (issue 21): queries (some poisoned), adds, deletes,
compacts and one damaged-then-repaired commit, all at once.

The server runs as hbt-serve in its own process on loopback, so its RSS is its own.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'hbt[serve]'")

from hbt.corpus import Document
from tests.conftest import MULTILINGUAL

LANGS = ["en", "de", "es", "fr", "ru", "zh", "ja", "ar", "hi", "th", "el", "tr", "vi", "ko", "mul"]
# Seconds of cycles (add, delete, compact); the first half warms up (the allocator's and the index's
# bounded caches fill, in steps), the second must keep the server's RSS within 5%.
SECONDS = 30
POISON = [  # each must get a 4xx and leave every other request alone
    '{"query": "cat \\ud800"}', '{"query": "  "}', json.dumps({"query": "x" * 2001}),
    '{"query": ' + "[" * 5000 + "]" * 5000 + "}", '{"query": "cat", "langs": ["xx"]}', '{"query": "cat", "k": 0}',
]
GOOD = [json.dumps(body) for body in itertools.chain(
    ({"query": text, "k": 5} for text in MULTILINGUAL),
    ({"query": text, "k": 3, "langs": [lang]} for text, lang in zip(MULTILINGUAL, LANGS)),
    ({"queries": MULTILINGUAL[:4], "k": 10, "langs": ["en", "de", "ru"]},))]


def documents(prefix: str, count: int) -> list[Document]:
    return [Document(f"{prefix}-{i}", f"{MULTILINGUAL[i % len(MULTILINGUAL)]} ({prefix} {i})", "",
                     LANGS[i % len(LANGS)]) for i in range(count)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


class Clients:
    """Threads each sending requests on one keep-alive connection until stopped; every outcome kept."""

    def __init__(self, port: int):
        self.port, self.stop = port, threading.Event()
        self.good, self.poisoned, self.failures = 0, 0, []

    def run(self, seed: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        for i in itertools.count(seed):
            if self.stop.is_set():
                break
            poisoned = i % 5 == 0
            body = POISON[i // 5 % len(POISON)] if poisoned else GOOD[i % len(GOOD)]
            try:
                connection.request("POST", "/search", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                status, text = response.status, response.read()
            except (OSError, http.client.HTTPException) as e:
                self.failures.append(f"{body[:60]}: {e!r}")
                connection.close()
                continue
            if poisoned and 400 <= status < 500 and set(json.loads(text)) == {"error"}:
                self.poisoned += 1
            elif not poisoned and status == 200:
                self.good += 1
            else:
                self.failures.append(f"{body[:60]}: {status} {text[:200]!r}")


def get(port: int, path: str) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path)
    return json.loads(connection.getresponse().read())


def wait_for(condition, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_mixed_load_with_a_damaged_commit(tiny_bundle, tmp_path):
    from hbt.encoder import Encoder
    from hbt.index import Index, IndexConfig, add_documents, build_index, compact_index, delete_documents, verify_index

    encoder = Encoder(tiny_bundle, threads=1)
    index_dir = tmp_path / "index"
    build_index(documents("base", 300), encoder, index_dir, IndexConfig(threads=1))
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "HBT_TOKEN"}
    server = subprocess.Popen([sys.executable, "-m", "hbt.cli.serve", "--index", str(index_dir), "--port", str(port),
                               "--workers", "1", "--threads", "1"], env=env, stderr=subprocess.PIPE, text=True)
    clients = Clients(port)
    threads = [threading.Thread(target=clients.run, args=(seed,)) for seed in range(3)]
    rss, stale, warm = [], None, None
    try:
        wait_for(lambda: server.poll() is None and answers(port), 60)
        for thread in threads:
            thread.start()
        started = time.monotonic()
        for cycle in itertools.count():
            elapsed = time.monotonic() - started
            if elapsed > SECONDS:
                break
            if warm is None and elapsed > SECONDS / 2:
                warm = len(rss)
            added = documents(f"cycle{cycle}", 20)
            add_documents(index_dir, added, encoder)
            deleted = [doc.id for doc in added[:10]]
            if cycle == 2:
                stale = damage_and_repair(index_dir, server, port, deleted)
            else:
                delete_documents(index_dir, deleted)
            delete_documents(index_dir, [doc.id for doc in added[10:]])
            compact_index(index_dir)
            newest = Index(index_dir).generation
            wait_for(lambda: get(port, "/health") == {"status": "ok", "documents": 300, "generation": newest,
                                                      "refresh_failures": 0})
            rss.append(rss_kib(server.pid))
    finally:
        clients.stop.set()
        for thread in threads:
            thread.join()
        server.terminate()
        log = server.communicate(timeout=30)[1]
    assert not clients.failures, clients.failures[:5]
    assert clients.good > 100 and clients.poisoned > 20, (clients.good, clients.poisoned)
    assert stale["status"] == "stale" and stale["refresh_failures"] >= 1
    assert f"still serving generation {stale['generation']}" in log  # the damaged commit was logged
    verify_index(index_dir)
    growth = max(rss[warm:]) / rss[warm - 1] - 1  # each cycle ends on the same 300 documents
    print(f"{elapsed:.0f} s, {len(rss)} cycles: {clients.good} good and {clients.poisoned} poisoned requests; "
          f"server RSS KiB after each cycle {rss}; growth after {warm} warm-up cycles {growth:+.1%}")
    assert growth <= 0.05, rss


def answers(port: int) -> bool:
    try:
        return get(port, "/health")["status"] == "ok"
    except OSError:
        return False


def damage_and_repair(index_dir: Path, server: subprocess.Popen, port: int, ids: list[str]) -> dict:
    """Commit a delete whose tombstone file is then zeroed, as a bad disk would, before the server
    can see it; wait for the server to say it is stale, repair the file, and return what it said."""
    from hbt.index import delete_documents, read_manifest

    server.send_signal(signal.SIGSTOP)  # its requests wait meanwhile; none fails
    try:
        delete_documents(index_dir, ids)
        manifest = read_manifest(index_dir)
        entry = max((entry for entry in manifest.segments if entry.tombstones), key=lambda e: e.tombstones)
        tombstones = index_dir / entry.name / entry.tombstones  # named by generation: the newest
        good = tombstones.read_bytes()
        tombstones.write_bytes(bytes(len(good)))
    finally:
        server.send_signal(signal.SIGCONT)
    wait_for(lambda: get(port, "/health")["refresh_failures"] >= 2)
    stale = get(port, "/health")
    assert stale["generation"] < manifest.generation  # the last good commit serves
    tombstones.write_bytes(good)
    return stale
