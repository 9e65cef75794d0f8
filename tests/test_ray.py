"""The Ray layer on one local 2-CPU cluster: --ray builds equal local builds, resume after crashes, refusals,
and search through actors equal to local search."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'hbt[ray]'")

from click.testing import CliRunner  # noqa: E402

from hbt.cli.index import main as index_main  # noqa: E402
from hbt.cli.search import main as search_main  # noqa: E402
from hbt.corpus import Document, read_corpus  # noqa: E402
from hbt.distributed import build as ray_build  # noqa: E402
from hbt.distributed.cluster import connect  # noqa: E402
from hbt.distributed.corpus import CorpusSource, batch_documents  # noqa: E402
from hbt.distributed.search import RayIndex  # noqa: E402
from hbt.encoder import Encoder  # noqa: E402
from hbt.errors import DataError, SearchIndexError  # noqa: E402
from hbt.index import Index, IndexConfig, build_index, verify_index  # noqa: E402
from hbt.search import Searcher  # noqa: E402
from tests.conftest import MULTILINGUAL  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[1]
LANGS = ["en", "de", "fr", "sw"]
TOPICS = ["rivers", "bees", "penicillin", "volcanoes", "chess", "tides", "glaciers"]
WORDS = " ".join(MULTILINGUAL).split()
CONFIG = IndexConfig(segment_size=600)  # 2,000 documents: four parts


@pytest.fixture(scope="session")
def cluster():
    """One local cluster for every Ray test: 2 CPUs, a small object store, no token file in ~/.ray."""
    saved = {key: os.environ.get(key) for key in ("RAY_AUTH_MODE", "PYTHONPATH")}
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), saved["PYTHONPATH"]]))  # tests.* in workers
    ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key)
        else:
            os.environ[key] = value


def write_corpus(path: Path, count: int = 2000, extra: list[str] = ()) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            text = " ".join(WORDS[(i % m + 17 * j) % len(WORDS)] for j, m in enumerate((7, 11, 13, 3)))
            handle.write(json.dumps({"id": f"d{i}", "text": f"{TOPICS[i % 7]}: {text}",
                                     "lang": LANGS[i % 4], "source": i % 3}) + "\n")
        handle.writelines(line + "\n" for line in extra)
    return path


def stored(directory: Path) -> list[tuple]:
    """Every live document of an index, sorted: (id, text, title, lang, meta)."""
    index = Index(directory)
    return sorted(row for view in index.segments
                  for row in view.segment.query("SELECT id, text, title, lang, meta FROM docs", []))


class CountingEncoder:
    """Makes the bundle's encoder in each actor; it logs how many passages it embeds, and with ``die``
    (a file that exists), kills its actor's process at its second batch, once."""

    def __init__(self, bundle: Path, log: Path, die: Path | None = None):
        self.bundle, self.log, self.die = str(bundle), str(log), die and str(die)

    def __call__(self):
        return self

    def encode_passages(self, texts: list[str]) -> np.ndarray:
        if not hasattr(self, "encoder"):
            self.encoder, self.batches = Encoder(self.bundle, threads=1), 0
        self.batches += 1
        if self.die and self.batches == 2 and os.path.exists(self.die):
            os.unlink(self.die)
            os._exit(1)
        with open(self.log, "a") as log:
            log.write(f"{len(texts)}\n")
        return self.encoder.encode_passages(texts)


def embedded(log: Path) -> int:
    return sum(int(line) for line in log.read_text().split()) if log.exists() else 0


