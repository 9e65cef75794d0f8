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


@pytest.mark.parametrize("query_lang", [None, "de", "en"])
@pytest.mark.parametrize("mode", ["auto", "dense", "lexical", "hybrid"])
def test_mode_and_query_language_pass_through_to_the_searcher(client, searcher, mode, query_lang):
    from hbt.search import SearchMode

    given = {"query_lang": query_lang} if query_lang else {}
    answer = search(client, {"query": "Die Katze schläft", "k": 4, "langs": ["de"], "mode": mode} | given).json()
    expected = searcher.run(["Die Katze schläft"], k=4, langs=["de"], mode=SearchMode(mode, query_lang=query_lang))
    assert [hit["id"] for hit in answer["results"][0]["hits"]] == [hit.id for hit in expected.hits[0]]
    assert answer["plan"].split(";")[0] == expected.plan.split(";")[0]  # "mode hybrid (convex, ...) by auto (...)"
    auto = "hybrid" if query_lang == "de" else "dense"  # fused only for German queries searched in German alone
    assert answer["plan"].startswith(f"mode {auto if mode == 'auto' else mode}")


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
    described = client.get("/openapi.json").json()
    paths = described["paths"]
    assert set(paths) == {"/search", "/health", "/info", "/metrics", "/v1/embeddings", "/v1/models"}
    body = paths["/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    # The description follows the server's limits and the index's languages, so a fuzzer can trust it.
    assert (body["k"]["maximum"], body["queries"]["maxItems"], body["query"]["maxLength"]) == (20, 4, 100)
    assert body["langs"]["items"]["enum"] == ["ar", "de", "en", "ru", "zh"]
    assert body["mode"]["enum"] == ["auto", "dense", "lexical", "hybrid"]
    assert body["query_lang"]["type"] == "string"
    assert "security" not in described
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
    ("application/json", b'{"query": "cat", "mode": "bm25"}', 422, 'mode "bm25": one of auto, dense'),
    ("application/json", b'{"query": "cat", "query_lang": ["de"]}', 422, "query_lang must be the queries' language"),
    ("application/json", b'{"query": "cat", "query_lang": " "}', 422, "query_lang must be the queries' language"),
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
        described = client.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).json()
        assert described["security"] == [{"bearer": []}] and described["paths"]["/health"]["get"]["security"] == []
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


# Issue 21: one bad query, a commit that cannot be opened, hostile clients.

SURROGATE = '{"query": "cat \\ud800"}'  # JSON escapes half a surrogate pair; json.loads keeps it


def test_a_lone_surrogate_fails_only_its_own_request(client):
    bodies = [SURROGATE if i % 4 == 0 else json.dumps({"query": f"warm cat {i}"}) for i in range(24)]
    statuses = [None] * len(bodies)

    def send(i):
        statuses[i] = client.post("/search", content=bodies[i], headers={"Content-Type": "application/json"})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for body, response in zip(bodies, statuses):
        if body == SURROGATE:
            assert response.status_code == 422 and "lone surrogate (U+D800)" in response.json()["error"]
        else:
            assert response.status_code == 200, response.text


class PoisonedEncoder:
    """The real encoder, but "poison" breaks it, and the first call is slow so that later requests queue."""

    def __init__(self, encoder):
        self.encoder, self.calls = encoder, 0

    def __getattr__(self, name):  # the manifest, the tokenizer: the real encoder's
        return getattr(self.encoder, name)

    def encode_queries(self, texts):
        self.calls += 1
        if self.calls == 1:
            time.sleep(0.5)
        if any("poison" in text for text in texts):
            raise RuntimeError("the tokenizer choked")
        return self.encoder.encode_queries(texts)


def test_a_failure_the_checks_let_through_stays_with_its_request(searcher):
    searcher.encoder = PoisonedEncoder(searcher.encoder)
    config = ServeConfig(workers=1, max_wait_ms=0)
    with local(create_app(searcher, config), raise_server_exceptions=False) as client:
        first = threading.Thread(target=search, args=(client, {"query": "warm cat"}))
        first.start()  # holds the only worker for 0.5 s: what comes next forms one batch
        time.sleep(0.1)
        texts = ["poison cat" if i == 3 else f"cat {i}" for i in range(8)]
        responses = [None] * len(texts)

        def send(i):
            responses[i] = search(client, {"query": texts[i]})

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(texts))]
        for thread in threads:
            thread.start()
        for thread in [first, *threads]:
            thread.join()
    assert responses[3].status_code == 500 and responses[3].json() == {
        "error": "internal error; the server log has the details"}
    good = [response for i, response in enumerate(responses) if i != 3]
    assert [response.status_code for response in good] == [200] * 7
    assert max(response.json()["batch"] for response in good) > 1  # they did share a batch with the poison


