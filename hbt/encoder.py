"""The runtime encoder: a bundle's ONNX model run with onnxruntime (no torch, no transformers)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from hbt.bundle import MODEL_FILE, Manifest, read_manifest
from hbt.errors import BundleError
from hbt.graph_inputs import model_inputs
from hbt.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Average the token vectors that the mask keeps: [B, T, H], [B, T] -> [B, H]."""
    weights = mask[:, :, None].astype(hidden.dtype)  # [B, T, 1]
    return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def pad_batch(ids: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad to the longest sequence of the batch: ids and attention mask, both [B, T] int64.

    Padding goes on the right: the fused Attention of hbt-export's graphs reads each
    row's length from its mask.
    """
    width = max(len(row) for row in ids)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return input_ids, mask


RUNTIMES = ("onnxruntime", "openvino")


class OnnxRuntimeGraph:
    """The bundle's model.onnx in an onnxruntime session: ids and mask [B, T] -> token vectors [B, T, H]."""

    def __init__(self, bundle_dir: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(bundle_dir / MODEL_FILE), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for damaged models
            raise BundleError(
                f"{bundle_dir / MODEL_FILE}: onnxruntime cannot load it ({str(e).splitlines()[0]}); "
                "re-export the bundle with hbt-export"
            ) from e
        self._input_names = {i.name for i in self._session.get_inputs()}

    def __call__(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._session.run(None, model_inputs(input_ids, mask, self._input_names))[0]


class Encoder:
    """Embeds queries and passages with a bundle: L2-normalized float32, in input order.

    Texts are tokenized, sorted by length and run in batches padded to their longest
    member, so short texts do not pay for long ones. ``truncated`` counts the texts
    cut at the bundle's maximum length since the encoder was made. ``runtime`` runs
    the bundle's model.onnx with onnxruntime (the default), or the OpenVINO int8 model
    that ``hbt-export --openvino`` adds (the ``openvino`` extra; faster in batches).
    An int8 bundle is checked on this CPU at first use (``hbt.int8_check``); the
    verdict is ``int8_check``, and one below the gate is refused.
    """

    def __init__(self, bundle_dir: Path | str, threads: int | None = None, verify: bool = True,
                 runtime: str = "onnxruntime", check_int8: bool = True):
        self.bundle_dir = Path(bundle_dir)
        self.manifest: Manifest = read_manifest(self.bundle_dir, verify=verify)
        self.tokenizer = Tokenizer(self.bundle_dir / self.manifest.tokenizer.file, self.manifest.tokenizer)
        self.threads = threads or min(os.cpu_count() or 1, 8)
        self.runtime = runtime
        if runtime == "onnxruntime":
            self._graph = OnnxRuntimeGraph(self.bundle_dir, self.threads)
        elif runtime == "openvino":
            from hbt.openvino_runtime import OpenVINOGraph

            self._graph = OpenVINOGraph(self.bundle_dir, self.manifest, self.threads)
        else:
            raise BundleError(f"runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
        self.truncated = 0
        self.int8_check = self._check_int8() if check_int8 else None

    def _check_int8(self):
        """An int8 bundle's verdict on this CPU (see ``hbt.int8_check``); refuses one below its gate."""
        gate = self.manifest.fidelity.get("gate") if self.runtime == "onnxruntime" else \
            self.manifest.fidelity.get("openvino", {}).get("gate")
        if self.manifest.quantization != "int8" or not gate:
            return None
        from hbt.int8_check import check_int8, require_passed

        check = check_int8(self, gate)
        if check is not None:
            log.info("%s", check.summary())
            require_passed(check, self.bundle_dir)
        return check

    @property
    def dimension(self) -> int:
        return self.manifest.dimension

    def encode_queries(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        return self.encode([self.manifest.query_prefix + t for t in texts], batch_size)

    def encode_passages(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        return self.encode([self.manifest.passage_prefix + t for t in texts], batch_size)

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Embed texts as they are (prefixes already applied): [N, dimension] float32."""
        ids, truncated = self.tokenizer.encode(texts, self.manifest.max_length)
        if truncated:
            log.warning("%d of %d texts were longer than %d tokens and were truncated",
                        truncated, len(texts), self.manifest.max_length)
            self.truncated += truncated
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        order = np.argsort([len(row) for row in ids], kind="stable")
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            input_ids, mask = pad_batch([ids[i] for i in chosen], self.manifest.tokenizer.pad_id)
            out[chosen] = l2_normalize(mean_pool(self._graph(input_ids, mask), mask))
        return out
