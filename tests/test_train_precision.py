"""bench/train_precision: the fp32-against-bf16 report pairs the two runs' per-question scores."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from hbt.bench.hybrid_study import BOOTSTRAP_SAMPLES
from hbt.bench.train_precision import BUNDLES, EVALUATION, main


def fake_run(root, precision, step, steps=240):
    """A finished (or not) hbt-train run directory: only the files the harness reads."""
    run = root / f"run-{precision}"
    for checkpoint in ("best", "last"):
        (run / checkpoint).mkdir(parents=True)
        info = {"step": step if checkpoint == "last" else 40, "validation_loss": 0.48, "config": {"steps": steps},
                "machine": {"precision": precision, "cpu": "Test CPU"}}
        (run / checkpoint / "hbt_train.json").write_text(json.dumps(info))
    return run


def write_scores(folder, shift, rng):
    """Per-question AP and bias for every setting: bf16's draws, moved by ``shift`` for fp32."""
    arrays = {}
    for group in ("mono/de", "mono/en", "cross/de-en", "cross/en-de", "multi/de", "multi/en"):
        ids = np.array(sorted(f"q{i:03d}" for i in range(60)))
        arrays[f"{group}|ids"] = ids
        arrays[f"{group}|ap"] = (rng.uniform(0.2, 0.8, len(ids)) + shift).astype(np.float32)
        arrays[f"{group}|bias"] = rng.uniform(0, 0.3, len(ids)).astype(np.float32)
    folder.mkdir(parents=True)
    np.savez_compressed(folder / f"{EVALUATION}.questions.npz", **arrays)


def test_report_gives_the_paired_difference_and_its_interval(tmp_path):
    work = tmp_path / "work"
    for precision, shift in (("fp32", 0.05), ("bf16", 0.0)):
        run = fake_run(tmp_path, precision, 240)
        for bundle in BUNDLES:
            write_scores(work / "eval" / f"trained-{precision}" / bundle, shift, np.random.default_rng(7))
        (work / "eval" / f"trained-{precision}" / "run.txt").write_text(str(run))
    result = CliRunner().invoke(main, ["report", "--work", str(work), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    ap = [r for r in rows if r["measure"] in ("mono", "cross", "multi")]
    bias = [r for r in rows if r["measure"] == "bias"]
    assert len(ap) == 3 * len(BUNDLES) and len(bias) == len(BUNDLES)
    # The same questions drawn alike, fp32 moved by 0.05: every paired resample sees exactly that difference.
    for r in ap:
        assert abs(r["difference"] - 0.05) < 1e-6 and abs(r["low"] - 0.05) < 1e-6 and abs(r["high"] - 0.05) < 1e-6
        assert r["p"] == 2 / (BOOTSTRAP_SAMPLES + 1)  # the smallest p the resamples can give
    for r in bias:
        assert r["difference"] == 0.0 and r["p"] == 1.0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "+0.0500 [+0.0500, +0.0500]" in report and "fp32 on Test CPU" in report


def test_run_evaluates_no_unfinished_training(tmp_path):
    runs = [f"fp32={fake_run(tmp_path, 'fp32', 120)}", f"bf16={fake_run(tmp_path, 'bf16', 239)}"]
    result = CliRunner().invoke(main, ["run", "--work", str(tmp_path / "work"), "--run", runs[0], "--run", runs[1]])
    assert result.exit_code == 1 and "training not finished" in result.output
    assert "run-fp32" in result.output and "run-bf16" in result.output
    assert not (tmp_path / "work" / "commands.log").exists()
