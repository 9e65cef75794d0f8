"""hbt.mteb: a bundle runs through mteb's own retrieval evaluation on a local task, with no download."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import numpy as np
import pytest

from hbt.encoder import Encoder
from hbt.errors import BundleError, HbtError
from hbt.metrics import ndcg_at, recall_at, relevant_ranks
from tests.conftest import MULTILINGUAL

needs_mteb = pytest.mark.skipif(importlib.util.find_spec("mteb") is None,
                                reason="mteb is not installed: pip install 'hbt[mteb]'")

# Each q<i> is its passages' sentence (d<i>, and d<i>b with an ending added for one in three),
# so a working encoder ranks them first even with the tiny random model; x<i> asks for the
# translation of sentence i, which the random model misses, so scores stay below 1.
QUERIES = {f"q{i}": text for i, text in enumerate(MULTILINGUAL)} | {f"x{i}": MULTILINGUAL[i] for i in range(3)}
CORPUS = {f"d{i}": text for i, text in enumerate(MULTILINGUAL)} | {
    f"d{i}b": f"{text} (1)" for i, text in enumerate(MULTILINGUAL) if i % 3 == 0}
QRELS = {f"q{i}": {doc: 1 for doc in CORPUS if doc in (f"d{i}", f"d{i}b")} for i in range(len(MULTILINGUAL))} | {
    f"x{i}": {f"d{i + 1}": 1} for i in range(3)}

def local_task():
    """A retrieval task held in memory, made the way mteb's own mock tasks are."""
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    class LocalRetrieval(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name="HbtLocalRetrieval", type="Retrieval", main_score="ndcg_at_10", category="t2t",
            description="Multilingual sentences and the queries that start them (hbt's tests).",
            reference="https://github.com/embeddings-benchmark/mteb", dataset={"path": "NA", "revision": "NA"},
            eval_splits=["test"], eval_langs=["eng-Latn"], date=("2026-01-01", "2026-01-01"), dialect=["Written"],
            domains=[], task_subtypes=[], license="cc-by-4.0", annotations_creators="derived", modalities=["text"],
            sample_creation="created", bibtex_citation="",
        )

        def load_data(self, num_proc: int | None = None, **kwargs) -> None:
            split = RetrievalSplitData(
                queries=Dataset.from_list([{"id": q, "text": t} for q, t in QUERIES.items()]),
                corpus=Dataset.from_list([{"id": d, "text": t, "title": ""} for d, t in CORPUS.items()]),
                relevant_docs=QRELS, top_ranked=None)
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

    return LocalRetrieval()


def hbt_scores(encoder: Encoder) -> dict:
    """nDCG@10 and Recall@1 from hbt's own metrics, on the same vectors the adapter gives mteb."""
    doc_ids = list(CORPUS)
    scores = encoder.encode_queries(list(QUERIES.values())) @ encoder.encode_passages(list(CORPUS.values())).T
    ranks = [relevant_ranks(row, np.array([doc_ids.index(d) for d in QRELS[q]])) for q, row in zip(QUERIES, scores)]
    return {"ndcg_at_10": np.mean([ndcg_at(r, 10) for r in ranks]),
            "recall_at_1": np.mean([recall_at(r, 1) for r in ranks])}


def evaluate(model, cache_dir) -> dict:
    import mteb

    result = mteb.evaluate(model, local_task(), cache=mteb.ResultCache(cache_dir), co2_tracker=False,
                           show_progress_bar=False, overwrite_strategy="always")
    return result.task_results[0].scores["test"][0]


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@needs_mteb
def test_mteb_scores_the_bundle_as_hbt_metrics_do(tiny_bundle, tmp_path, offline):
    from hbt.mteb import BundleEncoder

    model = BundleEncoder(tiny_bundle)
    ours = hbt_scores(model.encoder)
    theirs = evaluate(model, tmp_path / "mteb")
    assert theirs["ndcg_at_10"] == pytest.approx(ours["ndcg_at_10"], abs=1e-5)
    assert theirs["recall_at_1"] == pytest.approx(ours["recall_at_1"], abs=1e-5)
    assert ours["ndcg_at_10"] > 0.6  # .91 as measured: the task tells a working encoder (see the shuffled one)
    meta = model.mteb_model_meta
    saved = tmp_path / "mteb" / "results" / meta.name.replace("/", "__") / meta.revision / "HbtLocalRetrieval.json"
    assert saved.is_file()


@needs_mteb
def test_a_shuffled_encoder_scores_low(tiny_bundle, tmp_path, offline):
    """The same evaluation fails an adapter that hands mteb its vectors out of order (.19 against .91, as measured)."""
    from hbt.mteb import BundleEncoder

    class Shuffled(BundleEncoder):
        def encode(self, inputs, **kwargs):
            vectors = super().encode(inputs, **kwargs)
            return vectors[np.random.default_rng(0).permutation(len(vectors))]

    right, shuffled = BundleEncoder(tiny_bundle), Shuffled(tiny_bundle)
    assert evaluate(shuffled, tmp_path / "s")["ndcg_at_10"] < hbt_scores(right.encoder)["ndcg_at_10"] - 0.3


@needs_mteb
def test_queries_and_documents_get_the_bundles_prefixes(tiny_bundle):
    from mteb.types import PromptType
    from torch.utils.data import DataLoader

    from hbt.mteb import BundleEncoder

    model = BundleEncoder(tiny_bundle)
    assert (model.encoder.manifest.query_prefix, model.encoder.manifest.passage_prefix) == ("query: ", "passage: ")
    texts = MULTILINGUAL[:7]

    def encode(prompt_type, **kwargs):
        return model.encode(DataLoader([{"text": t} for t in texts], batch_size=3), task_metadata=local_task().metadata,
                            hf_split="test", hf_subset="default", prompt_type=prompt_type, **kwargs)

    np.testing.assert_array_equal(encode(PromptType.query), model.encoder.encode_queries(texts))
    np.testing.assert_array_equal(encode(PromptType.document), model.encoder.encode_passages(texts))
    np.testing.assert_array_equal(encode(None), model.encoder.encode_queries(texts))  # symmetric tasks: E5's rule
    assert not np.allclose(encode(PromptType.query), encode(PromptType.document))
    with pytest.raises(HbtError, match="precision 'int8': a bundle gives float32 vectors"):
        encode(PromptType.query, precision="int8")


@needs_mteb
def test_the_model_meta_reloads_its_bundle_and_refuses_a_changed_one(tiny_bundle):
    from hbt.mteb import BundleEncoder

    meta = BundleEncoder(tiny_bundle).mteb_model_meta
    assert (meta.embed_dim, meta.similarity_fn_name.value, meta.name) == (32, "cosine", f"hbt/{tiny_bundle.name}")
    assert meta.load_model().encoder.manifest.fingerprint.endswith(meta.revision)
    with pytest.raises(BundleError, match="bundle changed since"):
        meta.model_copy(update={"revision": "0" * 64}).load_model()
    with pytest.raises(HbtError, match="hbt runs bundles on the CPU"):
        meta.load_model(device="cuda")


def test_without_mteb_the_adapter_names_the_extra(monkeypatch):
    for name in [n for n in sys.modules if n == "mteb" or n.startswith("mteb.")] or ["mteb"]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: that import fails
    monkeypatch.delitem(sys.modules, "hbt.mteb", raising=False)
    with pytest.raises(ImportError, match=r"^hbt.mteb needs the mteb extra \(mteb.* pip install 'hbt\[mteb\]'$"):
        importlib.import_module("hbt.mteb")
