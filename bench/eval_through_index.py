"""LAReQA through hbt's index against exact ranking, on the same vectors: how far the deployed search moves mAP.

    python -m hbt.bench.eval_through_index --bundle B --out bench/reports/eval-through-index \
        [--reference OLD_REPORT_DIR]

Embeds MLQA-R's test half once (memoized, as the hybrid study embeds it), then evaluates
every setting with the exact ranker and with the index ranker at the default ef. The
difference has two parts, reported apart: the index returns a top 100 (a relevant
candidate beyond it counts as not retrieved, where exact ranks every candidate), and
HNSW may miss or misorder within it. ``--reference`` compares the exact figures with an
earlier report's (e.g. the study's), every number at full precision.
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
@click.option("--reference", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="An earlier exact report of the same bundle and split (results.json inside).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
def main(bundle, data_dir, split, reference, out):
    from hbt import lareqa
    from hbt.bench.hybrid_study import memoized
    from hbt.encoder import Encoder
    from hbt.machine import cpu_model
    from hbt.retrieval import DEPTH, Ranker

    encoder = Encoder(bundle)
    encode_queries, encode_passages = memoized(encoder.encode_queries), memoized(encoder.encode_passages)
    data = lareqa.load_dataset(data_dir, "mlqa-r", split=split)
    runs, per_question = {}, {}
    for ranker in (Ranker("exact"), Ranker("index")):
        per_question[ranker.kind] = {}
        runs[ranker.kind] = lareqa.evaluate(data, encode_queries, encode_passages, SETTINGS, ranker=ranker,
                                            per_question=per_question[ranker.kind])
        click.echo(f"{ranker.describe()}: " + "  ".join(f"{s} {v['mean']['map']:.4f}" for s, v in runs[ranker.kind].items()))
    top = setting_maps(truncated(per_question["exact"], DEPTH))
    maps = {kind: {s: runs[kind][s]["mean"]["map"] for s in SETTINGS} for kind in runs}
    results = {"cpu": cpu_model(), "bundle": str(bundle), "fingerprint": encoder.manifest.fingerprint,
               "split": split, "index": Ranker("index").describe(), "map": maps, "exact_top_100_map": top,
               "settings": runs}
    lines = [f"# MLQA-R {split} through hbt's index against exact ranking", "",
             f"Bundle `{encoder.manifest.source}` ({encoder.manifest.quantization}), measured on {cpu_model()}; "
             f"index ranker: {Ranker('index').describe()}. Both rankers score the same vectors.", "",
             "| setting | exact mAP | index mAP | index − exact | exact, top 100 only | HNSW alone |",
             "|---|---|---|---|---|---|"]
    for s in SETTINGS:
        exact, index = maps["exact"][s], maps["index"][s]
        lines.append(f"| {s} | {exact:.4f} | {index:.4f} | {index - exact:+.4f} | {top[s]:.4f} | {index - top[s]:+.4f} |")
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
