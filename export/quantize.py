"""Dynamic int8 with accuracy-aware mixed precision: the MatMuls int8 hurts most stay fp32.

Dynamic int8 quantizes each MatMul's input at run time with one scale for the whole
tensor, and its weights per output channel. Where a few tokens are far louder than
the rest (e5-small's <s> and </s> reach 12-34x the typical token at the FFN output
projections of layers 0, 4 and 5), the other tokens get a handful of the 256 levels.
``matmul_sensitivities`` measures each MatMul's own int8 error on the reference texts,
and the exporter keeps the worst in fp32, as many as its retrieval gate needs.

Measured on e5-small and rejected (2-core AVX-512 VNNI, batch 32): MatMulNBits 4/8-bit
weights with int8 compute were faithful (cosine 0.9999) but no faster than fp32;
per-channel smoothing (SmoothQuant) did not help, since the outliers are whole tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hbt.encoder import model_inputs


# The largest int8 weight level per quantized op: onnxruntime's QAttention takes
# 7-bit weights (reduce_range); with the softmax after them, that puts e5-small's fused
# attentions among its worst int8 nodes (ranks 8 to 17 of 48).
WEIGHT_TOP = {"MatMul": 127, "Attention": 64}


def quantize_int8(fp32_model: Path, out: Path, keep_fp32: list[str]) -> None:
    """Dynamic int8 (per-channel int8 weights, activations quantized at run time), but ``keep_fp32`` nodes."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Fused contrib ops have no ONNX shape inference; their outputs are float.
    quantize_dynamic(str(fp32_model), str(out), per_channel=True, weight_type=QuantType.QInt8,
                     nodes_to_exclude=sorted(keep_fp32), extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def fake_dynamic_int8(x: np.ndarray) -> np.ndarray:
    """``x`` through onnxruntime's dynamic activation quantization: uint8, one scale and zero point per tensor."""
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = max(high - low, 1e-12) / 255
    zero_point = np.round(-low / scale)
    return (np.clip(np.round(x / scale) + zero_point, 0, 255) - zero_point) * scale


def fake_per_channel_int8(weight: np.ndarray, top: int = 127) -> np.ndarray:
    """A [in, out] weight through symmetric int8 (levels -top..top) with one scale per output channel."""
    scale = np.maximum(np.abs(weight).max(axis=0, keepdims=True), 1e-12) / top
    return np.clip(np.round(weight / scale), -top, top) * scale


def relative_token_error(approximate: np.ndarray, exact: np.ndarray, mask: np.ndarray) -> float:
    """Mean over the tokens ``mask`` [B, T] keeps of each token's relative error, for outputs [B, T, H].

    Per token, not over the tensor: an outlier token is reproduced well and dominates a
    tensor-wide norm, while the error it causes falls on the ordinary tokens.
    """
    keep = mask.astype(bool)  # padding is quantized with the rest but not scored
    exact, approximate = exact[keep], approximate[keep]
    return float(np.mean(np.linalg.norm(approximate - exact, axis=-1) / np.maximum(np.linalg.norm(exact, axis=-1), 1e-12)))


def matmul_sensitivities(model: Path, batch: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Each weight MatMul's (or fused Attention's) own int8 error on a batch (ids, mask) [B, T], worst first.

    The node runs alone, once on its fp32 inputs and once on them after the int8
    rounding that onnxruntime's dynamic quantization applies to its activations and
    weights; the error is ``relative_token_error`` of its output. For Attention that
    includes the softmax, which amplifies errors in the queries and keys.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    graph = onnx.load(str(model))
    weights = {init.name: numpy_helper.to_array(init) for init in graph.graph.initializer}
    nodes = [node for node in graph.graph.node if node.op_type in WEIGHT_TOP and node.input[1] in weights]
    graph_inputs = {i.name for i in graph.graph.input}
    probed = sorted({name for node in nodes for name in node.input
                     if name and name not in weights and name not in graph_inputs})
    known_outputs = {output.name for output in graph.graph.output}
    graph.graph.output.extend(onnx.ValueInfoProto(name=name) for name in probed if name not in known_outputs)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    input_ids, mask = batch
    feed = model_inputs(input_ids, mask, {i.name for i in session.get_inputs()})
    values = feed | weights | dict(zip(probed, session.run(probed, feed)))

    errors = {}
    for node in nodes:
        names = [name for name in node.input if name]
        alone = helper.make_model(
            helper.make_graph([node], "alone", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(values[n].dtype), None) for n in names],
                              [onnx.ValueInfoProto(name=node.output[0])]),
            opset_imports=list(graph.opset_import))
        run = ort.InferenceSession(alone.SerializeToString(), providers=["CPUExecutionProvider"])
        exact_feed = {name: values[name] for name in names}
        rounded = exact_feed | {node.input[0]: fake_dynamic_int8(values[node.input[0]]).astype(np.float32),
                                node.input[1]: fake_per_channel_int8(weights[node.input[1]], WEIGHT_TOP[node.op_type]).astype(np.float32)}
        [exact] = run.run([node.output[0]], exact_feed)
        [approximate] = run.run([node.output[0]], rounded)
        errors[node.name] = relative_token_error(approximate, exact, mask)
    return dict(sorted(errors.items(), key=lambda item: -item[1]))
