"""Hybrid batch training: fine-tune a dual encoder with InfoNCE over in-batch negatives.

Reads top to bottom: config, data and samplers, model and optimizer, then one loop
(batch, loss, step, evaluate, checkpoint). Checkpoints are Hugging Face directories
that carry their training config, so hbt-export takes them directly; ``last/``
also holds the optimizer and sampler state for an exact ``--resume``.
``interpolate`` blends the result with the base model's weights (WiSE-FT).
The machine decides the threads and, under ``precision="auto"``, bf16 or fp32
(hbt.machine); ``grad_cache_chunk`` trains large contrastive batches in the memory
of small ones (GradCache).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from hbt import machine
from hbt.data import Record, load_records, split_by_id
from hbt.errors import DataError
from hbt.modeling import DualEncoder
from hbt.sampler import BatchSampler, Pair
from hbt.sources import interpolated_name, resolve_source

TRAIN_INFO = "hbt_train.json"
STATE_FILE = "trainer_state.pt"


@dataclass(frozen=True)
class TrainConfig:
    base: str
    data: str
    out: str
    batching: str = "hybrid"
    alpha: float = 0.5
    language_weighting: str = "uniform"
    languages: tuple[str, ...] = ()
    passage_unit: str = "paragraph"  # or "sentence": the answer sentence of each passage
    hard_negatives: bool = True  # one per example: the pair file's, or the answer sentence's neighbour
    translation_weight: float = 0.0  # weight of InfoNCE from each positive passage to its translation
    steps: int = 0  # 0: derive from epochs
    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 3e-5
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    max_grad_norm: float = 1.0
    temperature: float = 0.05
    max_query_length: int = 64
    max_passage_length: int = 256
    validation_fraction: float = 0.05
    eval_every: int = 100
    eval_batches: int = 8
    patience: int = 0  # evaluations without improvement before stopping; 0: never stop early
    seed: int = 0
    time_budget: float = 0.0  # seconds; 0: none
    precision: str = "auto"  # auto, fp32 or bf16; train() resolves auto for this machine (hbt.machine)
    force_precision: bool = False  # bf16 even where the CPU emulates it (~30x slower)
    grad_cache_chunk: int = 0  # embed N texts at a time (GradCache): the whole batch's gradient at N's memory; 0: off
    gradient_checkpointing: bool = False
    freeze_embeddings: bool = False
    interpolate: float = 1.0  # weight of the trained model in the saved result; 1: no blending (WiSE-FT)


def info_nce(queries: torch.Tensor, passages: torch.Tensor, temperature: float = 0.05,
             negatives: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE with in-batch negatives: query i's positive is passage i, the rest are negatives.

    queries [B, H] and passages [B, H] are unit vectors, negatives [N, H] optional
    hard negatives shared by the batch; scale = 1 / temperature.
    """
    candidates = passages if negatives is None else torch.cat([passages, negatives])  # [B + N, H]
    logits = queries @ candidates.T / temperature  # [B, B + N]
    return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device))


