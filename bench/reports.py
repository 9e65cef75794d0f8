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

METRICS = ("map", "recall@1", "recall@10", "recall@100", "ndcg@10", "language_bias")


def environment(bundle_manifest, data_files: list[Path], int8_check=None) -> dict:
    """Where a report's figures come from: the machine, the versions, the bundle (and its int8 check here), the data."""
    import onnxruntime

    from hbt.int8_check import int8_features
    from hbt.machine import cpu_model, usable_cores

    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu": cpu_model(), "int8_features": int8_features(),
        "cores": os.cpu_count(), "usable_cores": usable_cores(), "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "int8_check": int8_check and int8_check.to_json(),
        "numpy": np.__version__, "bundle": {"source": bundle_manifest.source, "quantization": bundle_manifest.quantization,
                                            "fingerprint": bundle_manifest.fingerprint},
        "data": {f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:16] for f in data_files},
    }


def _metrics(results: dict) -> list[str]:
    """The metric columns the report's settings have, in METRICS order first."""
    present = {m for values in results["settings"].values() for m in values["mean"] if m not in ("groups", "queries")}
    return [m for m in METRICS if m in present] + sorted(present - set(METRICS))


def _row(name: str, numbers: dict, metrics: list[str]) -> str:
    return f"| {name} | " + " | ".join(f"{numbers[m]:.3f}" if m != "language_bias" else f"{numbers[m]:.1f}"
                                        for m in metrics) + " |"


def markdown(results: dict, title: str) -> str:
    metrics = _metrics(results)
    header = "| | " + " | ".join(metrics) + " |\n|---|" + "---|" * len(metrics)
    settings = results["settings"]
    lines = [f"# {title}", "", *_measured_on(results.get("environment", {})), "## Summary", "", header]
    lines += [_row(setting, values["mean"], metrics) for setting, values in settings.items()]
    for setting, values in settings.items():
        for key, label in (("per_language", "per query language"), ("pairs", "per language pair")):
            if key in values and (setting != "cross" or len(values[key]) <= 12):  # the heatmap shows cross
                lines += ["", f"## {setting}: {label}", "", header]
                lines += [_row(name, numbers, metrics) for name, numbers in values[key].items()]
    lines += ["", "Recall@k is the share of a question's relevant candidates in the top k; language bias is the",
              "mean distance between the best and worst rank of a question's answers (multilingual pool; lower is better).",
              "", "Plots: `heatmap.png` (query × candidate language mAP), `languages.png` (per-language scores)."]
    return "\n".join(lines) + "\n"


def _measured_on(environment: dict) -> list[str]:
    """The report's first lines: the CPU, and an int8 bundle's check on it."""
    if "cpu" not in environment:
        return []
    lines = [f"Measured on {environment['cpu']} ({' '.join(environment.get('int8_features', [])) or 'no int8 features'})."]
    check = environment.get("int8_check")
    if check:
        lines.append(f"Int8 check on this CPU: {'passed' if check['passed'] else 'FAILED'}, gate-set mAP loss "
                     f"{check['map_loss']:.4f}, top-10 overlap {check['top10_overlap']:.3f}"
                     f"{' (same arithmetic as at export)' if check['same_arithmetic'] else ' (re-measured here)'}.")
    return lines + [""]


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
    per_setting = {s: v["per_language"] for s, v in settings.items() if "per_language" in v}
    if per_setting:
        langs = sorted(next(iter(per_setting.values())))
        metric = _metrics(results)[0]
        fig, ax = plt.subplots(figsize=(1.5 + 0.5 * len(langs), 3.5))
        width = 0.8 / len(per_setting)
        for k, (setting, per) in enumerate(per_setting.items()):
            ax.bar(np.arange(len(langs)) + k * width, [per[l][metric] for l in langs], width, label=setting)
        ax.set_xticks(np.arange(len(langs)) + width * (len(per_setting) - 1) / 2, langs)
        ax.set_ylabel(metric)
        ax.set_ylim(0, 1)
        ax.legend()
        ax.set_title(f"{metric} per query language")
        fig.tight_layout()
        fig.savefig(out / "languages.png", dpi=120)
        plt.close(fig)


def write_report(results: dict, out: Path, text: str, plots: Callable[[dict, Path], None] = plot) -> None:
    """A report directory: results.json (every number), report.md (``text``) and the plots' PNGs."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    (out / "report.md").write_text(text)
    plots(results, out)


def _accuracy_results(path: Path) -> dict:
    """An hbt-bench accuracy results.json, or a one-line error saying what is wrong with it."""
    from hbt.errors import DataError

    try:
        results = json.loads(path.read_text())
        if not all(isinstance(v["mean"], dict) for v in results["settings"].values()):
            raise TypeError("a setting holds no mean metrics")
        return results
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: not an hbt-bench accuracy result ({type(e).__name__}: {e}); "
                        "rerun hbt-bench accuracy --out for that folder") from e


def compare(reports: list[Path]) -> str:
    """Side-by-side mean metrics of several reports, with differences from the first."""
    from hbt.errors import DataError

    missing = [str(p) for p in reports if not (Path(p) / "results.json").is_file()]
    if missing:
        raise DataError(f"not a report directory (no results.json): {', '.join(missing)}; give hbt-bench accuracy --out folders")
    loaded = [(path, _accuracy_results(Path(path) / "results.json")) for path in reports]
    metrics = _metrics(loaded[0][1])
    lines = ["| report | setting | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    base = loaded[0][1]["settings"]
    for position, (path, results) in enumerate(loaded):
        for setting, values in results["settings"].items():
            cells = []
            for m in metrics:
                value = values["mean"].get(m)
                reference = base.get(setting, {}).get("mean", {}).get(m)
                delta = f" ({value - reference:+.3f})" if position and value is not None and reference is not None else ""
                cells.append("—" if value is None else f"{value:.3f}{delta}")
            lines.append(f"| {Path(path).name} | {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
