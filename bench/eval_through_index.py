"""LAReQA through hbt's index against exact ranking, on the same vectors: how far the deployed search moves mAP.

    python -m hbt.bench.eval_through_index --bundle B --out bench/reports/eval-through-index \
        [--depth 100 --depth 1000] [--reference OLD_REPORT_DIR]

Embeds MLQA-R's test half once (memoized, as the hybrid study embeds it), then evaluates
every setting with the exact ranker and with the index ranker at the default ef, once
per ``--depth``: as planned on this machine, and with the graphs forced (``GRAPHS``
costs). The difference has two parts, reported apart: the index returns a top ``depth``
(a relevant candidate beyond it counts as not retrieved, where exact ranks every
candidate), and HNSW may miss or misorder within it. The plans each run took are
counted. ``--reference`` compares the exact figures with an earlier report's (e.g. the
study's), every number at full precision.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import numpy as np

SETTINGS = ("mono", "cross", "multi", "x-en")


def truncated(per_question: dict, depth: int) -> dict[str, list[np.ndarray]]:
    """Each group's exact ranks with those beyond ``depth`` made inf: the top-``depth`` cut alone."""
    return {group: [np.where(r <= depth, r, np.inf) for r in ranks] for group, (_, ranks) in per_question.items()}


def setting_maps(ranks: dict[str, list[np.ndarray]]) -> dict[str, float]:
    """mAP per setting as hbt-bench reports it: macro over groups, except multi (over all its questions)."""
    from hbt.metrics import average_precision

    out = {}
    for setting in SETTINGS:
        groups = {g: r for g, r in ranks.items() if g.startswith(f"{setting}/")}
        if setting == "multi":
            out[setting] = float(np.mean([average_precision(r) for found in groups.values() for r in found]))
        elif groups:
            out[setting] = float(np.mean([np.mean([average_precision(r) for r in found]) for found in groups.values()]))
    return out


@click.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(os.environ.get("HBT_DATA", "../shared/data")))
@click.option("--split", type=click.Choice(["dev", "test"]), default="test", show_default=True)
@click.option("--depth", "depths", type=click.IntRange(1), multiple=True, default=[100, 1000], show_default=True,
              help="The index ranker's depth (repeatable).")
@click.option("--reference", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="An earlier exact report of the same bundle and split (results.json inside).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
def main(bundle, data_dir, split, depths, reference, out):
    from hbt import lareqa
    from hbt.bench.hybrid_study import memoized
    from hbt.encoder import Encoder
    from hbt.machine import cpu_model
    from hbt.retrieval import GRAPHS, Ranker

    encoder = Encoder(bundle)
    encode_queries, encode_passages = memoized(encoder.encode_queries), memoized(encoder.encode_passages)
    data = lareqa.load_dataset(data_dir, "mlqa-r", split=split)
    rankers = {ranker.describe(): ranker for ranker in [Ranker("exact"), *(Ranker("index", depth=d, costs=costs)
                                                                          for d in depths for costs in (None, GRAPHS))]}
    runs, per_question = {}, {}
    for name, ranker in rankers.items():
        per_question[name] = {}
        runs[name] = lareqa.evaluate(data, encode_queries, encode_passages, SETTINGS, ranker=ranker,
                                     per_question=per_question[name])
        click.echo(f"{name}: " + "  ".join(f"{s} {v['mean']['map']:.4f}" for s, v in runs[name].items())
                   + f"  plans {dict(ranker.plans)}")
    maps = {name: {s: runs[name][s]["mean"]["map"] for s in SETTINGS} for name in runs}
    cut = {f"exact, top {d} only": setting_maps(truncated(per_question["exact"], d)) for d in depths}
    results = {"cpu": cpu_model(), "bundle": str(bundle), "fingerprint": encoder.manifest.fingerprint,
               "split": split, "map": maps | cut, "plans": {name: dict(r.plans) for name, r in rankers.items()},
               "settings": runs}
    lines = [f"# MLQA-R {split} through hbt's index against exact ranking", "",
             f"Bundle `{encoder.manifest.source}` ({encoder.manifest.quantization}), measured on {cpu_model()}. "
             "Both rankers score the same vectors; mAP, and the index's difference from exact.", "",
             "| ranker | " + " | ".join(SETTINGS) + " | plans (segment searches) |", "|---|" + "---|" * (len(SETTINGS) + 1)]
    exact = maps["exact"]
    for name, values in (maps | cut).items():
        cells = [f"{values[s]:.4f}" + ("" if name == "exact" else f" ({values[s] - exact[s]:+.4f})") for s in SETTINGS]
        plans = ", ".join(f"{kind} {count}" for kind, count in sorted(rankers[name].plans.items())) if name in rankers else ""
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {plans} |")
    lines += ["", "\"exact, top N only\" is the exact ranking cut at N: the part of the difference that the cut "
              "alone makes; the rest is HNSW's."]
    if reference:
        earlier = json.loads((reference / "results.json").read_text())["settings"]
        differences = [abs(runs["exact"][s]["mean"][m] - earlier[s]["mean"][m])
                       for s in earlier if s in runs["exact"] for m in earlier[s]["mean"]]
        results["reference"] = {"path": str(reference), "largest_difference": max(differences),
                                "numbers": len(differences)}
        lines += ["", f"Exact against `{reference}`: {len(differences)} mean figures compared, largest difference "
                      f"{max(differences):.3g}."]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    click.echo(f"report: {out}/report.md")


if __name__ == "__main__":
    main()
