"""fp32 against bf16 training on one seed (issue 25): two runs of the recipe that differ only in precision.

    python -m hbt.bench.train_precision run --work /work/runs-precision \\
        --run bf16=/work/runs/hybrid-s0 --run fp32=/work/runs-precision/hybrid-s0-fp32
    python -m hbt.bench.train_precision report --work /work/runs-precision --out bench/reports/train-precision

``run`` exports each run's ``best`` as the study does (an fp32 and an int8 bundle) and
evaluates both with ``hybrid_study evaluate`` on MLQA-R's dev half (recipes are chosen
there; the test half stays the study's); a stage whose output exists is skipped, and
every command goes to ``WORK/commands.log``. ``report`` pairs the two runs' per-question
scores: a bootstrap over qa ids (bench/stats.py), the evaluation's noise only, since
one seed says nothing of the training's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import numpy as np

from hbt.bench.hybrid_study import BOOTSTRAP_SAMPLES, PRIMARY_MEASURES, execute, lareqa_measures
from hbt.bench.stats import compare, mean_of, rng_for, select

EVALUATION = "mlqa-r-dev"
BUNDLES = ("fp32", "int8")  # hbt-export's --quantize none, and its default int8


def parse_runs(values: tuple[str, ...]) -> dict[str, Path]:
    runs = dict(value.split("=", 1) for value in values)
    if set(runs) != {"fp32", "bf16"}:
        raise click.BadParameter("give --run fp32=DIR and --run bf16=DIR, the two runs' directories")
    return {precision: Path(directory) for precision, directory in runs.items()}


@click.group()
def main():
    """Evaluate an fp32 and a bf16 training run of one recipe and seed, then compare them."""


@main.command()
@click.option("--work", required=True, type=click.Path(file_okay=False, path_type=Path), help="Bundles and evaluations.")
@click.option("--run", "runs", required=True, multiple=True, help="PRECISION=DIR: a finished hbt-train run.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(os.environ.get("HBT_DATA", "../shared/data")))
def run(work, runs, data_dir):
    """Export and evaluate each finished run's best checkpoint; rerun to continue, and once the other run finishes."""
    work.mkdir(parents=True, exist_ok=True)
    unfinished = []
    for trained, run_dir in parse_runs(runs).items():
        last = json.loads((run_dir / "last" / "hbt_train.json").read_text()) if (run_dir / "last").exists() else {}
        if last.get("step") != last.get("config", {}).get("steps", -1):  # its best may still change
            unfinished.append(str(run_dir))
            continue
        for bundle_precision in BUNDLES:
            folder = work / "eval" / f"trained-{trained}" / bundle_precision
            bundle = folder / "bundle"
            if not bundle.exists():
                execute(["hbt-export", str(run_dir / "best"), "--out", str(bundle),
                         "--quantize", "none" if bundle_precision == "fp32" else bundle_precision], work)
            if not (folder / f"{EVALUATION}.questions.npz").exists():
                execute(["python", "-m", "hbt.bench.hybrid_study", "evaluate", "--bundle", str(bundle), "--evaluation",
                         EVALUATION, "--data-dir", str(data_dir), "--out", str(folder)], work)
        (work / "eval" / f"trained-{trained}" / "run.txt").write_text(str(run_dir.resolve()) + "\n")
    if unfinished:
        raise click.ClickException(f"training not finished: {', '.join(unfinished)}; "
                                   "finish it (hbt-train ... --resume), then run this again")


def checkpoint(run_dir: Path) -> dict:
    """The evaluated checkpoint's step and validation loss, and the precision and CPU it trained with."""
    info = json.loads((run_dir / "best" / "hbt_train.json").read_text())
    return {"step": info["step"], "validation_loss": round(info["validation_loss"], 4),
            "precision": info["machine"]["precision"], "cpu": info["machine"]["cpu"]}


@main.command()
@click.option("--work", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
def report(work, out):
    """OUT/report.md and OUT/results.json: each measure for both runs, and fp32 − bf16 with its interval."""
    runs = {t: Path((work / "eval" / f"trained-{t}" / "run.txt").read_text().strip()) for t in ("fp32", "bf16")}
    trained = {t: checkpoint(d) for t, d in runs.items()}
    measures = [m for m in lareqa_measures() if m.name in PRIMARY_MEASURES]
    rows = []
    for bundle_precision in BUNDLES:
        arrays = {t: dict(np.load(work / "eval" / f"trained-{t}" / bundle_precision / f"{EVALUATION}.questions.npz"))
                  for t in runs}
        for measure in measures:
            groups = {t: select([arrays[t]], measure) for t in runs}
            difference, _ = compare(groups["fp32"], groups["bf16"], rng_for(f"{bundle_precision}|{measure.name}"),
                                    BOOTSTRAP_SAMPLES)  # one seed each: the hierarchical interval is the same
            rows.append({"bundle": bundle_precision, "measure": measure.name, "fp32": mean_of(groups["fp32"])[0],
                         "bf16": mean_of(groups["bf16"])[0], "difference": difference.observed,
                         "low": difference.low, "high": difference.high, "p": difference.p})
    lines = ["# fp32 against bf16 training: the recipe, one seed, MLQA-R dev half", "",
             *[f"- trained in {t}: `{runs[t]}` (best at step {c['step']}, validation loss {c['validation_loss']}; "
               f"{c['precision']} on {c['cpu']})" for t, c in trained.items()], "",
             f"mAP (mono, cross: macro over languages and pairs; multi: pooled) and language bias (lower is better). "
             f"Difference fp32 − bf16 with a 95% bootstrap interval over qa ids ({BOOTSTRAP_SAMPLES} resamples, "
             "paired: the same questions); one seed per precision, so it holds the evaluation's noise, not the "
             "training's.", "",
             "| bundle | measure | trained fp32 | trained bf16 | fp32 − bf16 [95% interval] | p |", "|---|---|---|---|---|---|",
             *[f"| {r['bundle']} | {r['measure']} | {r['fp32']:.4f} | {r['bf16']:.4f} | {r['difference']:+.4f} "
               f"[{r['low']:+.4f}, {r['high']:+.4f}] | {r['p']:.3f} |" for r in rows], ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps({"evaluation": EVALUATION, "runs": {t: str(d) for t, d in runs.items()},
                                                  "checkpoints": trained, "rows": rows}, indent=1))
    click.echo(out / "report.md")


if __name__ == "__main__":
    main()