def gather_with_grad(embeddings: torch.Tensor) -> torch.Tensor:
    """All ranks' embeddings, so every rank's negatives include the others' examples.

    Ranks may hold different numbers of rows (hard negatives), none included: each
    pads to the largest count, since all_gather takes equal shapes and every rank must
    join it (and its backward), or the others wait forever.
    """
    if not distributed():
        return embeddings
    from torch.distributed.nn.functional import all_gather

    count = torch.tensor([len(embeddings)], device=embeddings.device)
    counts = [torch.zeros_like(count) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(counts, count)
    counts = [int(c) for c in counts]
    padding = embeddings.new_zeros((max(counts) - len(embeddings), embeddings.shape[1]))
    gathered = all_gather(torch.cat([embeddings, padding]))  # world x [max(counts), H]
    return torch.cat([rows[:n] for rows, n in zip(gathered, counts)])


@dataclass(frozen=True)
class BatchTexts:
    queries: list[str]  # [B]
    passages: list[str]  # [B]: query i's positive is passage i
    negatives: list[str]  # hard negatives, shared by the batch
    translations: list[str]  # the positive passage in another language, for the examples in ``translated``
    translated: list[int]


def translation_language(pair: Pair) -> str | None:
    """Another language of the pair's passage: the query's when they differ, else a fixed pick (resumable)."""
    others = sorted(set(pair.record.passages) - {pair.passage_lang})
    if pair.query_lang in others:
        return pair.query_lang
    return others[zlib.crc32(pair.record.id.encode()) % len(others)] if others else None


def batch_texts(batch: list[Pair], model: DualEncoder, hard_negatives: bool = True, translations: bool = False) -> BatchTexts:
    prefix = model.source.passage_prefix
    languages = [translation_language(p) if translations else None for p in batch]
    return BatchTexts(
        queries=[model.source.query_prefix + p.record.questions[p.query_lang] for p in batch],
        passages=[prefix + p.record.passages[p.passage_lang] for p in batch],
        negatives=[prefix + n for p in batch for n in p.record.negatives.get(p.passage_lang, [])[:1] if hard_negatives],
        translations=[prefix + p.record.passages[lang] for p, lang in zip(batch, languages) if lang],
        translated=[i for i, lang in enumerate(languages) if lang],
    )


def encoder_inputs(texts: BatchTexts, config: TrainConfig) -> list[tuple[list[str], int]]:
    """The texts to embed, in four groups with their length limits: queries, passages, hard negatives, translations."""
    return [(texts.queries, config.max_query_length), (texts.passages, config.max_passage_length),
            (texts.negatives, config.max_passage_length), (texts.translations, config.max_passage_length)]


def pieces(texts: list[str], chunk: int) -> list[list[str]]:
    """The texts in runs of ``chunk`` (0: one run); none for no texts."""
    size = chunk or max(1, len(texts))
    return [texts[i : i + size] for i in range(0, len(texts), size)]


def autocast(model: DualEncoder, config: TrainConfig) -> torch.autocast:
    return torch.autocast("cuda" if next(model.parameters()).is_cuda else "cpu", dtype=torch.bfloat16,
                          enabled=config.precision == "bf16")


def contrastive_loss(embeddings: list[torch.Tensor], translated: list[int], config: TrainConfig) -> torch.Tensor:
    """InfoNCE of queries against passages (and hard negatives); with ``translation_weight``, plus
    InfoNCE of each positive passage against the batch's translations, which pulls a passage's
    languages together: what the multilingual pool and its language bias measure.

    ``embeddings``: queries [B, H], passages [B, H], negatives [N, H], translations [T, H]
    (float32; N and T may be 0), gathered across ranks here.
    """
    q, p, n, t = embeddings
    n = gather_with_grad(n)
    loss = info_nce(gather_with_grad(q), gather_with_grad(p), config.temperature, n if len(n) else None)
    if config.translation_weight > 0:
        sources, targets = gather_with_grad(p[translated]), gather_with_grad(t)
        if len(targets):
            loss = loss + config.translation_weight * info_nce(sources, targets, config.temperature)
    return loss


def compute_loss(model: DualEncoder, batch: list[Pair], config: TrainConfig) -> torch.Tensor:
    """The batch's contrastive loss, its texts embedded ``grad_cache_chunk`` at a time (0: each group at once)."""
    texts = batch_texts(batch, model, config.hard_negatives, config.translation_weight > 0)
    embeddings = []
    with autocast(model, config):
        for group, max_length in encoder_inputs(texts, config):
            parts = [model(*model.batch(piece, max_length)).float() for piece in pieces(group, config.grad_cache_chunk)]
            # Empty slices of the queries keep this rank in the gathers and their backward when it has no rows.
            embeddings.append(torch.cat(parts) if parts else embeddings[0][:0])
    return contrastive_loss(embeddings, texts.translated, config)


def rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)


