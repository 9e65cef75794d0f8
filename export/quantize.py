"""Int8 that computes the same on every CPU, with the nodes int8 hurts most protected.

**Why 7-bit weights (reduce_range).** onnxruntime multiplies uint8 activations by
int8 weights. On AVX2 without VNNI its kernel adds pairs of products in 16 bits
(``vpmaddubsw``), which saturates: 2 x 255 x 127 > 32767. VNNI, AMX and ARM
accumulate in 32 bits. So the same int8 graph gave e5-small a gate-set mAP loss of
.015 on AVX-512 VNNI and .021 on AVX2 (issue 20), and a bundle could pass its gate
where it was exported and fail where it runs. With weights in -64..64 a pair is at
most 2 x 255 x 64 = 32640: no kernel saturates and every CPU computes the same integer
products (the float parts still round per CPU family: probe agreement .99954 between
Sapphire Rapids and qemu's Haswell, against .9955 for 8-bit weights; ``hbt.int8_check``
re-measures the gate where that matters). It costs e5-small nothing measurable (all-int8 gate loss .0150 against .0146 for 8-bit weights on VNNI).
Measured and rejected: uint8 weights (u8u8, also exact everywhere) were as faithful
(.0170) but slower on AVX2 (1.21x fp32 against 1.41x for 7-bit, issue 20's Zen 3 run).

**Why some activations get one scale per token.** Dynamic int8 quantizes a MatMul's
input with one scale per tensor. e5's <s> and </s> are 12-34x louder than the other
tokens at some layers, so the ordinary tokens get a handful of the 256 levels. A
per-token MatMul scales each token's row by its own largest value (symmetric, zero
point 128) and rescales the int32 products by token and by output channel. On e5-small,
all MatMuls per token cut the gate loss from .015 to .0035 and raised top-10 overlap
from .917 to .963 (.971 with attention in fp32), at 1.59x the bulk speed of fp32
against 2.1x per tensor (CPU time, one thread, Sapphire Rapids). Per-token inputs at
7 bits with 8-bit weights were worse (overlap .962).

**The ladder.** Every MatMul is per-token int8 and every fused Attention per-tensor int8
(its QKV projection per token was no better: overlap .966); ``Sensitivities.ladder``
then orders the nodes to move to fp32 by their own int8 error on the reference texts,
and the exporter climbs it until its gate holds with a margin. An earlier ladder that
moved MatMuls to per-token one by one, by their own error, needed 24 fp32 nodes for
the same gate: per-token scales help the graph more than any single node shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hbt.graph_inputs import model_inputs

# Weight levels: -64..64 keeps AVX2's 16-bit pair sums from saturating (see above).
WEIGHT_TOP = 64
# Activation levels per token: symmetric around the zero point 128, so uint8 1..255.
TOKEN_TOP = 127
WEIGHT_OPS = ("MatMul", "Attention")


@dataclass(frozen=True)
class Int8Plan:
    """Which weight nodes int8 protects; every other MatMul and Attention is dynamic int8, one scale per tensor."""

    per_token: tuple[str, ...] = ()  # MatMuls whose input gets one int8 scale per token
    fp32: tuple[str, ...] = ()  # MatMuls or Attentions left in fp32

    def to_json(self) -> dict:
        return {"per_token": list(self.per_token), "fp32": list(self.fp32)}


def plan_at(ladder: list[str], steps: int, per_token: tuple[str, ...] = ()) -> Int8Plan:
    """The plan after the first ``steps`` of the ladder: those nodes fp32, the other ``per_token`` MatMuls per token."""
    fp32 = set(ladder[:steps])
    return Int8Plan(per_token=tuple(sorted(set(per_token) - fp32)), fp32=tuple(sorted(fp32)))


class Int8Writer:
    """Writes the int8 form of one fp32 graph for any plan; each weight is quantized once.

    onnxruntime's own ``quantize_dynamic`` takes 60-90 s on e5-small (Python loops over
    channels, two shape inferences), and the gate climbs the ladder a dozen times. This
    writes the fused operators onnxruntime's optimizer would make from it directly:
    ``DynamicQuantizeMatMul`` for MatMuls, ``DynamicQuantizeLinear`` + ``QAttention``
    for Attention, ``QEmbedLayerNormalization`` (uint8 tables) for the embeddings, and
    ``per_token_matmul``'s nodes where the plan asks.
    """

    def __init__(self, fp32_model: Path):
        import onnx

        self.model = onnx.load(str(fp32_model))
        self.weights = {init.name: init for init in self.model.graph.initializer}
        self._int8: dict[str, list] = {}

    def write(self, plan: Int8Plan, out: Path) -> None:
        import onnx
        from onnx import helper

        graph = self.model.graph
        nodes, initializers, quantized_inputs = [], {}, {}
        for node in graph.node:
            weight = node.input[1] if len(node.input) > 1 and node.input[1] in self.weights else None
            if node.op_type == "EmbedLayerNormalization":
                nodes.append(self._embeddings(node, initializers))
            elif node.op_type not in WEIGHT_OPS or weight is None or node.name in plan.fp32:
                nodes.append(node)
            elif node.op_type == "Attention":
                nodes += self._attention(node, initializers, quantized_inputs)
            elif node.name in plan.per_token:
                nodes += per_token_matmul(node, self._quantized(weight, initializers), quantized_inputs)
            else:
                nodes.append(helper.make_node("DynamicQuantizeMatMul", [node.input[0], *self._quantized(weight, initializers)],
                                              list(node.output), name=node.name + "_int8", domain="com.microsoft"))
        used = {name for node in nodes for name in node.input}
        initializers |= {name: init for name, init in self.weights.items() if name in used and name not in initializers}
        initializers |= {name: init for name, init in _per_token_constants().items() if name in used}
        int8 = helper.make_model(
            helper.make_graph(nodes, graph.name, graph.input, graph.output, initializer=list(initializers.values())),
            opset_imports=self.model.opset_import, ir_version=self.model.ir_version)
        onnx.save(int8, str(out))

    def _quantized(self, weight: str, initializers: dict) -> list[str]:
        """Names of ``weight``'s 7-bit per-channel int8 form: weight, scale [N], zero point [N]."""
        from onnx import numpy_helper

        if weight not in self._int8:
            values = numpy_helper.to_array(self.weights[weight])  # [K, N]
            scale = (np.maximum(np.abs(values).max(axis=0), 1e-12) / WEIGHT_TOP).astype(np.float32)
            levels = np.clip(np.round(values / scale), -WEIGHT_TOP, WEIGHT_TOP).astype(np.int8)
            self._int8[weight] = [numpy_helper.from_array(levels, weight + "/int8"),
                                  numpy_helper.from_array(scale, weight + "/int8_scale"),
                                  numpy_helper.from_array(np.zeros(scale.shape, np.int8), weight + "/int8_zero_point")]
        for init in self._int8[weight]:
            initializers[init.name] = init
        return [init.name for init in self._int8[weight]]

    def _attention(self, node, initializers: dict, quantized_inputs: dict) -> list:
        from onnx import helper

        source, weight, bias, *mask = list(node.input) + [""] * (4 - len(node.input))
        new = []
        if (source, "tensor") not in quantized_inputs:
            names = [f"{source}/uint8", f"{source}/uint8_scale", f"{source}/uint8_zero_point"]
            new.append(helper.make_node("DynamicQuantizeLinear", [source], names))
            quantized_inputs[(source, "tensor")] = names
        q, q_scale, q_zero = quantized_inputs[(source, "tensor")]
        w, w_scale, w_zero = self._quantized(weight, initializers)
        new.append(helper.make_node("QAttention", [q, w, bias, q_scale, w_scale, mask[0], q_zero, w_zero],
                                    list(node.output), name=node.name + "_int8", domain="com.microsoft",
                                    **{a.name: helper.get_attribute_value(a) for a in node.attribute}))
        return new

    def _embeddings(self, node, initializers: dict):
        """EmbedLayerNormalization with uint8 tables (one scale each): a 4x smaller file, lookups unchanged in cost."""
        from onnx import helper, numpy_helper

        ids, segments, *tables, mask = list(node.input)[:8] + [""] * (8 - len(node.input))
        names = {"values": [], "scales": [], "zero_points": []}
        for table in tables:
            if table + "/uint8" not in self._int8:
                values = numpy_helper.to_array(self.weights[table]).astype(np.float32)
                low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
                scale = max(high - low, 1e-12) / 255
                zero = np.uint8(np.round(-low / scale))
                levels = np.clip(np.round(values / scale) + zero, 0, 255).astype(np.uint8)
                self._int8[table + "/uint8"] = [numpy_helper.from_array(levels, table + "/uint8"),
                                                numpy_helper.from_array(np.array(scale, np.float32), table + "/uint8_scale"),
                                                numpy_helper.from_array(np.array(zero, np.uint8), table + "/uint8_zero_point")]
            for key, init in zip(names, self._int8[table + "/uint8"]):
                initializers[init.name] = init
                names[key].append(init.name)
        return helper.make_node("QEmbedLayerNormalization",
                                [ids, segments, *names["values"], mask, *names["scales"], *names["zero_points"]],
                                list(node.output), name=node.name + "_int8", domain="com.microsoft",
                                **{a.name: helper.get_attribute_value(a) for a in node.attribute})


