"""The OpenVINO runtime: the static int8 model that ``hbt-export --openvino`` adds to a bundle.

Optional (``pip install 'hbt[openvino]'``) and imported only when chosen. On a
2-vCPU AVX-512 VNNI CPU it encodes batches faster than onnxruntime's dynamic int8,
and single queries slower (dynamic shapes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hbt.bundle import Manifest
from hbt.encoder import model_inputs
from hbt.errors import BundleError

OPENVINO_MODEL = "openvino.xml"
OPENVINO_WEIGHTS = "openvino.bin"
# What compiles the model: its int8 parts run int8, the rest fp32. OpenVINO's default
# precision hint runs the rest in bf16 on CPUs with AVX-512 bf16, which the export's
# gate did not measure.
COMPILE_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}


def import_openvino():
    try:
        import openvino
    except ImportError as e:
        raise ImportError("the OpenVINO runtime needs the openvino extra: pip install 'hbt[openvino]'") from e
    return openvino


class OpenVINOGraph:
    """The bundle's OpenVINO model: ids and mask [B, T] -> token vectors [B, T, H]."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, threads: int):
        openvino = import_openvino()
        if OPENVINO_MODEL not in manifest.files:
            raise BundleError(f"{bundle_dir}: carries no OpenVINO model; export it again with hbt-export --openvino")
        try:
            self._compiled = openvino.Core().compile_model(
                str(bundle_dir / OPENVINO_MODEL), "CPU", COMPILE_CONFIG | {"INFERENCE_NUM_THREADS": threads})
        except RuntimeError as e:  # OpenVINO reports damaged or foreign IR files as RuntimeError
            raise BundleError(
                f"{bundle_dir / OPENVINO_MODEL}: OpenVINO cannot load it ({str(e).splitlines()[0]}); "
                "re-export the bundle with hbt-export --openvino"
            ) from e
        self._request = self._compiled.create_infer_request()
        self._input_names = {name for port in self._compiled.inputs for name in port.get_names()}

    def __call__(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._request.infer(model_inputs(input_ids, mask, self._input_names))[0]