def grad_cache_backward(model: DualEncoder, batch: list[Pair], config: TrainConfig) -> torch.Tensor:
    """GradCache (Gao et al., 2021): the whole batch's loss and gradients, holding one chunk's activations at a time.

    1. Embed every chunk of ``grad_cache_chunk`` texts without a graph, noting the RNG
       state before each (dropout).
    2. The loss over all the embeddings, taken as leaves: its gradient for each embedding.
    3. Embed each chunk again with a graph, replaying its RNG state, and backpropagate
       its rows of that gradient. By the chain rule the parameter gradients add up to
       those of one pass over the whole batch.
    Memory: the model's activations for one chunk, plus [texts, H] embeddings.
    """
    texts = batch_texts(batch, model, config.hard_negatives, config.translation_weight > 0)
    device = next(model.parameters()).device
    work = [(g, piece, max_length) for g, (group, max_length) in enumerate(encoder_inputs(texts, config))
            for piece in pieces(group, config.grad_cache_chunk)]
    states, cached = [], [[] for _ in range(4)]
    with torch.no_grad(), autocast(model, config):
        for g, piece, max_length in work:
            states.append(rng_state(device))
            cached[g].append(model(*model.batch(piece, max_length)).float())
    leaves = [(torch.cat(parts) if parts else cached[0][0][:0]).requires_grad_() for parts in cached]
    loss = contrastive_loss(leaves, texts.translated, config)
    loss.backward()
    after, offsets = rng_state(device), [0] * 4
    for (g, piece, max_length), state in zip(work, states):
        set_rng_state(state, device)
        with autocast(model, config):
            embeddings = model(*model.batch(piece, max_length)).float()  # [chunk, H]
        grad = leaves[g].grad if leaves[g].grad is not None else torch.zeros_like(leaves[g])
        embeddings.backward(grad[offsets[g] : offsets[g] + len(piece)])
        offsets[g] += len(piece)
    set_rng_state(after, device)
    return loss.detach()


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def init_distributed() -> None:
    """Join the process group torchrun describes (WORLD_SIZE > 1); a no-op for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not distributed():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend)


def local_slice(batch: list[Pair]) -> list[Pair]:
    """This rank's share of the global batch (every rank draws the same global batch)."""
    if not distributed():
        return batch
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    share = len(batch) // world
    return batch[rank * share : (rank + 1) * share]


def backward(model: DualEncoder, batch: list[Pair], config: TrainConfig) -> torch.Tensor:
    """Loss of the global batch and its gradients, equal to one process's however many ranks share it.

    Every rank computes the same loss over the gathered embeddings; all_gather's
    backward sums each rank's share, so averaging parameter gradients (as DDP does)
    gives exactly the single-process gradient.
    """
    if config.grad_cache_chunk:
        loss = grad_cache_backward(model, local_slice(batch), config)
    else:
        loss = compute_loss(model, local_slice(batch), config)
        loss.backward()
    if distributed():
        world = torch.distributed.get_world_size()
        for parameter in model.parameters():
            if parameter.grad is not None:
                torch.distributed.all_reduce(parameter.grad)
                parameter.grad /= world
    return loss


@torch.no_grad()
def validation_loss(model: DualEncoder, records: list[Record], config: TrainConfig) -> float:
    """Mean loss on fixed validation batches (same seed every time, so evaluations compare)."""
    if len(records) < config.batch_size:
        return float("nan")
    model.eval()
    sampler = BatchSampler(records, config.batch_size, "hybrid", 0.5, seed=config.seed + 1)
    losses = [compute_loss(model, local_slice(sampler.next_batch()), config).item() for _ in range(config.eval_batches)]
    model.train()
    return float(np.mean(losses))


