"""The study driver's own parts: one-pass evaluation of full set and sample, and the paired bootstrap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hbt.bench.hybrid_study import main as study_cli
from hbt.bench.hybrid_study import memoized, paired_bootstrap
from tests.test_eval import write_lareqa


def test_evaluate_scores_full_set_and_sample_from_one_pass(tiny_bundle, tmp_path):
    for lang in ("aa", "bb"):
        write_lareqa(tmp_path / "data" / "mlqa-r", lang, [([f"{lang} s{i}a", f"{lang} s{i}b"], [(f"id{i}", f"{lang} q{i}?", i % 2)])
                                                          for i in range(40)])
    out = tmp_path / "eval"
    result = CliRunner().invoke(study_cli, ["evaluate", "--bundle", str(tiny_bundle), "--dataset", "mlqa-r",
                                            "--data-dir", str(tmp_path / "data"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    full = json.loads((out / "mlqa-r" / "results.json").read_text())
    sample = json.loads((out / "mlqa-r-sample" / "results.json").read_text())
    assert full["sample"] == 1.0 and sample["sample"] == 0.4
    assert sample["settings"]["multi"]["mean"]["queries"] < full["settings"]["multi"]["mean"]["queries"] == 80
    with np.load(out / "mlqa-r.questions.npz") as questions:
        assert len(questions["multi/aa|ap"]) == 40 and len(questions["cross/aa-bb|ids"]) == 40
        # The saved per-question APs average to the report's mAP.
        assert np.mean(questions["mono/aa|ap"]) == pytest.approx(full["settings"]["mono"]["per_language"]["aa"]["map"])


def test_memoized_encodes_each_text_once():
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.array([[len(t)] for t in texts], dtype=np.float32)

    lookup = memoized(encode)
    assert lookup(["a", "bb", "a"]).ravel().tolist() == [1, 2, 1]
    assert lookup(["bb", "ccc"]).ravel().tolist() == [2, 3]
    assert calls == [["a", "bb"], ["ccc"]]


def test_paired_bootstrap_finds_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    ids = np.array([f"q{i:03d}" for i in range(300)])
    base = rng.random(300)
    a = {"mono/en": (ids, base + 0.05), "mono/de": (ids, base + 0.05)}
    b = {"mono/en": (ids, base), "mono/de": (ids, base)}
    difference, low, high, p = paired_bootstrap(a, b, "mono", np.random.default_rng(1))
    assert difference == pytest.approx(0.05) and low == pytest.approx(0.05) and p < 0.001
    noise = {g: (ids, base + rng.normal(0, 0.1, 300)) for g in a}
    difference, low, high, p = paired_bootstrap(noise, b, "mono", np.random.default_rng(1))
    assert low < 0 < high and p > 0.05
