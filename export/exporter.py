"""Export an encoder to a bundle: ONNX graph, int8 quantization, fidelity gate, atomic write.

The bundle is built in a hidden staging directory beside ``--out`` and renamed into
place only once every check has passed, so a failure never leaves a half-written bundle.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from hbt import __version__
from hbt.atomic import replace_directory
from hbt.bundle import MANIFEST, MODEL_FILE, Manifest, sha256_file
from hbt.errors import BundleError, FidelityError, SourceError
from hbt.sources import Source, resolve_source
from hbt.tokenizer import TokenizerSpec

log = logging.getLogger(__name__)

QUANTIZATIONS = ("int8", "none")
# Minimum cosine between ONNX and PyTorch embeddings of the reference set. Correct
# fp32 graphs agree to ~1e-6; dynamic int8 costs this model ~0.004 on average and
# ~0.007 at worst, while the broken int8 exports of onnxruntime issue 9599 fall
# below 0.9. The int8 gate leaves room for harder models without letting that through.
# Contrastively fine-tuned models are harder: their embeddings spread out (mean pairwise
# cosine 0.75 -> 0.09 after hbt-train), so the same int8 noise costs more cosine
# (mean 0.965, min 0.91 measured). --min-cosine accepts such drift deliberately.
MIN_COSINE = {"none": 0.9999, "int8": 0.98}


@dataclass(frozen=True)
class ExportConfig:
    source: str
    out: Path
    quantize: str = "int8"
    opset: int = 18
    max_length: int = 512
    force: bool = False
    min_cosine: float | None = None  # the fidelity gate; None: MIN_COSINE for the quantization


def reference_texts() -> list[str]:
    """The built-in multilingual fidelity set: queries and passages in 17 languages."""
    rows = resources.files("hbt.export").joinpath("reference.tsv").read_text(encoding="utf-8")
    return [line.split("\t", 1)[1] for line in rows.splitlines() if line.strip()]


def export_bundle(config: ExportConfig, step: Callable[[str], None] = log.info) -> Manifest:
    """Export ``config.source`` to a bundle at ``config.out``; returns its manifest."""
    out = Path(config.out)
    if config.quantize not in QUANTIZATIONS:
        raise BundleError(f"--quantize {config.quantize}: choose one of {', '.join(QUANTIZATIONS)}")
    if out.exists() and not config.force:
        raise BundleError(f"{out}: already exists; choose another --out or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(out.parent, os.W_OK):
        raise BundleError(f"{out.parent}: not writable; choose another --out")

    step(f"resolving source {config.source}")
    source = resolve_source(config.source)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        manifest = _build(config, source, staging, step)
        replace_directory(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _build(config: ExportConfig, source: Source, staging: Path, step: Callable[[str], None]) -> Manifest:
    from hbt.modeling import DualEncoder

    torch_model = DualEncoder(source, config.max_length)
    max_length = torch_model.max_length
    step(f"exporting ONNX graph (opset {config.opset})")
    fp32_model = onnx_export(source.model_dir, staging / "fp32", config.opset)
    if config.quantize == "int8":
        step("quantizing to int8 (dynamic, per-channel weights)")
        quantize_int8(fp32_model, staging / MODEL_FILE, staging / "fp32")
    else:
        shutil.move(fp32_model, staging / MODEL_FILE)
    shutil.rmtree(staging / "fp32")
    tokenizer = TokenizerSpec()
    shutil.copyfile(source.tokenizer_file, staging / tokenizer.file)

    manifest = Manifest(
        source=config.source, source_fingerprint=source.fingerprint(),
        dimension=torch_model.backbone.config.hidden_size, max_length=max_length,
        opset=config.opset, quantization=config.quantize, tokenizer=tokenizer,
        query_prefix=source.query_prefix, passage_prefix=source.passage_prefix,
        files={name: sha256_file(staging / name) for name in (MODEL_FILE, tokenizer.file)},
        details=_versions(),
    )
    (staging / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")

    step("checking fidelity against the PyTorch model")
    fidelity = measure_fidelity(torch_model, staging)
    threshold = MIN_COSINE[config.quantize] if config.min_cosine is None else config.min_cosine
    fidelity["threshold_min_cosine"] = threshold
    if fidelity["min_cosine"] < threshold:
        raise FidelityError(
            f"{config.source}: exported embeddings drift from PyTorch (min cosine "
            f"{fidelity['min_cosine']:.4f} < {threshold}); nothing was written. "
            + ("Try --quantize none, or accept the drift with --min-cosine and measure it with hbt-bench accuracy."
               if config.quantize == "int8" else "Try another --opset.")
        )
    manifest = replace(manifest, fidelity=fidelity)
    (staging / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def measure_fidelity(torch_model, bundle_dir: Path) -> dict:
    """Cosine between the bundle's and the PyTorch model's embeddings of the reference set."""
    from hbt.encoder import Encoder

    texts = reference_texts()
    onnx_vectors = Encoder(bundle_dir).encode(texts)
    torch_vectors = torch_model.embed(texts)
    cosines = (onnx_vectors * torch_vectors).sum(axis=1)
    return {"reference_texts": len(texts), "mean_cosine": round(float(np.mean(cosines)), 6),
            "min_cosine": round(float(np.min(cosines)), 6)}


def onnx_export(model_dir: Path, out_dir: Path, opset: int) -> Path:
    """The encoder's graph (inputs input_ids, attention_mask[, token_type_ids]) via optimum."""
    import warnings

    import transformers
    from optimum.exporters.onnx import main_export

    transformers.logging.set_verbosity_error()  # tracer chatter about constants is expected here
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            main_export(str(model_dir), out_dir, task="feature-extraction", opset=opset,
                        do_validation=False, library_name="transformers")
    except (ValueError, KeyError, NotImplementedError) as e:
        raise SourceError(f"{model_dir}: optimum cannot export this model to ONNX ({e})") from e
    return out_dir / "model.onnx"


def quantize_int8(fp32_model: Path, out: Path, work_dir: Path) -> None:
    """Dynamic int8: per-channel int8 weights, activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = work_dir / "prepared.onnx"
    # Symbolic shape inference fails on this graph; the ONNX shape inference suffices.
    quant_pre_process(str(fp32_model), str(prepared), skip_symbolic_shape=True)
    quantize_dynamic(str(prepared), str(out), per_channel=True, weight_type=QuantType.QInt8)


def _versions() -> dict:
    import onnxruntime
    import torch
    import transformers

    return {"hbt": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__}
