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
from hbt.encoder import model_inputs, pad_batch
from hbt.errors import BundleError, FidelityError, SourceError
from hbt.sources import Source, resolve_source
from hbt.tokenizer import Tokenizer, TokenizerSpec

log = logging.getLogger(__name__)

QUANTIZATIONS = ("int8", "none")
# Minimum cosine between ONNX and PyTorch embeddings of the reference set. Correct
# fp32 graphs agree to ~1e-6; hbt's int8 costs e5-small ~0.0015 on average and ~0.0035
# at worst, while the broken int8 exports of onnxruntime issue 9599 fall below 0.9.
# The int8 gate leaves room for harder models without letting that through.
# Contrastively fine-tuned models are harder: their embeddings spread out (mean pairwise
# cosine 0.75 -> 0.09 after hbt-train), so the same int8 noise costs more cosine (min
# 0.91-0.96 measured). --min-cosine accepts such drift deliberately.
MIN_COSINE = {"none": 0.9999, "int8": 0.98}
# Dynamic int8 gives each MatMul input one scale for the whole batch. In e5-small the
# <s> and </s> tokens reach 12-34x the typical token's largest activation at the FFN
# output projections of layers 0, 4 and 5, so the other tokens get a handful of the
# 256 levels there. MatMuls whose input has such outlier tokens stay fp32: for e5-small
# the 3 of 72 that give 60% of the int8 error (reference-set cosine mean 0.9964 -> 0.9985,
# min 0.993 -> 0.997; multilingual-pool mAP lost to int8 .020 -> .008 on XQuAD-R, .012 ->
# .004 on MLQA-R) for 5-15% of the batch throughput. Keeping the next 9 (ratio >= 5.5) in fp32
# gains only 0.0005 cosine more. Per-channel smoothing (SmoothQuant) did not help: the
# outliers are whole tokens, not channels.
OUTLIER_RATIO = 10.0


@dataclass(frozen=True)
class ExportConfig:
    source: str
    out: Path
    quantize: str = "int8"
    opset: int = 18
    max_length: int = 512
    force: bool = False
    min_cosine: float | None = None  # the fidelity gate; None: MIN_COSINE for the quantization
    outlier_ratio: float = OUTLIER_RATIO  # int8: keep MatMuls with tokens this far above the rest in fp32 (0: none)


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
    step(f"exporting and fusing the ONNX graph (opset {config.opset})")
    work = staging / "fp32"
    fp32_model = fuse(onnx_export(source.model_dir, work, config.opset), work / "fused.onnx",
                      torch_model.backbone.config)
    tokenizer = TokenizerSpec()
    details = _versions()
    if config.quantize == "int8":
        step("quantizing to int8 (dynamic, per-channel weights; outlier-token MatMuls stay fp32)")
        calibration = pad_batch(Tokenizer(source.tokenizer_file, tokenizer).encode(reference_texts(), max_length)[0],
                                tokenizer.pad_id)
        details["fp32_matmuls"] = quantize_int8(fp32_model, staging / MODEL_FILE, calibration, config.outlier_ratio)
    else:
        shutil.move(fp32_model, staging / MODEL_FILE)
    shutil.rmtree(work)
    shutil.copyfile(source.tokenizer_file, staging / tokenizer.file)

    manifest = Manifest(
        source=config.source, source_fingerprint=source.fingerprint(),
        dimension=torch_model.backbone.config.hidden_size, max_length=max_length,
        opset=config.opset, quantization=config.quantize, tokenizer=tokenizer,
        query_prefix=source.query_prefix, passage_prefix=source.passage_prefix,
        files={name: sha256_file(staging / name) for name in (MODEL_FILE, tokenizer.file)},
        details=details,
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


def fuse(model: Path, out: Path, model_config) -> Path:
    """The graph with onnxruntime's transformer fusions (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm).

    A one-query encode runs ~400 small kernels unfused; the fused graph has a quarter of
    them, which takes ~0.7 ms off every call (e5-small, 21 tokens: 4.6 -> 3.9 ms) and
    leaves batch throughput as it was. Symbolic shape inference fails on this graph, so
    the ONNX shape inference of quant_pre_process prepares it.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from onnxruntime.transformers.optimizer import optimize_model

    prepared = out.with_name("prepared.onnx")
    quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
    optimize_model(str(prepared), model_type="bert", num_heads=model_config.num_attention_heads,
                   hidden_size=model_config.hidden_size, opt_level=1).save_model_to_file(str(out))
    return out


def quantize_int8(fp32_model: Path, out: Path, calibration: tuple[np.ndarray, np.ndarray],
                  outlier_ratio: float) -> dict[str, float]:
    """Dynamic int8: per-channel int8 weights, activations quantized at run time.

    Returns the MatMuls kept in fp32 for the outlier tokens of their inputs on the
    ``calibration`` batch (token ids and attention mask), with their ratios.
    Measured on e5-small and rejected (2-core AVX-512 VNNI, batch 32): MatMulNBits
    4/8-bit weights with int8 compute were faithful (cosine 0.9999) but no faster than
    fp32. The int8 error is the per-tensor activation scale: per-channel int8 weights
    alone keep cosine 0.9999.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ratios = matmul_outlier_ratios(fp32_model, calibration) if outlier_ratio > 0 else {}
    kept = {name: round(ratio, 1) for name, ratio in ratios.items() if ratio >= outlier_ratio}
    # Fused contrib ops have no ONNX shape inference; their outputs are float.
    quantize_dynamic(str(fp32_model), str(out), per_channel=True, weight_type=QuantType.QInt8,
                     nodes_to_exclude=sorted(kept), extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return kept


def outlier_ratio(activations: np.ndarray, mask: np.ndarray) -> float:
    """How far the largest token stands above the typical one: max over tokens of max |x|, over its median.

    ``activations`` [B, T, H] and ``mask`` [B, T]; padding is ignored.
    """
    token_peaks = np.abs(activations).max(axis=-1)[mask.astype(bool)]
    return float(token_peaks.max() / max(np.median(token_peaks), 1e-12))


def matmul_outlier_ratios(model: Path, batch: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """``outlier_ratio`` of the input of every weight MatMul (or fused Attention) on a batch (ids, mask)."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(model))
    weights = {init.name for init in graph.graph.initializer}
    probed = {node.name: node.input[0] for node in graph.graph.node
              if node.op_type in ("MatMul", "Attention") and node.input[1] in weights}
    known_outputs = {output.name for output in graph.graph.output}
    for tensor in set(probed.values()) - known_outputs:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    input_ids, mask = batch
    tensors = list(probed.values())
    values = dict(zip(tensors, session.run(tensors, model_inputs(input_ids, mask, {i.name for i in session.get_inputs()}))))
    return {name: outlier_ratio(values[tensor], mask) for name, tensor in probed.items()}


def _versions() -> dict:
    import onnxruntime
    import torch
    import transformers

    return {"hbt": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__}