def adamw(groups: list[dict], learning_rate: float) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one pass over each tensor) where torch has it for the device.

    The default for-loop update runs about ten small ops per tensor, each an OpenMP
    region: on 2 shared vCPUs it took 3x the fused step (21.5M parameters, 196 tensors),
    which left hbt-train behind sentence-transformers' trainer, whose default is fused.
    """
    try:
        return torch.optim.AdamW(groups, lr=learning_rate, fused=True)
    except RuntimeError:  # torch < 2.4 has no fused CPU kernel
        return torch.optim.AdamW(groups, lr=learning_rate)


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    return lambda step: min((step + 1) / max(warmup, 1), max(0.0, (total - step) / max(total - warmup, 1)))


def save_checkpoint(model: DualEncoder, directory: Path, config: TrainConfig, extra: dict,
                    state: dict | None = None) -> None:
    """A sentence-transformers directory (the base's pooling, dense layers and prompts kept) that hbt-export
    and sentence-transformers read, written aside and renamed into place.

    ``state`` (optimizer, sampler, step) goes in before the rename, so a checkpoint
    directory that exists is always complete.
    """
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save(staging)
    (staging / TRAIN_INFO).write_text(json.dumps({"config": asdict(config), **extra}, indent=2))
    if state is not None:
        torch.save(state, staging / STATE_FILE)
    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)


def load_state(directory: Path) -> dict:
    """The trainer state of a checkpoint; tensors and plain Python values only (no pickled code)."""
    path = directory / STATE_FILE
    if not path.is_file():
        raise DataError(f"{path}: no training state to resume; start a new run without --resume or choose another --out")
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or EOFError for a damaged file
        raise DataError(f"{path}: unreadable training state ({type(e).__name__}); "
                        "delete the run directory and train again") from e


def rewind_metrics(metrics: Path, step: int) -> None:
    """Drop the metrics logged after the checkpoint being resumed, so the file continues at step + 1."""
    if not metrics.is_file():
        return
    kept = [line for line in metrics.read_text().splitlines(keepends=True) if json.loads(line)["step"] <= step]
    partial = metrics.with_name(metrics.name + ".partial")
    partial.write_text("".join(kept))
    partial.replace(metrics)


@torch.no_grad()
def interpolate(model: DualEncoder, base: DualEncoder, weight: float) -> None:
    """WiSE-FT: set model's weights to (1 - weight) * base + weight * model, in place.

    Blending a fine-tuned model with the one it started from keeps most of the
    fine-tuning's gain and the base model's strengths (Wortsman et al., 2022).
    """
    trained, original = model.state_dict(), base.state_dict()  # the backbone and any dense layers
    if trained.keys() != original.keys() or any(trained[k].shape != original[k].shape for k in trained):
        raise DataError(f"{base.source.name}: not the architecture of the trained model; "
                        "interpolate with the --base the model was trained from")
    for name, tensor in trained.items():
        if tensor.is_floating_point():
            tensor.lerp_(original[name].to(tensor.device, tensor.dtype), 1.0 - weight)


def use_machine(config: TrainConfig, device: torch.device) -> tuple[TrainConfig, dict, list[str]]:
    """Give torch's pools the cores this process may use, and resolve the precision for this hardware.

    Returns the config with its precision resolved, the record of where the run ran
    (its checkpoints and first metrics line carry it) and the lines to tell the user.
    """
    cpu, processes = machine.describe(), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cores = cpu["usable_cores"]
    threads = machine.thread_plan(cores, processes)
    torch.set_num_threads(threads.intra_op)
    if torch.get_num_interop_threads() != threads.inter_op:
        try:
            torch.set_num_interop_threads(threads.inter_op)
        except RuntimeError:  # settable once per process, before any inter-op work: a later run keeps the first's
            pass
    choice = machine.choose_precision(config.precision, frozenset(cpu["cpu_features"]),
                                      torch.cuda.is_bf16_supported() if device.type == "cuda" else None,
                                      config.force_precision)
    record = {**cpu, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "threads": {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads(),
                          "loader_workers": threads.loader_workers},
              "precision": choice.precision, "precision_requested": config.precision, "precision_reason": choice.reason}
    shared = f", shared by {processes} processes" if processes > 1 else ""
    line = (f"hbt-train on {record['cpu']}: {cores} usable cores (affinity and cgroup quota){shared}; torch "
            f"{record['threads']['intra_op']} intra-op and {record['threads']['inter_op']} inter-op threads, batches "
            f"prepared in this process; device {record['device']}; precision {choice.precision} ({choice.reason})")
    return replace(config, precision=choice.precision), record, [line, *([choice.warning] if choice.warning else [])]


class StopRequest:
    """Ctrl-C or SIGTERM during training, noted and honoured at the end of the step. A checkpoint
    taken inside a step holds the sampler past its batch (and perhaps half an optimizer update), so
    --resume would skip that batch. A second signal stops at once, without a checkpoint."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested, self._previous = False, {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # only it may set handlers
            self._previous = {number: signal.signal(number, self._note) for number in self.SIGNALS}
        return self

    def _note(self, number, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def agreed(self, device: torch.device) -> bool:
        """Whether to stop now: under DDP, when any process was asked, so that all stop at the same step."""
        if not distributed():
            return self.requested
        flag = torch.tensor([int(self.requested)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


def train(config: TrainConfig, log: Callable[[dict], None] = print, resume: bool = False,
          say: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> dict:
    """Train and return a summary; ``say`` receives the machine line (and any precision warning) first,
    ``log`` each step's metrics."""
    out = Path(config.out)
    if (out / "last").exists() and not resume:
        raise DataError(f"{out}: holds a training run; pass --resume to continue it or choose another --out")
    init_distributed()
    rank0 = not distributed() or torch.distributed.get_rank() == 0
    if distributed() and config.batch_size % torch.distributed.get_world_size():
        raise DataError(f"batch size {config.batch_size} does not split evenly over "
                        f"{torch.distributed.get_world_size()} processes; use a multiple of the process count")
    torch.manual_seed(config.seed)
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
    config, where, lines = use_machine(config, device)
    if rank0:
        for line in lines:
            say(line)

    # Data: split by question id, then one sampler per split.
    records = load_records(Path(config.data), list(config.languages) or None, config.passage_unit)
    train_records, val_records = split_by_id(records, config.validation_fraction, config.seed)
    sampler = BatchSampler(train_records, config.batch_size, config.batching, config.alpha,
                           config.language_weighting, config.seed)
    steps = config.steps or max(1, math.ceil(config.epochs * len(train_records) / config.batch_size))

    # Model and optimizer.
    resume_dir = out / "last"
    state = load_state(resume_dir) if resume else None  # before loading a model: a missing state fails fast
    model = DualEncoder(resolve_source(str(resume_dir) if resume else config.base))
    if config.gradient_checkpointing:
        model.backbone.gradient_checkpointing_enable()
    if config.freeze_embeddings:  # AdamW over the 250k-row vocabulary costs more than the layers on CPU
        model.backbone.get_input_embeddings().weight.requires_grad_(False)
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    optimizer = adamw([{"params": decay, "weight_decay": config.weight_decay},
                       {"params": no_decay, "weight_decay": 0.0}], config.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(int(steps * config.warmup_fraction), steps))
    step, best, bad_evals = 0, float("inf"), 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        step, best, bad_evals = state["step"], state["best"], state["bad_evals"]

    def checkpoint(reason: str) -> None:
        if not rank0:
            return
        save_checkpoint(model, resume_dir, config, {"step": step, "best_validation_loss": best, "saved": reason,
                                                            "machine": where},
                        state={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                               "sampler": sampler.state_dict(), "torch_rng": torch.get_rng_state(),
                               "step": step, "best": best, "bad_evals": bad_evals})

    started, examples, stop_reason = time.time(), 0, "steps"
    metrics_file = None
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
        rewind_metrics(out / "metrics.jsonl", step)
        metrics_file = open(out / "metrics.jsonl", "a")
    between_steps = True  # where a checkpoint resumes exactly
    try:
        with StopRequest() as stop:
            while step < steps:
                between_steps = False
                batch = sampler.next_batch()
                optimizer.zero_grad(set_to_none=True)
                loss = backward(model, batch, config)
                torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                step += 1
                examples += len(batch)
                elapsed = time.time() - started
                record = {"step": step, "loss": round(loss.item(), 5), "lr": scheduler.get_last_lr()[0],
                          "examples_per_second": round(examples / max(elapsed, 1e-9), 2),
                          "batch": "mono" if batch[0].query_lang == batch[0].passage_lang else "cross",
                          "precision": config.precision, "threads": where["threads"]["intra_op"]}
                if examples == len(batch):  # this process's first step says where the steps after it run
                    record["machine"] = where
                if config.eval_every and step % config.eval_every == 0 or step == steps:
                    record["validation_loss"] = validation_loss(model, val_records, config)
                    if record["validation_loss"] < best:
                        best, bad_evals = record["validation_loss"], 0
                        if rank0:
                            save_checkpoint(model, out / "best", config, {"step": step, "validation_loss": best,
                                                                             "machine": where})
                    else:
                        bad_evals += 1
                    checkpoint("evaluation")
                if metrics_file:
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                between_steps = True
                log(record)
                if config.patience and bad_evals >= config.patience:
                    stop_reason = "early stopping"
                    break
                if config.time_budget and elapsed > config.time_budget:
                    stop_reason = "time budget"
                    checkpoint("time budget")
                    break
                if stop.agreed(device):
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        if between_steps:
            checkpoint("interrupted")
        else:
            say("stopped inside a step: --resume continues from the last checkpoint (its step is in "
                "last/hbt_train.json), not from here")
        raise
    finally:
        if metrics_file:
            metrics_file.close()
    result = out / "best"
    if not result.exists() and rank0:  # no validation split: the last model is the result
        save_checkpoint(model, result, config, {"step": step, "machine": where})
    if config.interpolate < 1 and rank0:
        result = out / interpolated_name(config.interpolate)
        model = DualEncoder(resolve_source(str(out / "best")))
        interpolate(model, DualEncoder(resolve_source(config.base)), config.interpolate)
        best_step = json.loads((out / "best" / TRAIN_INFO).read_text())["step"]  # the blend's trained side
        save_checkpoint(model, result, config, {"step": best_step, "machine": where,
                                                       "interpolated": {"base": config.base, "weight": config.interpolate}})
    return {"steps": step, "stopped": stop_reason, "best_validation_loss": best if math.isfinite(best) else None,
            "examples_per_second": round(examples / max(time.time() - started, 1e-9), 2),
            "precision": config.precision, "threads": where["threads"]["intra_op"], "cpu": where["cpu"],
            "checkpoint": str(result)}
