"""Accuracy reports: report.md, results.json (every number and the environment) and PNG plots."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

METRICS = ("map", "recall@1", "recall@10", "ndcg@10", "language_bias")


def environment(bundle_manifest, data_files: list[Path]) -> dict:
    import onnxruntime

    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__, "bundle": {"source": bundle_manifest.source, "quantization": bundle_manifest.quantization,
                                            "fingerprint": bundle_manifest.fingerprint},
        "data": {f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:16] for f in data_files},
    }


def _row(name: str, numbers: dict) -> str:
    return f"| {name} | " + " | ".join(f"{numbers[m]:.3f}" if m != "language_bias" else f"{numbers[m]:.1f}"
                                        for m in METRICS) + " |"


def markdown(results: dict, title: str) -> str:
    header = "| | " + " | ".join(METRICS) + " |\n|---|" + "---|" * len(METRICS)
    lines = [f"# {title}", "", "## Summary", "", header]
    for setting in ("mono", "cross", "multi"):
        if setting in results["settings"]:
            lines.append(_row(setting, results["settings"][setting]["mean"]))
    for setting, key in (("mono", "per_language"), ("multi", "per_language")):
        if setting in results["settings"]:
            lines += ["", f"## {setting}: per query language", "", header]
            lines += [_row(lang, numbers) for lang, numbers in results["settings"][setting][key].items()]
    lines += ["", "Recall@k is the share of a question's relevant candidates in the top k; language bias is the",
              "mean distance between the best and worst rank of a question's answers (multilingual pool; lower is better).",
              "", "Plots: `heatmap.png` (query × candidate language mAP), `languages.png` (per-language mAP)."]
    return "\n".join(lines) + "\n"


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = results["settings"]
    if "cross" in settings:
        langs = sorted({pair.split("-")[0] for pair in settings["cross"]["pairs"]})
        grid = np.full((len(langs), len(langs)), np.nan)
        for i, x in enumerate(langs):
            for j, y in enumerate(langs):
                source = settings["mono"]["per_language"].get(x) if x == y and "mono" in settings else settings["cross"]["pairs"].get(f"{x}-{y}")
                if source:
                    grid[i, j] = source["map"]
        fig, ax = plt.subplots(figsize=(1 + 0.6 * len(langs), 0.8 + 0.6 * len(langs)))
        image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(langs)), langs)
        ax.set_yticks(range(len(langs)), langs)
        ax.set_xlabel("candidate language")
        ax.set_ylabel("query language")
        for i in range(len(langs)):
            for j in range(len(langs)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white" if grid[i, j] < 0.5 else "black")
        fig.colorbar(image, ax=ax, label="mAP")
        ax.set_title("mAP by query × candidate language")
        fig.tight_layout()
        fig.savefig(out / "heatmap.png", dpi=120)
        plt.close(fig)
    per_setting = {s: settings[s]["per_language"] for s in ("mono", "multi") if s in settings}
    if per_setting:
        langs = sorted(next(iter(per_setting.values())))
        fig, ax = plt.subplots(figsize=(1.5 + 0.5 * len(langs), 3.5))
        width = 0.8 / len(per_setting)
        for k, (setting, per) in enumerate(per_setting.items()):
            ax.bar(np.arange(len(langs)) + k * width, [per[l]["map"] for l in langs], width, label=setting)
        ax.set_xticks(np.arange(len(langs)) + width * (len(per_setting) - 1) / 2, langs)
        ax.set_ylabel("mAP")
        ax.set_ylim(0, 1)
        ax.legend()
        ax.set_title("mAP per query language")
        fig.tight_layout()
        fig.savefig(out / "languages.png", dpi=120)
        plt.close(fig)


def write_report(results: dict, out: Path, text: str, plots: Callable[[dict, Path], None] = plot) -> None:
    """A report directory: results.json (every number), report.md (``text``) and the plots' PNGs."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    (out / "report.md").write_text(text)
    plots(results, out)


def compare(reports: list[Path]) -> str:
    """Side-by-side mean metrics of several reports, with differences from the first."""
    loaded = [(path, json.loads((Path(path) / "results.json").read_text())) for path in reports]
    lines = ["| report | setting | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    base = loaded[0][1]["settings"]
    for position, (path, results) in enumerate(loaded):
        for setting, values in results["settings"].items():
            cells = []
            for m in METRICS:
                value = values["mean"][m]
                delta = value - base.get(setting, {}).get("mean", {}).get(m, value)
                cells.append(f"{value:.3f}" + (f" ({delta:+.3f})" if position else ""))
            lines.append(f"| {Path(path).name} | {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
