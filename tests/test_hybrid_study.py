"""The study driver's own parts: one-pass evaluation, the queue, and the report's comparisons and pinned checkpoints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hbt import lareqa
from hbt.bench.hybrid_study import main as study_cli
from hbt.bench.hybrid_study import JobFailed, execute, memoized
from tests.test_split import write_articles
from tests.test_tatoeba import write_pair


def test_evaluate_scores_both_halves_and_tatoeba(tiny_bundle, tmp_path):
    data = tmp_path / "data"
    for lang in ("en", "de"):  # two dev and three test articles of each language's, from the frozen split
        titles = [*sorted(lareqa.split_titles("mlqa-r", "dev")[lang])[:2], *sorted(lareqa.split_titles("mlqa-r", "test")[lang])[:3]]
        write_articles(data / "mlqa-r", lang, {title: [f"id{n}a", f"id{n}b"] for n, title in enumerate(titles)})
    write_articles(data / "mlqa-r", "zh", {"不在拆分中": ["id9a"]})  # an article in no half: no candidates in either
    write_pair(data / "tatoeba", "kab", ["azul", "tanemmirt"], ["hello", "thanks"])
    out = tmp_path / "eval"
    result = CliRunner().invoke(study_cli, ["evaluate", "--bundle", str(tiny_bundle), "--evaluation", "mlqa-r-test",
                                            "--evaluation", "mlqa-r-dev", "--evaluation", "tatoeba",
                                            "--data-dir", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    halves = {h: json.loads((out / f"mlqa-r-{h}" / "results.json").read_text()) for h in ("dev", "test")}
    assert halves["test"]["split"] == "test" and halves["test"]["settings"]["multi"]["mean"]["queries"] == 12
    assert halves["dev"]["settings"]["multi"]["mean"]["queries"] == 8
    with np.load(out / "mlqa-r-test.questions.npz") as questions:
        assert len(questions["multi/en|ap"]) == 6 and len(questions["cross/en-de|ids"]) == 6
        # The saved per-question APs average to the report's mAP.
        assert np.mean(questions["mono/en|ap"]) == pytest.approx(halves["test"]["settings"]["mono"]["per_language"]["en"]["map"])
    with np.load(out / "tatoeba.questions.npz") as questions:
        assert questions["xx-en/kab|ids"].tolist() == ["kab:0", "kab:1"]
    assert "laser" in json.loads((out / "tatoeba" / "results.json").read_text())["settings"]


def test_memoized_encodes_each_text_once():
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.array([[len(t)] for t in texts], dtype=np.float32)

    lookup = memoized(encode)
    assert lookup(["a", "bb", "a"]).ravel().tolist() == [1, 2, 1]
    assert lookup(["bb", "ccc"]).ravel().tolist() == [2, 3]
    assert calls == [["a", "bb"], ["ccc"]]


def test_every_arm_trains_at_its_recipe_budget_on_three_seeds_and_knobs_are_scored_on_dev_alone():
    from dataclasses import asdict

    from hbt.bench.hybrid_study import ARMS, KNOBS, RECIPE, RECIPE_2, SECOND, Job, queue, training_command

    jobs, training = queue([0, 1, 2]), {}
    for job in jobs:
        config = asdict(job)
        # The checkpoint rule and WiSE-FT choose among a run's weights: they share the recipe's training.
        trained = {k: v for k, v in config.items() if k not in ("precisions", "evaluations", "checkpoint", "interpolate")}
        assert training.setdefault(job.directory, trained) == trained, job.directory
        if job in KNOBS:  # one knob moved from the hybrid recipe, never seen by the test half or Tatoeba
            assert len({k for k in RECIPE if config[k] != RECIPE[k]}) == 1 and job.seed == 0, job
            assert job.evaluations == ("mlqa-r-dev",), job
        elif job.batching:
            recipe = RECIPE_2 if job.row.endswith(SECOND) else RECIPE
            assert {k: config[k] for k in recipe if k != "alpha"} == {k: v for k, v in recipe.items() if k != "alpha"}
            assert job.label == job.row  # each recipe's own checkpoint rule goes unnamed
            command = training_command(job, job_file := Path("train.jsonl.gz"), 16, Path("out"))
            assert command[command.index("--data") + 1] == str(job_file) and "--eval-every" in command
    arms = {f"{row}{recipe}-s{seed}" for row in ("hybrid", "x-x-mono", "x-y") for seed in (0, 1, 2) for recipe in ("", SECOND)}
    assert arms | {knob.directory for knob in KNOBS} | {"zero-shot"} == set(training)
    assert len({knob.label for knob in KNOBS}) == len(KNOBS)
    blend = next(knob for knob in KNOBS if knob.interpolate < 1)
    command = training_command(blend, Path("train.jsonl.gz"), 16, Path("out"))
    assert command[command.index("--interpolate") + 1] == str(blend.interpolate) and blend.directory == "hybrid-s0"
    order = [(job.directory, job.evaluations) for job in jobs]
    assert order.index(("x-y-s0", ("mlqa-r-test",))) < order.index(("hybrid-s1", ("mlqa-r-test",)))
    assert order.index(("x-y-s2", ("mlqa-r-test",))) < order.index(("hybrid-s0", ("tatoeba",)))
    recipe_on_dev = Job("hybrid", 0, **ARMS["hybrid"], evaluations=("mlqa-r-dev",))
    assert jobs.index(recipe_on_dev) < min(jobs.index(knob) for knob in KNOBS)
    # Recipe 2 is the knobs that won alone, together. Its comparisons come first: zero-shot, every arm's seed 0 on
    # the test half, the recipe as it ships (int8), seed 0 on Tatoeba, then the other seeds likewise.
    assert {k for k in RECIPE if RECIPE_2[k] != RECIPE[k]} == {"steps", "translation_weight", "checkpoint"}
    recipe = [(job.directory.removesuffix("-s0"), job.evaluations, job.precisions) for job in jobs[:9]]
    test, tatoeba, fp32 = ("mlqa-r-test",), ("tatoeba",), ("fp32",)
    assert recipe == [("zero-shot", (*test, *tatoeba), fp32), ("zero-shot", test, ("int8",)),
                      *[(row + SECOND, test, fp32) for row in ARMS], (f"hybrid{SECOND}", test, ("int8",)),
                      *[(row + SECOND, tatoeba, fp32) for row in ARMS]]
    others = {(job.directory, job.evaluations) for job in jobs[9:21]}
    assert others == {(f"{row}{SECOND}-s{seed}", e) for row in ARMS for seed in (1, 2) for e in (test, tatoeba)}


def fake_run(work, run, model, evaluation, groups, seed_shift, step):
    """An evaluation folder as ``evaluate`` leaves it, and the checkpoint's hbt_train.json."""
    folder = work / run / "eval" / f"{model}-fp32"
    (folder / evaluation).mkdir(parents=True)
    settings = {s: {"mean": {"map": 0.0}} for s in ("mono", "cross", "multi")}
    (folder / evaluation / "results.json").write_text(json.dumps({"settings": settings}))
    arrays = {}
    for group, (ids, ap, bias) in groups.items():
        arrays |= {f"{group}|ids": ids, f"{group}|ap": ap + seed_shift, f"{group}|bias": bias}
    np.savez(folder / f"{evaluation}.questions.npz", **arrays)
    if model != "base":
        (work / run / model).mkdir(parents=True)
        (work / run / model / "hbt_train.json").write_text(json.dumps({"step": step}))