@pytest.mark.parametrize("documents, segment_size", [(2000, 600), (30_000, 1000), (7, 2)])
def test_parts_hold_about_a_segment_each(documents, segment_size):
    ids = [f"doc-{i}" for i in range(documents)]
    counts = np.bincount(ray_build.buckets(ids), minlength=ray_build.BUCKETS)
    first_bucket, part_documents = ray_build.split_buckets(counts, segment_size)
    routed = np.bincount(ray_build.parts_of(ids, first_bucket), minlength=len(part_documents))
    assert routed.tolist() == part_documents  # what the plan counts is what the routing sends
    assert len(part_documents) == -(-documents // segment_size)
    assert max(part_documents) <= segment_size + counts.max()


def test_ray_build_equals_a_local_build(cluster, tiny_bundle, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    result = CliRunner().invoke(index_main, ["build", str(corpus), "--bundle", str(tiny_bundle), "--index",
                                             str(tmp_path / "ray"), "--segment-size", "600", "--ray"])
    assert result.exit_code == 0, result.output
    assert "2000 documents in 4 segment(s)" in result.output
    encoder = Encoder(tiny_bundle)
    build_index(read_corpus(corpus), encoder, tmp_path / "local", CONFIG)

    assert stored(tmp_path / "ray") == stored(tmp_path / "local")
    assert not (tmp_path / "ray.ray-build").exists()
    queries = encoder.encode_queries([f"what about {topic}?" for topic in TOPICS])
    results = {}
    for name in ("ray", "local"):
        index = Index(tmp_path / name)
        ranking = index.search(queries, k=10, exact=True)
        documents = index.documents(np.unique(ranking.keys))
        # Batches of other shapes embed to within float rounding: order by score to 5 decimals, then id.
        results[name] = [sorted((round(-score, 5), documents[key].id) for score, key in zip(scores, keys))
                         for scores, keys in zip(ranking.scores.tolist(), ranking.keys.tolist())]
    assert results["ray"] == results["local"]
    report = verify_index(tmp_path / "ray", tokenizer=encoder.tokenizer)
    assert report["recall_at_k"] >= 0.99
    assert report["lexical"].startswith("ok (checksums, pieces of the stored texts")  # each part has its lexical part


def test_a_killed_encoder_actor_loses_and_duplicates_nothing(cluster, tiny_bundle, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    die = tmp_path / "die-once"
    die.touch()
    manifest = ray_build.build_index_on_ray(str(corpus), tiny_bundle, tmp_path / "index", CONFIG,
                                            make_encoder=CountingEncoder(tiny_bundle, tmp_path / "log", die))
    assert not die.exists()  # an actor died
    ids = [row[0] for row in stored(tmp_path / "index")]
    assert manifest.count == len(ids) == len(set(ids)) == 2000


def test_a_rerun_rebuilds_only_the_missing_part(cluster, tiny_bundle, tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    staging = tmp_path / "index.ray-build"

    def crash(*args):
        raise KeyboardInterrupt("preempted before the commit")

    with monkeypatch.context() as patched:
        patched.setattr(ray_build, "commit_parts", crash)
        with pytest.raises(KeyboardInterrupt):
            ray_build.build_index_on_ray(str(corpus), tiny_bundle, tmp_path / "index", CONFIG)
    plan = json.loads((staging / "plan.json").read_text())
    assert len(plan["part_documents"]) == 4 and sum(plan["part_documents"]) == 2000
    parts = sorted(p.name for p in staging.iterdir() if p.is_dir())
    assert parts == [ray_build.part_name(n) for n in range(4)]
    graphs = {n: (staging / parts[n] / "graph.hnsw").stat().st_ino for n in range(4)}
    shutil.rmtree(staging / parts[2])

    log = tmp_path / "log"
    manifest = ray_build.build_index_on_ray(str(corpus), tiny_bundle, tmp_path / "index", CONFIG,
                                            make_encoder=CountingEncoder(tiny_bundle, log))
    assert embedded(log) == plan["part_documents"][2]
    kept = {(tmp_path / "index" / entry.name / "graph.hnsw").stat().st_ino for entry in manifest.segments}
    assert kept & set(graphs.values()) == {graphs[0], graphs[1], graphs[3]}  # renamed into the index, not rewritten
    assert manifest.count == 2000 and not staging.exists()


def test_a_changed_corpus_or_bundle_is_refused_on_resume(cluster, tiny_bundle, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", count=50)
    staging = tmp_path / "index.ray-build"
    with connect():
        ray_build.read_or_make_plan(staging, CorpusSource(str(corpus)), "bundle-a", CONFIG, False)
        with pytest.raises(SearchIndexError, match="an unfinished build with another bundle; .* remove"):
            ray_build.read_or_make_plan(staging, CorpusSource(str(corpus)), "bundle-b", CONFIG, False)
        write_corpus(corpus, count=51)
        with pytest.raises(SearchIndexError, match="an unfinished build with another corpus"):
            ray_build.read_or_make_plan(staging, CorpusSource(str(corpus)), "bundle-a", CONFIG, False)


def test_corpus_files_of_every_format_read_as_the_local_reader_reads_them(cluster, tmp_path):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = write_corpus(tmp_path / "a.jsonl", count=30)
    with gzip.open(tmp_path / "b.tsv.gz", "wt", encoding="utf-8") as handle:
        handle.write("t1\tfirst passage\nt2\tsecond passage\n")
    pq.write_table(pa.table({"_id": ["p1", "p2"], "text": ["un", "deux"], "lang": ["fr", "fr"], "year": [1, 2]}),
                   tmp_path / "c.parquet")
    rows = ray.data.read_datasource(CorpusSource(str(tmp_path))).take_all()
    documents = {row["id"]: batch_documents({key: [value] for key, value in row.items()}, [0])[0] for row in rows}
    expected = [*read_corpus(jsonl), *read_corpus(tmp_path / "b.tsv.gz")]
    assert len(documents) == 34 and all(documents[doc.id] == doc for doc in expected)
    assert documents["p2"] == Document("p2", "deux", lang="fr", meta={"year": 2})
    pq.write_table(pa.table({"id": ["q1", "q2"], "text": ["fine", "  "]}), tmp_path / "c.parquet")
    with connect(), pytest.raises(DataError, match=r"c\.parquet: row 2: empty text"):
        ray.data.read_datasource(CorpusSource(str(tmp_path / "c.parquet"))).take_all()


def test_duplicate_ids_and_bad_lines_are_reported_as_in_a_local_build(cluster, tiny_bundle, tmp_path):
    duplicated = write_corpus(tmp_path / "dup.jsonl", count=100, extra=['{"id": "d7", "text": "again"}'])
    with pytest.raises(DataError, match=r"^duplicate document id 'd7'"):
        ray_build.build_index_on_ray(str(duplicated), tiny_bundle, tmp_path / "dup", CONFIG)
    bad = write_corpus(tmp_path / "bad.jsonl", count=3, extra=['{"id": "x", "text": '])
    with pytest.raises(DataError, match=r"bad\.jsonl:4: not valid JSON .*--skip-invalid$"):
        ray_build.build_index_on_ray(str(bad), tiny_bundle, tmp_path / "bad", CONFIG)
    assert not (tmp_path / "bad").exists()


def test_search_through_ray_actors_equals_local_search(cluster, tiny_bundle, tmp_path):
    encoder = Encoder(tiny_bundle)
    corpus = write_corpus(tmp_path / "corpus.jsonl", count=1500)
    build_index(read_corpus(corpus), encoder, tmp_path / "index", IndexConfig(segment_size=400))
    queries = [f"{topic}?" for topic in TOPICS]
    local = Searcher(encoder, Index(tmp_path / "index"))
    with connect():
        held = RayIndex(tmp_path / "index", groups=2)
        assert len(held.groups) == 2
        on_ray = Searcher(encoder, held)
        for k, langs in ((10, None), (25, ["sw"]), (2000, None)):
            for mode in ("auto", "dense", "lexical", "hybrid"):
                assert on_ray.search(queries, k, None, langs, mode) == local.search(queries, k, None, langs, mode)
        vectors = encoder.encode_queries(queries)
        exact = [index.search(vectors, 10, exact=True) for index in (held, local.index)]
        np.testing.assert_array_equal(exact[0].keys, exact[1].keys)
        held.close()
    result = CliRunner().invoke(search_main, ["query", "bees?", "--index", str(tmp_path / "index"), "--json",
                                              "--ray", "--actors", "3"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output.splitlines()[-1])["hits"]
    assert [hit["id"] for hit in hits] == [hit.id for hit in local.search(["bees?"])[0]]
