"""hbt-serve through Starlette's test client: endpoints, bad input, the token, live updates, micro-batching."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import warnings

import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install 'hbt[serve]'")
pytest.importorskip("httpx", reason="Starlette's test client needs httpx (the dev extra)")

from click.testing import CliRunner

with warnings.catch_warnings():  # Starlette 1.x would rather have httpx2; httpx works with every version
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from hbt.corpus import Document
from hbt.serve.app import ServeConfig, create_app
from hbt.serve.batching import MicroBatcher

DOCS = [
    Document("cat-en", "The cat sleeps on the warm windowsill.", "", "en"),
    Document("cat-de", "Die Katze schläft auf der warmen Fensterbank.", "Katze", "de"),
    Document("cat-ru", "Кошка спит на тёплом подоконнике.", "", "ru"),
    Document("cat-zh", "猫在温暖的窗台上睡觉。", "", "zh"),
    Document("cat-ar", "القطة تنام على حافة النافذة الدافئة.", "", "ar"),
    Document("script-en", "<script>alert(1)</script> is shown as text.", "", "en"),
]


@pytest.fixture()
def index_dir(tiny_bundle, tmp_path):
    from hbt.encoder import Encoder
    from hbt.index import IndexConfig, build_index

    build_index(DOCS, Encoder(tiny_bundle), tmp_path / "index", IndexConfig(threads=1))
    return tmp_path / "index"


@pytest.fixture()
def searcher(index_dir):
    from hbt.search import Searcher

    return Searcher.open(index_dir)


def local(app, **kwargs) -> TestClient:
    """A test client that names the server as a browser on this machine would (the Host check)."""
    return TestClient(app, base_url="http://localhost", **kwargs)


@pytest.fixture()
def client(searcher):
    with local(create_app(searcher, ServeConfig(max_k=20, max_queries=4, max_query_chars=100))) as client:
        yield client


def search(client, body, **headers):
    return client.post("/search", content=json.dumps(body), headers={"Content-Type": "application/json", **headers})


def test_search_returns_what_the_library_returns(client, searcher):
    answer = search(client, {"queries": ["warm cat", "猫"], "k": 3}).json()
    expected = searcher.search(["warm cat", "猫"], k=3)
    assert [result["query"] for result in answer["results"]] == ["warm cat", "猫"]
    for result, hits in zip(answer["results"], expected):
        assert [(hit["id"], hit["lang"], hit["title"], hit["text"]) for hit in result["hits"]] == \
               [(hit.id, hit.lang, hit.title, hit.text) for hit in hits]
        assert [hit["score"] for hit in result["hits"]] == pytest.approx([hit.score for hit in hits], abs=1e-3)
    assert {"queue", "encode", "search", "fetch", "total"} <= set(answer["timings"])
    assert answer["batch"] >= 2  # both queries of a request are encoded together


def test_language_filter(client):
    answer = search(client, {"query": "cat", "k": 10, "langs": ["de", "ru"]}).json()
    assert sorted(hit["id"] for hit in answer["results"][0]["hits"]) == ["cat-de", "cat-ru"]


def test_k_above_the_index_size_gives_every_document(client):
    hits = search(client, {"query": "cat", "k": 20}).json()["results"][0]["hits"]
    assert sorted(hit["id"] for hit in hits) == sorted(doc.id for doc in DOCS)


def test_health_info_and_metrics(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["documents"] == len(DOCS) and health["generation"] >= 1
    info = client.get("/info").json()
    assert info["count"] == len(DOCS)
    assert info["languages"] == {"en": 2, "de": 1, "ru": 1, "zh": 1, "ar": 1}
    assert info["limits"]["max_k"] == 20
    search(client, {"query": "cat"})
    search(client, {"query": ""})
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'hbt_http_requests_total{endpoint="search",status="200"} 1.0' in text
    assert 'hbt_http_requests_total{endpoint="search",status="422"} 1.0' in text
    assert 'hbt_http_request_duration_seconds_count{endpoint="search"} 2.0' in text
    for stage in ("queue", "encode", "search", "fetch"):
        assert f'hbt_search_stage_seconds_count{{stage="{stage}"}} 1.0' in text
    assert f"hbt_index_documents {float(len(DOCS))}" in text


def test_openapi_and_page(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) == {"/search", "/health", "/info", "/metrics"}
    assert "requestBody" in paths["/search"]["post"]
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html") and 'id="query"' in page.text
    for asset in ("app.js", "style.css"):
        assert client.get(f"/static/{asset}").status_code == 200


@pytest.mark.parametrize(("content_type", "body", "status", "says"), [
    ("application/json", b'{"query": "cat"', 400, "not valid JSON"),
    ("application/json", b'["cat"]', 422, "JSON object"),
    ("application/json", b'{"k": 3}', 422, '"query"'),
    ("application/json", b'{"query": "cat", "queries": ["dog"]}', 422, "either"),
    ("application/json", b'{"query": "   "}', 422, "non-empty"),
    ("application/json", b'{"queries": []}', 422, "non-empty"),
    ("application/json", b'{"query": "cat", "k": 0}', 422, "k = 0"),
    ("application/json", b'{"query": "cat", "k": 21}', 422, "from 1 to 20"),
    ("application/json", b'{"query": "cat", "k": "5"}', 422, 'k = "5"'),
    ("application/json", b'{"query": "cat", "k": true}', 422, "k = true"),
    ("application/json", b'{"query": "cat", "ef": -1}', 422, "ef = -1"),
    ("application/json", b'{"query": "cat", "langs": ["xx"]}', 422, "unknown language 'xx'"),
    ("application/json", b'{"query": "cat", "langs": "de"}', 422, "list of language codes"),
    ("application/json", b'{"query": "cat", "lang": ["de"]}', 422, "unknown field 'lang'"),
    ("application/json", json.dumps({"query": "x" * 101}).encode(), 422, "at most 100"),
    ("application/json", json.dumps({"queries": ["cat"] * 5}).encode(), 422, "at most 4 per request"),
    ("application/json", b'{"query": "' + b"x" * 10_000 + b'"}', 413, "a body over"),
    ("text/plain", b'{"query": "cat"}', 415, "application/json"),
    (None, b'{"query": "cat"}', 415, "application/json"),
])
def test_bad_input_gets_a_one_line_json_error(client, content_type, body, status, says):
    response = client.post("/search", content=body, headers={"Content-Type": content_type} if content_type else {})
    assert response.status_code == status
    message = response.json()["error"]
    assert says in message and "\n" not in message


def test_unknown_route_and_method(client):
    assert client.get("/nowhere").status_code == 404 and "error" in client.get("/nowhere").json()
    response = client.get("/search")
    assert response.status_code == 405 and response.json()["error"].startswith("GET /search")


def test_token_guards_everything_but_health_and_the_page(searcher):
    with local(create_app(searcher, ServeConfig(token="s3cret"))) as client:
        for path in ("/info", "/metrics", "/openapi.json"):
            assert client.get(path).status_code == 401
            assert client.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert search(client, {"query": "cat"}).status_code == 401
        assert search(client, {"query": "cat"}, Authorization="Bearer wrong").status_code == 401
        assert search(client, {"query": "cat"}, Authorization="Bearer s3cret").status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/").status_code == 200


def test_live_update_while_queries_run(tiny_bundle, index_dir, searcher):
    from hbt.encoder import Encoder
    from hbt.index import add_documents, compact_index, delete_documents

    new = Document("cat-fr", "Le chat dort sur le rebord chaud de la fenêtre.", "", "fr")
    statuses, found, stop = [], [], threading.Event()
    with local(create_app(searcher, ServeConfig(refresh_seconds=0.05))) as client:

        def query_until_stopped():
            while not stop.is_set():
                response = search(client, {"query": new.text, "k": 3})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    found.append(any(hit["id"] == new.id for hit in response.json()["results"][0]["hits"]))

        workers = [threading.Thread(target=query_until_stopped) for _ in range(3)]
        for worker in workers:
            worker.start()
        try:
            add_documents(index_dir, [new], Encoder(tiny_bundle))
            wait_for(lambda: client.get("/health").json()["documents"] == len(DOCS) + 1)
            wait_for(lambda: found and found[-1])
            assert client.get("/info").json()["languages"]["fr"] == 1
            delete_documents(index_dir, [new.id])
            wait_for(lambda: client.get("/health").json()["documents"] == len(DOCS))
            generation = client.get("/health").json()["generation"]
            compact_index(index_dir)
            wait_for(lambda: client.get("/health").json()["generation"] > generation)
            assert len(client.get("/info").json()["segments"]) == 1
            assert not any(hit["id"] == new.id for hit in search(client, {"query": new.text, "k": 10})
                           .json()["results"][0]["hits"])
        finally:
            stop.set()
            for worker in workers:
                worker.join()
    assert statuses and set(statuses) == {200}
    assert False in found and True in found  # queries ran before and after the commit


def wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the server did not see the new commit"
        time.sleep(0.02)


# The micro-batcher alone, with a fake process that records its batches.

def run_batcher(scenario, max_size: int = 32, max_wait: float = 0.002, fail_on=None):
    batches = []

    def process(items):
        if fail_on == "batch":
            raise RuntimeError("encoder down")
        batches.append(list(items))
        return [ValueError(item) if item == fail_on else item * 10 for item in items]

    async def main():
        async with MicroBatcher(process, max_size, max_wait) as batcher:
            return await scenario(batcher)

    return asyncio.run(main()), batches


def test_requests_arriving_together_share_a_batch():
    results, batches = run_batcher(lambda b: asyncio.gather(*(b.submit(i) for i in range(5))))
    assert [result for result, _, _ in results] == [0, 10, 20, 30, 40]
    assert batches == [[0, 1, 2, 3, 4]] and {size for _, size, _ in results} == {5}


def test_batches_stop_at_max_size():
    _, batches = run_batcher(lambda b: asyncio.gather(*(b.submit(i) for i in range(5))), max_size=2)
    assert batches == [[0, 1], [2, 3], [4]]


def test_a_lone_request_does_not_wait():
    # With max_wait 30 s, a wait would time the test out.
    (result, size, queued), _ = run_batcher(lambda b: asyncio.wait_for(b.submit(7), 5), max_wait=30)
    assert (result, size) == (70, 1) and queued < 5


def test_a_batch_waits_for_requests_arriving_close_together():
    async def spaced(batcher):
        waiting = []
        for i in range(40):
            waiting.append(asyncio.ensure_future(batcher.submit(i)))
            await asyncio.sleep(0.005)
        return await asyncio.gather(*waiting)

    _, batches = run_batcher(spaced, max_wait=0.2)
    # Each request came alone, 5 ms after the last; only the wait can put several in one batch.
    assert max(map(len, batches)) >= 5 and sum(map(len, batches)) == 40


def test_an_error_fails_only_its_request():
    results, _ = run_batcher(lambda b: asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True),
                             fail_on=1)
    assert isinstance(results[1], ValueError) and results[0][0] == 0 and results[2][0] == 20
    results, _ = run_batcher(lambda b: asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True),
                             fail_on="batch")
    assert all(isinstance(result, RuntimeError) for result in results)


# The command.

def test_cli_help_and_errors(tmp_path, monkeypatch):
    from hbt.cli.serve import main

    assert "POST /search" in CliRunner().invoke(main, ["--help"]).output
    result = CliRunner().invoke(main, ["--index", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no index here" in result.output and "Traceback" not in result.output
    for name in [name for name in sys.modules if name.split(".")[0] == "starlette"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if the serve extra were not installed
    monkeypatch.delitem(sys.modules, "hbt.serve.app")
    result = CliRunner().invoke(main, ["--index", str(tmp_path)])
    assert result.exit_code == 2 and "pip install 'hbt[serve]'" in result.output
