"""The runtime encoder: a bundle's ONNX model run with onnxruntime (no torch, no transformers)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from hbt.bundle import MODEL_FILE, DenseFile, Manifest, read_manifest
from hbt.errors import BundleError
from hbt.pooling import dense, l2_normalize, mean_pool, pool, prompt_mask  # noqa: F401 (mean_pool: hbt.encoder's API)
from hbt.graph_inputs import model_inputs
from hbt.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def load_dense(bundle_dir: Path, layer: DenseFile) -> tuple[np.ndarray, np.ndarray | None]:
    """A dense layer's weight [out, in] and bias [out] (None without one), checked against the manifest."""
    try:
        with np.load(bundle_dir / layer.file, allow_pickle=False) as arrays:
            weight = arrays["weight"].astype(np.float32)
            bias = arrays["bias"].astype(np.float32) if layer.bias else None
    except (OSError, KeyError, ValueError) as e:
        raise BundleError(f"{bundle_dir / layer.file}: not a dense layer's weights ({e}); "
                          "re-export the bundle with hbt-export") from e
    if weight.shape != (layer.out_features, layer.in_features) or (bias is not None and bias.shape != weight.shape[:1]):
        raise BundleError(f"{bundle_dir / layer.file}: weights of shape {weight.shape}, the manifest says "
                          f"{layer.out_features}x{layer.in_features}; re-export the bundle with hbt-export")
    return weight, bias


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
        self._dense = [load_dense(self.bundle_dir, layer) for layer in self.manifest.dense]
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
        return self.encode(texts, batch_size, self.manifest.query_prefix)

    def encode_passages(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        return self.encode(texts, batch_size, self.manifest.passage_prefix)

    def encode(self, texts: list[str], batch_size: int = 32, prompt: str = "") -> np.ndarray:
        """Embed ``prompt`` + each text: [N, dimension] float32.

        A prompt given here is left out of pooling when the bundle says so
        (``include_prompt: false``); one already inside the texts never is.
        """
        ids, truncated = self.tokenizer.encode([prompt + t for t in texts], self.manifest.max_length)
        skip = 0 if self.manifest.include_prompt else self.tokenizer.prompt_length(prompt)
        if truncated:
            log.warning("%d of %d texts were longer than %d tokens and were truncated",
                        truncated, len(texts), self.manifest.max_length)
            self.truncated += truncated
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        order = np.argsort([len(row) for row in ids], kind="stable")
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            input_ids, mask = pad_batch([ids[i] for i in chosen], self.manifest.tokenizer.pad_id)
            out[chosen] = self.head(self._graph(input_ids, mask), prompt_mask(mask, skip))
        return out

    def head(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Token vectors [B, T, H] and the mask of those to pool -> the bundle's text vectors [B, dimension]."""
        vectors = pool(hidden, mask, self.manifest.pooling)
        for layer, (weight, bias) in zip(self.manifest.dense, self._dense):
            vectors = dense(vectors, weight, bias, layer.activation)
        return l2_normalize(vectors) if self.manifest.normalize else vectors.astype(np.float32)
