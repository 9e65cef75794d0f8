"""The OpenVINO runtime: the static int8 model that ``hbt-export --openvino`` adds to a bundle.

Optional (``pip install 'hbt[openvino]'``) and imported only when chosen. On a
2-vCPU AVX-512 VNNI CPU it encodes batches faster than onnxruntime's dynamic int8.
A single text runs a model compiled for its padded length (16, 32, 64 or 128
tokens): OpenVINO's dynamic-shape path costs a short query about a third more.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hbt.bundle import Manifest
from hbt.errors import BundleError
from hbt.graph_inputs import model_inputs

OPENVINO_MODEL = "openvino.xml"
OPENVINO_WEIGHTS = "openvino.bin"
SINGLE_TEXT_LENGTHS = (16, 32, 64, 128)  # static models, compiled at a text's first use of one (~2 s each)


def import_openvino():
    try:
        import openvino
    except ImportError as e:
        raise ImportError("the OpenVINO runtime needs the openvino extra: pip install 'hbt[openvino]'") from e
    return openvino


def native_precision(core) -> str:
    """What the int8 model's other parts run in: bf16 where this CPU has it natively, else f32.

    Pinned rather than left to OpenVINO's default, and recorded in the bundle at export,
    so the export's gate measures what the runtime runs.
    """
    return "bf16" if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"


def inference_precision(recorded: str, native: str) -> str:
    """The precision the gate measured (``recorded``), unless this CPU lacks it: then f32, the exact one."""
    return recorded if recorded == native else "f32"


class OpenVINOGraph:
    """The bundle's OpenVINO model: ids and mask [B, T] -> token vectors [B, T, H]."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, threads: int):
        openvino = import_openvino()
        if OPENVINO_MODEL not in manifest.files:
            raise BundleError(f"{bundle_dir}: carries no OpenVINO model; export it again with hbt-export --openvino")
        self._core = openvino.Core()
        self.precision = inference_precision(manifest.details.get("openvino_precision", "f32"),
                                             native_precision(self._core))
        self._config = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY",
                        "INFERENCE_NUM_THREADS": threads}
        self._pad_id = manifest.tokenizer.pad_id
        try:
            self._model = self._core.read_model(str(bundle_dir / OPENVINO_MODEL))
            compiled = self._core.compile_model(self._model, "CPU", self._config)
        except RuntimeError as e:  # OpenVINO reports damaged or foreign IR files as RuntimeError
            raise BundleError(
                f"{bundle_dir / OPENVINO_MODEL}: OpenVINO cannot load it ({str(e).splitlines()[0]}); "
                "re-export the bundle with hbt-export --openvino"
            ) from e
        self._input_names = {name for port in compiled.inputs for name in port.get_names()}
        self._request = compiled.create_infer_request()
        self._single_text: dict[int, object] = {}  # padded length -> infer request of a static [1, length] model

    def __call__(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        length = input_ids.shape[1]
        if len(input_ids) > 1 or length > SINGLE_TEXT_LENGTHS[-1]:
            return self._request.infer(model_inputs(input_ids, mask, self._input_names))[0]
        padded = next(n for n in SINGLE_TEXT_LENGTHS if n >= length)
        input_ids = np.pad(input_ids, ((0, 0), (0, padded - length)), constant_values=self._pad_id)
        mask = np.pad(mask, ((0, 0), (0, padded - length)))  # padding is masked out: the vectors do not change
        return self._single_text_request(padded).infer(model_inputs(input_ids, mask, self._input_names))[0][:, :length]

    def _single_text_request(self, length: int):
        if length not in self._single_text:
            model = self._model.clone()
            model.reshape({port.get_any_name(): [1, length] for port in model.inputs})
            self._single_text[length] = self._core.compile_model(model, "CPU", self._config).create_infer_request()
        return self._single_text[length]
