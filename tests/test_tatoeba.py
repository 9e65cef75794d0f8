"""Tatoeba bitext retrieval: the reader, the ranks, the metrics and hbt-bench accuracy --dataset tatoeba."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from hbt import tatoeba
from hbt.cli.bench import main as bench_cli
from hbt.errors import DataError
from hbt.metrics import relevant_ranks
from tests.test_export import assert_one_line_error

TOPICS = ["cat", "dog", "sun", "rain"]


def write_pair(folder, lang, lines, english):
    folder.mkdir(parents=True, exist_ok=True)
    for side, content in ((lang, lines), ("eng", english)):
        with gzip.open(folder / f"tatoeba.{lang}-eng.{side}.gz", "wt", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in content))


def topic_encoder(texts):
    """Embeds by the topic word a text holds: translations of one topic coincide."""
    vectors = np.array([[float(t in text) for t in TOPICS] + [0.01] for text in texts])
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def toy_tatoeba(tmp_path):
    folder = tmp_path / "tatoeba"
    write_pair(folder, "afr", [f"afr {t}" for t in TOPICS], [f"en {t}" for t in TOPICS])  # all found
    # kab: line 1 says "cat" too, so line 1 ties with line 0 for "en cat" and loses the tie on its own line.
    write_pair(folder, "kab", ["kab cat", "kab cat", "kab sun", "kab rain"], [f"en {t}" for t in TOPICS])
    return tmp_path


def test_perfect_and_tied_retrieval(toy_tatoeba):
    per_question = {}
    results = tatoeba.evaluate(toy_tatoeba, topic_encoder, per_question=per_question)
    assert results["xx-en"]["per_language"]["afr"] == {"map": 1.0, "p@1": 1.0, "error": 0.0}
    # kab -> en: line 1 ("kab cat") finds "en cat" (line 0) first: rank 2 of its own line "en dog", which it
    # does not resemble; the dog vector is orthogonal, so "en dog" ties with "en sun" and "en rain" at 0.01².
    kab = results["xx-en"]["per_language"]["kab"]
    assert kab["p@1"] == 0.75 and kab["error"] == 0.25
    ranks = [r[0] for r in per_question["xx-en/kab"][1]]
    assert ranks[0] == 1 and ranks[1] == 2 and ranks[2:] == [1, 1]
    assert kab["map"] == pytest.approx((1 + 1 / 2 + 1 + 1) / 4)
    # en -> kab: "en cat" ties between kab lines 0 and 1 and takes line 0 (its own); "en dog" matches no kab line.
    assert results["en-xx"]["per_language"]["kab"]["p@1"] == 0.75
    laser = results["laser"]["per_language"]["kab"]
    assert laser["error"] == pytest.approx(np.mean([kab["error"], results["en-xx"]["per_language"]["kab"]["error"]]))
    assert results["xx-en"]["per_group"] == {"cc100": results["xx-en"]["per_language"]["afr"],
                                             "other": results["xx-en"]["per_language"]["kab"]}
    assert results["xx-en"]["mean"]["groups"] == 2 and per_question["en-xx/afr"][0][0] == "afr:0"


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 12), st.integers(0, 2**32 - 1))
def test_aligned_ranks_agree_with_the_metric_ranks(n, seed):
    rng = np.random.default_rng(seed)
    source = rng.integers(-2, 3, size=(n, 3)).astype(float)  # small integers: many ties
    target = rng.integers(-2, 3, size=(n, 3)).astype(float)
    scores = source @ target.T
    expected = [relevant_ranks(scores[i], np.array([i]))[0] for i in range(n)]
    assert tatoeba.aligned_ranks(source, target).tolist() == expected


def test_groups_follow_cc100():
    assert tatoeba.group("afr") == "cc100" and tatoeba.group("cmn") == "cc100"
    assert tatoeba.group("kab") == "other" and tatoeba.group("tat") == "other"


def test_misaligned_and_missing_pairs_are_data_errors(tmp_path):
    write_pair(tmp_path / "tatoeba", "afr", ["a", "b"], ["a"])
    with pytest.raises(DataError, match="line-aligned"):
        tatoeba.evaluate(tmp_path, topic_encoder)
    with pytest.raises(DataError, match="missing languages xho"):
        tatoeba.evaluate(tmp_path, topic_encoder, ["xho"])
    with pytest.raises(DataError, match="no Tatoeba pairs"):
        tatoeba.evaluate(tmp_path / "elsewhere", topic_encoder)


def test_bench_accuracy_on_tatoeba(tiny_bundle, toy_tatoeba, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(bench_cli, ["accuracy", "--bundle", str(tiny_bundle), "--dataset", "tatoeba",
                                            "--data-dir", str(toy_tatoeba), "--lang", "kab", "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["settings"]["laser"]["per_language"]) == ["kab"]
    assert "| xx-en | other | 1 |" in (out / "report.md").read_text()
    assert_one_line_error(CliRunner().invoke(bench_cli, ["accuracy", "--bundle", str(tiny_bundle), "--dataset", "tatoeba",
                                                         "--data-dir", str(toy_tatoeba), "--split", "test"]),
                          "only mlqa-r has a dev/test split")
