"""The OpenVINO model of a bundle: static int8 by NNCF, for faster bulk encoding.

NNCF calibrates one activation scale per tensor on the reference texts and applies
SmoothQuant (per-channel scales moved from activations to weights) before quantizing;
attention, LayerNorm and GELU stay fp32. Unlike onnxruntime's dynamic int8 it pays no
per-call quantization of activations, and OpenVINO fuses the graph for this CPU itself,
so it starts from the unfused ONNX graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hbt.graph_inputs import model_inputs
from hbt.openvino_runtime import OPENVINO_MODEL, OPENVINO_WEIGHTS, import_openvino


def export_openvino(onnx_model: Path, out_dir: Path, calibration: list[tuple[np.ndarray, np.ndarray]] | None,
                    keep_fp32: list[str]) -> list[str]:
    """Write ``onnx_model`` as OpenVINO IR into ``out_dir``; its file names.

    With ``calibration`` (padded batches of ids and mask [B, T]) the model is static
    int8 but for the MatMuls named in ``keep_fp32``; without, fp32.
    """
    openvino = import_openvino()
    model = openvino.convert_model(str(onnx_model))
    if calibration is not None:
        try:
            import nncf
        except ImportError as e:
            raise ImportError("static int8 for OpenVINO needs the openvino extra: pip install 'hbt[openvino]'") from e
        names = {name for port in model.inputs for name in port.get_names()}
        feeds = [model_inputs(ids, mask, names) for ids, mask in calibration]
        model = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(feeds), ignored_scope=nncf.IgnoredScope(names=keep_fp32))
    openvino.save_model(model, str(out_dir / OPENVINO_MODEL), compress_to_fp16=False)
    return [OPENVINO_MODEL, OPENVINO_WEIGHTS]