def _per_token_constants() -> dict:
    from onnx import numpy_helper

    values = {"pt_inverse_top": np.array(1 / TOKEN_TOP, np.float32), "pt_tiny": np.array(1e-12, np.float32),
              "pt_zero_point_float": np.array(TOKEN_TOP + 1, np.float32),
              "pt_zero_point": np.array(TOKEN_TOP + 1, np.uint8), "pt_last_axis": np.array([-1], np.int64)}
    return {name: numpy_helper.from_array(value, name) for name, value in values.items()}


def per_token_matmul(node, weight: list[str], quantized_inputs: dict) -> list:
    """MatMul ``node`` as int8 with one activation scale per token: its new nodes.

    For input x [..., T, K] and the int8 weight [K, N] with per-channel scale [N]:
    s = max|x| / 127 per token, q = round(x / s) + 128 as uint8, and the output is
    MatMulInteger(q - 128, weight) times the channel scale times s [..., T, 1]. An input
    shared by several MatMuls is quantized once.
    """
    from onnx import TensorProto, helper

    source = node.input[0]
    new = []
    if (source, "token") not in quantized_inputs:
        p = f"{source}/per_token"
        new += [
            helper.make_node("Abs", [source], [p + "/abs"]),
            helper.make_node("ReduceMax", [p + "/abs", "pt_last_axis"], [p + "/max"], keepdims=1),
            helper.make_node("Mul", [p + "/max", "pt_inverse_top"], [p + "/raw_scale"]),
            helper.make_node("Max", [p + "/raw_scale", "pt_tiny"], [p + "/scale"]),  # an all-zero token
            helper.make_node("Div", [source, p + "/scale"], [p + "/scaled"]),
            helper.make_node("Round", [p + "/scaled"], [p + "/rounded"]),
            helper.make_node("Add", [p + "/rounded", "pt_zero_point_float"], [p + "/shifted"]),
            helper.make_node("Cast", [p + "/shifted"], [p + "/quantized"], to=TensorProto.UINT8),
        ]
        quantized_inputs[(source, "token")] = (p + "/quantized", p + "/scale")
    quantized, token_scale = quantized_inputs[(source, "token")]
    int8_weight, channel_scale, weight_zero = weight
    p = node.name
    return new + [
        helper.make_node("MatMulInteger", [quantized, int8_weight, "pt_zero_point", weight_zero], [p + "/int32"],
                         name=p + "_per_token"),
        helper.make_node("Cast", [p + "/int32"], [p + "/products"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [p + "/products", channel_scale], [p + "/by_channel"]),
        helper.make_node("Mul", [p + "/by_channel", token_scale], [node.output[0]]),
    ]


def fake_dynamic_int8(x: np.ndarray) -> np.ndarray:
    """``x`` through onnxruntime's dynamic activation quantization: uint8, one scale and zero point per tensor."""
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = max(high - low, 1e-12) / 255
    zero_point = np.round(-low / scale)
    return (np.clip(np.round(x / scale) + zero_point, 0, 255) - zero_point) * scale


def fake_per_token_int8(x: np.ndarray) -> np.ndarray:
    """``x`` [..., K] through ``per_token_matmuls``' quantization: symmetric, one scale per row."""
    scale = np.maximum(np.abs(x).max(axis=-1, keepdims=True) / TOKEN_TOP, 1e-12)
    return np.round(x / scale) * scale


def fake_per_channel_int8(weight: np.ndarray, top: int = WEIGHT_TOP) -> np.ndarray:
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


@dataclass(frozen=True)
class Sensitivities:
    """Each weight node's own int8 error on the reference texts, in both activation schemes."""

    per_tensor: dict[str, float]  # MatMuls and Attentions, worst first
    per_token: dict[str, float]  # MatMuls, worst first
    op_types: dict[str, str]

    def ladder(self, per_token: bool = True) -> list[str]:
        """The nodes to move to fp32, the largest int8 error left first.

        With ``per_token`` (onnxruntime) every MatMul is per-token int8 to begin with, so
        its error is its per-token one; a runtime without per-token int8 (OpenVINO)
        ranks every node by its per-tensor error.
        """
        errors = self.per_tensor | (self.per_token if per_token else {})
        return sorted(errors, key=lambda name: (-errors[name], name))

    def matmuls(self) -> tuple[str, ...]:
        return tuple(sorted(name for name, op in self.op_types.items() if op == "MatMul"))


def matmul_sensitivities(model: Path, batch: tuple[np.ndarray, np.ndarray]) -> Sensitivities:
    """Each weight MatMul's (or fused Attention's) own int8 error on a batch (ids, mask) [B, T].

    The node runs alone, once on its fp32 inputs and once on them after the int8
    rounding of its weights and of its activations (per tensor, and for MatMuls per
    token); the error is ``relative_token_error`` of its output. For Attention that
    includes the softmax, which amplifies errors in the queries and keys.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    graph = onnx.load(str(model))
    initializers = {init.name for init in graph.graph.initializer}
    nodes = [node for node in graph.graph.node if node.op_type in WEIGHT_OPS and node.input[1] in initializers]
    # Only the weights these nodes read (not the embedding tables, most of the model's bytes).
    read = {name for node in nodes for name in node.input}
    weights = {init.name: numpy_helper.to_array(init) for init in graph.graph.initializer if init.name in read}
    graph_inputs = {i.name for i in graph.graph.input}
    probed = sorted({name for node in nodes for name in node.input
                     if name and name not in initializers and name not in graph_inputs})
    known_outputs = {output.name for output in graph.graph.output}
    graph.graph.output.extend(onnx.ValueInfoProto(name=name) for name in probed if name not in known_outputs)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    opsets = list(graph.opset_import)
    del graph  # the model's weights are in ``weights``; a second copy would double the export's peak memory
    input_ids, mask = batch
    feed = model_inputs(input_ids, mask, {i.name for i in session.get_inputs()})
    values = feed | dict(zip(probed, session.run(probed, feed)))
    del session

    per_tensor, per_token = {}, {}
    for node in nodes:
        names = [name for name in node.input if name]
        alone = helper.make_model(
            helper.make_graph([node], "alone",
                              [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(_value(n, values, weights).dtype), None)
                               for n in names],
                              [onnx.ValueInfoProto(name=node.output[0])]),
            opset_imports=opsets)
        run = ort.InferenceSession(alone.SerializeToString(), providers=["CPUExecutionProvider"])
        exact_feed = {name: _value(name, values, weights) for name in names}
        [exact] = run.run([node.output[0]], exact_feed)
        int8_weight = fake_per_channel_int8(weights[node.input[1]]).astype(np.float32)
        schemes = {"per_tensor": fake_dynamic_int8} | ({"per_token": fake_per_token_int8} if node.op_type == "MatMul" else {})
        for scheme, fake in schemes.items():
            rounded = exact_feed | {node.input[0]: fake(values[node.input[0]]).astype(np.float32), node.input[1]: int8_weight}
            [approximate] = run.run([node.output[0]], rounded)
            (per_tensor if scheme == "per_tensor" else per_token)[node.name] = relative_token_error(approximate, exact, mask)
    worst_first = lambda errors: dict(sorted(errors.items(), key=lambda item: -item[1]))  # noqa: E731
    return Sensitivities(worst_first(per_tensor), worst_first(per_token), {node.name: node.op_type for node in nodes})


def _value(name: str, values: dict, weights: dict) -> np.ndarray:
    return values[name] if name in values else weights[name]
