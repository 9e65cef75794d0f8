"""The runtime encoder: a bundle's ONNX model run with onnxruntime (no torch, no transformers)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from hbt.bundle import MODEL_FILE, Manifest, read_manifest
from hbt.errors import BundleError
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


def model_inputs(input_ids: np.ndarray, mask: np.ndarray, names: set[str]) -> dict[str, np.ndarray]:
    """The feed for a graph with these input names. BERT graphs also take token_type_ids, all zero for XLM-R."""
    feed = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
    return {name: value for name, value in feed.items() if name in names}


class Encoder:
    """Embeds queries and passages with a bundle: L2-normalized float32, in input order.

    Texts are tokenized, sorted by length and run in batches padded to their longest
    member, so short texts do not pay for long ones. ``truncated`` counts the texts
    cut at the bundle's maximum length since the encoder was made.
    """

    def __init__(self, bundle_dir: Path | str, threads: int | None = None, verify: bool = True):
        import onnxruntime as ort

        self.bundle_dir = Path(bundle_dir)
        self.manifest: Manifest = read_manifest(self.bundle_dir, verify=verify)
        self.tokenizer = Tokenizer(self.bundle_dir / self.manifest.tokenizer.file, self.manifest.tokenizer)
        options = ort.SessionOptions()
        self.threads = threads or min(os.cpu_count() or 1, 8)
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                str(self.bundle_dir / MODEL_FILE), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types for damaged models
            raise BundleError(
                f"{self.bundle_dir / MODEL_FILE}: onnxruntime cannot load it ({str(e).splitlines()[0]}); "
                "re-export the bundle with hbt-export"
            ) from e
        self._input_names = {i.name for i in self._session.get_inputs()}
        self.truncated = 0

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
            out[chosen] = self._run([ids[i] for i in chosen])
        return out

    def _run(self, ids: list[np.ndarray]) -> np.ndarray:
        input_ids, mask = pad_batch(ids, self.manifest.tokenizer.pad_id)
        hidden = self._session.run(None, model_inputs(input_ids, mask, self._input_names))[0]
        return l2_normalize(mean_pool(hidden, mask))