@pytest.mark.parametrize("argument", ["cat \udced\udca0\udc80", "   "])  # bytes that are not UTF-8, as argv has them
def test_search_cli_refuses_a_query_it_cannot_encode_in_one_line(index_dir, argument):
    from hbt.cli.search import main

    result = CliRunner().invoke(main, [argument, "--index", str(index_dir)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert ("lone surrogate" if argument.strip() else "blank") in result.output


def test_live_reload_keeps_serving_and_following_through_a_commit_it_cannot_open(tiny_bundle, index_dir, searcher,
                                                                                 caplog):
    from hbt.encoder import Encoder
    from hbt.index import add_documents

    refresh, broken = searcher.refresh, threading.Event()
    broken.set()

    def refresh_unless_broken():
        if broken.is_set():
            raise ValueError("tombstones.npy: cannot reshape array")  # not an HbtError, as np.load raises
        return refresh()

    searcher.refresh = refresh_unless_broken
    before = searcher.index.generation
    with local(create_app(searcher, ServeConfig(refresh_seconds=0.02))) as client:
        add_documents(index_dir, [Document("cat-fr", "Le chat dort.", "", "fr")], Encoder(tiny_bundle))
        wait_for(lambda: client.get("/health").json()["refresh_failures"] >= 3)
        health = client.get("/health").json()
        assert health["status"] == "stale" and health["generation"] == before and health["documents"] == len(DOCS)
        assert search(client, {"query": "cat"}).status_code == 200  # the last good snapshot serves
        assert "ValueError: tombstones.npy" in client.get("/info").json()["refresh"]["error"]
        metrics = client.get("/metrics").text
        assert "hbt_index_refresh_failing 1.0" in metrics and "hbt_index_refresh_failures_total 0.0" not in metrics
        assert any(f"still serving generation {before}" in record.getMessage() and "ValueError" in record.getMessage()
                   for record in caplog.records)
        broken.clear()  # repaired: the newer commit is picked up
        wait_for(lambda: client.get("/health").json()["generation"] > before)
        health = client.get("/health").json()
        assert health == {"status": "ok", "documents": len(DOCS) + 1, "generation": health["generation"],
                          "refresh_failures": 0}
        assert client.get("/info").json()["refresh"] == {"failures": 0, "error": None}
        assert "hbt_index_refresh_failing 0.0" in client.get("/metrics").text


@pytest.mark.parametrize(("config", "host", "status"), [
    ({}, "evil.example", 421),  # DNS rebinding: a page from evil.example, its name now resolving to 127.0.0.1
    ({}, "localhost:8080", 200),
    ({}, "127.0.0.1", 200),
    ({}, "[::1]:8080", 200),
    ({}, "LOCALHOST.", 200),
    ({}, "127.0.0.1.evil.example", 421),
    ({"host": "10.1.2.3"}, "10.1.2.3:8080", 200),
    ({"host": "0.0.0.0"}, "search.example.org", 421),
    ({"host": "0.0.0.0", "allowed_hosts": ("Search.Example.org",)}, "search.example.org:443", 200),
    ({"allowed_hosts": ("*",)}, "anything.example", 200),
])
def test_only_allowed_host_names_are_served(searcher, config, host, status):
    with local(create_app(searcher, ServeConfig(**config))) as client:
        for path in ("/health", "/", "/info"):
            response = client.get(path, headers={"Host": host})
            assert response.status_code == status
        if status == 421:
            assert "--allowed-host" in response.json()["error"]


def test_bearer_scheme_is_case_insensitive_and_the_token_is_not(searcher):
    with local(create_app(searcher, ServeConfig(token="s3cret"))) as client:
        for header, status in [("bearer s3cret", 200), ("BEARER  s3cret ", 200), ("Bearer S3CRET", 401),
                               ("Basic s3cret", 401), ("Bearer", 401), ("Bearers3cret", 401), ("s3cret", 401)]:
            assert client.get("/info", headers={"Authorization": header}).status_code == status, header


@pytest.mark.parametrize(("body", "says"), [
    (b'{"query": ' + b"[" * 4000 + b"]" * 4000 + b"}", "nests too deeply"),
    (SURROGATE.encode(), "lone surrogate"),
    (b'{"queries": ["cat", "\\udfff dog"]}', "query 2 holds a lone surrogate (U+DFFF)"),
    (b'{"query": "cat", "langs": ["\\ud800"]}', "unknown language '\\ud800'"),
])
def test_hostile_json_gets_422_not_500(client, body, says):
    response = client.post("/search", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and says in response.json()["error"]


def test_info_names_the_bundle_without_its_path_beyond_loopback(searcher, tiny_bundle):
    with local(create_app(searcher, ServeConfig(host="0.0.0.0"))) as client:
        assert client.get("/info").json()["bundle"]["path"] == tiny_bundle.name
    with local(create_app(searcher, ServeConfig(host="127.0.0.1"))) as client:
        assert client.get("/info").json()["bundle"]["path"] == str(tiny_bundle.resolve())


# The micro-batcher alone, with a fake process that records its batches.

def run_batcher(scenario, max_size: int = 32, max_wait: float = 0.002, fail_on=None, workers: int = 1,
                seconds: float = 0.0):
    batches = []

    def process(items):
        if fail_on == "batch":
            raise RuntimeError("encoder down")
        batches.append(list(items))
        time.sleep(seconds)
        return [ValueError(item) if item == fail_on else item * 10 for item in items]

    async def main():
        async with MicroBatcher(process, max_size, max_wait, workers=workers) as batcher:
            return await scenario(batcher)

    return asyncio.run(main()), batches


def test_requests_arriving_together_share_a_batch():
    results, batches = run_batcher(lambda b: asyncio.gather(*(b.submit(i) for i in range(5))))
    assert [result for result, _, _ in results] == [0, 10, 20, 30, 40]
    assert batches == [[0, 1, 2, 3, 4]] and {size for _, size, _ in results} == {5}


def test_batches_stop_at_max_size():
    _, batches = run_batcher(lambda b: asyncio.gather(*(b.submit(i) for i in range(5))), max_size=2)
    assert batches == [[0, 1], [2, 3], [4]]


def test_free_workers_share_the_waiting_requests():
    # Closed-loop clients: were the first free worker to take all 9, the second would idle meanwhile.
    _, batches = run_batcher(lambda b: asyncio.gather(*(b.submit(i) for i in range(9))), workers=2, seconds=0.05)
    assert sorted(batches) == [[0, 1, 2, 3, 4], [5, 6, 7, 8]]


def test_a_busy_worker_leaves_every_waiting_request_to_the_free_one():
    async def scenario(batcher):
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)  # the first worker is busy with it
        return await asyncio.gather(first, *(batcher.submit(i) for i in range(1, 7)))

    _, batches = run_batcher(scenario, workers=2, seconds=0.2)
    assert batches == [[0], [1, 2, 3, 4, 5, 6]]


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


@pytest.fixture()
def started(monkeypatch):
    """hbt-serve's settings as it would start uvicorn, without starting it."""
    import uvicorn

    import hbt.serve.app

    seen = {}
    create_app = hbt.serve.app.create_app

    def create_and_keep(searcher, config, **kwargs):
        seen["config"], seen["searcher"] = config, searcher
        return create_app(searcher, config, **kwargs)

    monkeypatch.setattr(hbt.serve.app, "create_app", create_and_keep)
    monkeypatch.setattr(uvicorn.Server, "run", lambda server: seen.setdefault("uvicorn", server.config))
    monkeypatch.delenv("HBT_TOKEN", raising=False)
    return seen


def test_cli_token_from_the_environment_a_file_or_the_command_line(index_dir, tmp_path, started, monkeypatch):
    from hbt.cli.serve import main

    def serve(*arguments, env=None):
        result = CliRunner().invoke(main, ["--index", str(index_dir), *arguments], env=env)
        return result, started.pop("config", None)

    result, config = serve()
    assert result.exit_code == 0 and config.token is None and "warning" not in result.output
    result, config = serve(env={"HBT_TOKEN": "from-env"})
    assert result.exit_code == 0 and config.token == "from-env" and "warning" not in result.output
    (tmp_path / "token").write_text("from-file\n")
    result, config = serve("--token-file", str(tmp_path / "token"), env={"HBT_TOKEN": "from-env"})
    assert result.exit_code == 0 and config.token == "from-file"
    result, config = serve("--token", "in-ps")
    assert result.exit_code == 0 and config.token == "in-ps" and "shows in ps" in result.output
    result, _ = serve("--token", "a", "--token-file", str(tmp_path / "token"))
    assert result.exit_code == 2 and "not both" in result.output
    (tmp_path / "empty").write_text("\n")
    result, _ = serve("--token-file", str(tmp_path / "empty"))
    assert result.exit_code == 2 and "empty" in result.output and "Traceback" not in result.output


def test_cli_hands_the_limits_and_host_names_to_uvicorn_and_the_app(index_dir, started):
    from hbt.cli.serve import main

    result = CliRunner().invoke(main, ["--index", str(index_dir), "--host", "0.0.0.0", "--allowed-host", "a.example",
                                       "--max-connections", "7", "--header-timeout", "3", "--keep-alive-timeout", "2"])
    assert result.exit_code == 0, result.output
    config, server = started["config"], started["uvicorn"]
    assert config.host == "0.0.0.0" and config.allowed_hosts == ("a.example",) and config.body_seconds == 3
    assert (server.limit_concurrency, server.timeout_keep_alive, server.h11_max_incomplete_event_size) == (7, 2, 16384)
    assert server.http.keywords == {"header_seconds": 3}
