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


def test_jobs_sharing_a_run_directory_train_it_the_same_way():
    from dataclasses import asdict

    from hbt.bench.hybrid_study import queue

    training = {}
    for job in queue([0, 1, 2]):
        recipe = {k: v for k, v in asdict(job).items()
                  if k not in ("interpolate", "trained_too", "precisions", "datasets")}
        assert training.setdefault(job.directory, recipe) == recipe, job.directory
    assert {"zero-shot", "hybrid-negatives-s2", "mono-negatives-s1", "cross-negatives-s0"} <= set(training)


def test_comparisons_pair_each_seed_and_the_untrained_base_with_every_seed(tmp_path):
    from hbt.bench.hybrid_study import collect, comparisons

    ids = np.array([f"q{i}" for i in range(50)])

    def evaluation(run, model, ap):
        folder = tmp_path / run / "eval" / f"{model}-fp32"
        (folder / "mlqa-r").mkdir(parents=True)
        mean = {"map": float(ap), "recall@1": 0.0, "recall@10": 0.0, "language_bias": 0.0}
        (folder / "mlqa-r" / "results.json").write_text(json.dumps({"settings": {s: {"mean": mean} for s in ("mono", "cross", "multi")}}))
        groups = {f"{s}/en": None for s in ("mono", "cross", "multi")}
        np.savez(folder / "mlqa-r.questions.npz", **{f"{g}|ids": ids for g in groups}, **{f"{g}|ap": np.full(50, ap) for g in groups})

    evaluation("zero-shot", "base", 0.5)
    evaluation("tuned-s0", "best", 0.6)
    evaluation("tuned-s1", "best", 0.7)
    evaluation("other-s1", "best", 0.9)
    results = collect(tmp_path)
    lines = comparisons(results, [(("tuned", "fp32"), ("zero-shot", "fp32")), (("other", "fp32"), ("tuned", "fp32"))], "mlqa-r")
    against_base = [line for line in lines if line.startswith("| tuned (fp32) − zero-shot (fp32) | mono")]
    assert against_base and "| +0.150 |" in against_base[0] and against_base[0].endswith("| +0.100, +0.200 |")
    against_seed = [line for line in lines if line.startswith("| other (fp32) − tuned (fp32) | multi")]
    assert against_seed and "| +0.200 |" in against_seed[0] and against_seed[0].endswith("| +0.200 |")  # seed 1 only