def toy_groups(rng, level):
    ids = np.array([f"q{i:03d}" for i in range(120)])
    return {g: (ids, np.clip(level + rng.normal(0, 0.1, 120), 0, 1), np.full(120, 100 * (1 - level)))
            for g in ("mono/en", "mono/de", "cross/en-de", "cross/de-en", "multi/en", "multi/de")}


def test_report_pins_checkpoints_corrects_the_primary_tests_and_keeps_p_independent_of_order(tmp_path):
    rng = np.random.default_rng(0)
    work = tmp_path / "runs"
    fake_run(work, "zero-shot", "base", "mlqa-r-test", toy_groups(rng, 0.5), 0, 0)
    levels = {"hybrid": 0.6, "x-x-mono": 0.55, "x-y": 0.59}
    for row, level in levels.items():
        groups = toy_groups(rng, level)
        for seed in (0, 1):
            fake_run(work, f"{row}-s{seed}", "best", "mlqa-r-test", groups, 0.01 * seed, 200 + 40 * seed)
            fake_run(work, f"{row}-r2-s{seed}", "last", "mlqa-r-test", groups, 0.02 * seed, 480)  # recipe 2
    out = tmp_path / "report"
    result = CliRunner().invoke(study_cli, ["report", "--work", str(work), "--data-dir", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"]["hybrid | fp32 | mlqa-r-test | seed 1"]["checkpoint_step"] == 240
    assert saved["results"]["zero-shot | fp32 | mlqa-r-test | seed 0"]["checkpoint_step"] == 0
    for family, suffix in (("primary", ""), ("primary, recipe 2", "-r2")):  # Holm within each recipe's family
        primary = [c for c in saved["comparisons"] if c["family"] == family]
        assert [(c["b"][0], c["measure"]) for c in primary] == [(b + suffix, m) for b in ("x-x-mono", "x-y")
                                                                for m in ("mono", "cross", "multi", "bias")]
        smallest = min(primary, key=lambda c: c["hierarchical"]["p"])
        assert smallest["holm_p"] == min(1.0, 8 * smallest["hierarchical"]["p"])
    for c in (c for c in saved["comparisons"] if c["family"].startswith("primary")):
        assert c["holm_p"] >= c["hierarchical"]["p"] and c["seeds"] == [2, 2]
        assert c["hierarchical"]["high"] - c["hierarchical"]["low"] >= c["question"]["high"] - c["question"]["low"] - 1e-9
    assert all("holm_p" not in c for c in saved["comparisons"] if c["family"] == "exploratory")
    compared = [(c["a"][0], c["b"][0], c["evaluation"], c["measure"]) for c in saved["comparisons"]]
    assert len(compared) == len(set(compared)) and ("hybrid-r2", "hybrid", "mlqa-r-test", "mono") in compared
    assert {"mono, unseen", "multi (per language)", "bias, seen"} <= {c["measure"] for c in saved["comparisons"]}
    assert set(saved["targets"]) == {"recipe 1", "recipe 2"}
    assert set(saved["targets"]["recipe 2"]) == {"mono >= zero-shot - 0.005", "multi >= 0.50", "bias <= zero-shot / 3"}
    text = (out / "results.md").read_text()
    assert "| hybrid | fp32 | 2 | 200, 240 |" in text and "| hybrid-r2 | fp32 | 2 | 480, 480 |" in text
    # Without X-Y's runs, hybrid − X-X-mono keeps exactly its p-values: each comparison has its own generator.
    for seed in (0, 1):
        for path in sorted((work / f"x-y-s{seed}").rglob("*"), reverse=True) + sorted((work / f"x-y-r2-s{seed}").rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
    CliRunner().invoke(study_cli, ["report", "--work", str(work), "--data-dir", str(tmp_path), "--out", str(out)])
    again = json.loads((out / "results.json").read_text())["comparisons"]
    key = lambda c: (c["a"][0], c["b"][0], c["evaluation"], c["measure"])
    before = {key(c): c["question"]["p"] for c in saved["comparisons"]}
    assert all(before[key(c)] == c["question"]["p"] for c in again) and len(again) < len(saved["comparisons"])


def test_the_record_regenerates_the_report_without_the_checkpoints(tmp_path):
    from hbt.bench.hybrid_study import keep_record

    rng, work, record = np.random.default_rng(1), tmp_path / "runs", tmp_path / "record"
    fake_run(work, "zero-shot", "base", "mlqa-r-test", toy_groups(rng, 0.5), 0, 0)
    for row, level in {"hybrid": 0.6, "x-x-mono": 0.55}.items():
        fake_run(work, f"{row}-r2-s0", "last", "mlqa-r-test", toy_groups(rng, level), 0, 480)
    (work / "hybrid-r2-s0" / "last" / "model.safetensors").write_bytes(b"weights")
    bundle = work / "hybrid-r2-s0" / "eval" / "last-fp32" / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    (bundle / "model.onnx").write_bytes(b"graph")
    (work / "commands.log").write_text(f"hbt-train --out {work}/hybrid-r2-s0\n")
    keep_record(work, record)
    keep_record(work, record)  # again: nothing changes
    assert not (record / "hybrid-r2-s0" / "last" / "model.safetensors").exists()
    assert (record / bundle.relative_to(work) / "manifest.json").exists()
    assert not (record / bundle.relative_to(work) / "model.onnx").exists()
    assert (record / "commands.log").read_text() == "hbt-train --out runs/hybrid-r2-s0\n"
    saved = {}
    for source in (work, record):
        out = tmp_path / f"report-{source.name}"
        result = CliRunner().invoke(study_cli, ["report", "--work", str(source), "--data-dir", str(tmp_path),
                                                "--out", str(out)])
        assert result.exit_code == 0, result.output
        saved[source.name] = (out / "results.json").read_text(), (out / "results.md").read_text()
    assert saved["runs"] == saved["record"] and "hybrid-r2 (fp32) − x-x-mono-r2 (fp32)" in saved["record"][1]


def test_execute_logs_each_command_with_its_exit_wall_and_cpu_time(tmp_path):
    assert execute(["python", "-c", "print(sum(range(10**6)))"], tmp_path) == f"{sum(range(10**6))}\n"
    with pytest.raises(JobFailed, match="failed \\(3\\)"):
        execute(["python", "-c", "raise SystemExit(3)"], tmp_path)
    lines = (tmp_path / "commands.log").read_text().splitlines()
    assert lines[0].startswith("python -c") and lines[2].startswith("python -c")
    assert re.fullmatch(r"#   exit 0 at [\d-]+ [\d:]+: \d+ s wall, \d+ s CPU", lines[1]), lines[1]
    assert lines[3].startswith("#   exit 3 at"), lines[3]


def test_a_knob_changes_the_recipe_only_when_better_on_dev_and_worse_on_nothing(tmp_path):
    from hbt.bench.hybrid_study import KNOBS

    rng = np.random.default_rng(1)
    work = tmp_path / "runs"
    recipe = toy_groups(rng, 0.6)
    fake_run(work, "hybrid-s0", "best", "mlqa-r-dev", recipe, 0, 200)
    fake_run(work, "hybrid-s1", "best", "mlqa-r-dev", recipe, -0.3, 200)  # the knobs ran seed 0: never paired with it
    lifted = {g: (ids, ap + (0.08 if g.startswith("mono") else 0.0), bias) for g, (ids, ap, bias) in recipe.items()}
    mixed = {g: (ids, ap + (0.08 if g.startswith("mono") else -0.08 if g.startswith("cross") else 0.0), bias)
             for g, (ids, ap, bias) in recipe.items()}
    same = {g: (ids, ap + rng.normal(0, 0.01, len(ap)), bias) for g, (ids, ap, bias) in recipe.items()}
    # A knob that trains its own run, and two that choose other weights of the recipe's run.
    picked = (KNOBS[0], next(k for k in KNOBS if k.checkpoint == "last"), next(k for k in KNOBS if k.interpolate < 1))
    for knob, groups in zip(picked, (lifted, mixed, same)):
        fake_run(work, knob.directory, knob.model, "mlqa-r-dev", groups, 0, 160)
    out = tmp_path / "report"
    result = CliRunner().invoke(study_cli, ["report", "--work", str(work), "--data-dir", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "results.json").read_text())
    assert {tuple(c["seeds"]) for c in saved["comparisons"] if c["family"] == "dev"} == {(1, 1)}
    knobs = saved["knobs"]
    lifted_knob, mixed_knob, same_knob = (knob.label for knob in picked)
    assert mixed_knob == "hybrid-last" and same_knob.startswith("hybrid-interpolated-")
    assert knobs[lifted_knob] == {"better": ["mono"], "worse": [], "changes_the_recipe": True}
    assert knobs[mixed_knob]["better"] == ["mono"] and knobs[mixed_knob]["worse"] == ["cross"]
    assert not knobs[mixed_knob]["changes_the_recipe"] and not knobs[same_knob]["changes_the_recipe"]
    assert "would change the recipe" in (out / "results.md").read_text()


def test_tatoeba_per_language_gives_zero_shot_and_each_recipe_averaged_over_its_seeds(tmp_path):
    work = tmp_path / "runs"
    rng = np.random.default_rng(2)
    langs = ("kab", "deu")  # outside CC-100, in it

    def tatoeba_run(run, model, p_at_1):
        ids = {lang: np.array([f"{lang}:{i}" for i in range(5)]) for lang in langs}
        groups = {f"{d}/{lang}": (ids[lang], rng.random(5), np.zeros(5)) for d in ("xx-en", "en-xx") for lang in langs}
        fake_run(work, run, model, "tatoeba", groups, 0, 480)
        per_language = {lang: {"map": p, "p@1": p, "error": 1 - p} for lang, p in p_at_1.items()}
        settings = {d: {"mean": {"map": 0.0}, "per_language": per_language} for d in ("xx-en", "en-xx", "laser")}
        (work / run / "eval" / f"{model}-fp32" / "tatoeba" / "results.json").write_text(json.dumps({"settings": settings}))

    tatoeba_run("zero-shot", "base", {"kab": 0.4, "deu": 0.9})
    tatoeba_run("hybrid-r2-s0", "last", {"kab": 0.3, "deu": 0.8})
    tatoeba_run("hybrid-r2-s1", "last", {"kab": 0.5, "deu": 0.9})
    out = tmp_path / "report"
    result = CliRunner().invoke(study_cli, ["report", "--work", str(work), "--data-dir", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = json.loads((out / "results.json").read_text())["tatoeba_per_language"]
    assert table["kab"]["group"] == "other" and table["deu"]["group"] == "cc100"
    assert table["kab"]["hybrid-r2"]["P@1 into English"] == pytest.approx(0.4)
    assert table["deu"]["hybrid-r2"]["error"] == pytest.approx(0.15) and "hybrid" not in table["deu"]
    assert "| kab | other | 0.400 | 0.400 | 0.600 | 0.400 | 0.400 | 0.600 |" in (out / "results.md").read_text()
