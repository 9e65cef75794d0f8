"""A bundle as an MTEB encoder: ``mteb.evaluate(BundleEncoder("bundles/e5"), tasks)``.

Queries get the bundle's query prefix, documents its passage prefix, and inputs
without a side (STS, classification, bitext) the query prefix, E5's rule for
symmetric tasks. Vectors come from ``hbt.encoder.Encoder`` (onnxruntime, or
OpenVINO), so MTEB measures what hbt serves. The ``ModelMeta`` names the model
``hbt/<bundle directory>`` at revision = the bundle's fingerprint, so results
of different bundles never share a cache entry.

Needs the mteb extra (``pip install 'hbt[mteb]'``); nothing else in hbt imports mteb.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

try:
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction
    from mteb.types import PromptType
except ImportError as e:
    raise ImportError(f"hbt.mteb needs the mteb extra ({e.name} is missing): pip install 'hbt[mteb]'") from e

from hbt.bundle import FINGERPRINT_SCHEME
from hbt.encoder import Encoder
from hbt.errors import BundleError, HbtError

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from torch.utils.data import DataLoader


class BundleEncoder(AbsEncoder):
    """An hbt bundle behind MTEB's encoder protocol (``mteb.models.EncoderProtocol``)."""

    def __init__(self, bundle_dir: Path | str, threads: int | None = None, runtime: str = "onnxruntime"):
        self.encoder = Encoder(bundle_dir, threads=threads, runtime=runtime)
        self.mteb_model_meta = model_meta(self.encoder)

    def prompt(self, prompt_type: PromptType | None) -> str:
        manifest = self.encoder.manifest
        return manifest.passage_prefix if prompt_type == PromptType.document else manifest.query_prefix

    def encode(self, inputs: DataLoader, *, task_metadata: TaskMetadata, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, batch_size: int = 32, **kwargs: Any) -> np.ndarray:
        """The texts of ``inputs`` (MTEB's batches of {"text": [...]}) -> [N, dimension] float32."""
        if kwargs.get("precision") not in (None, "float32"):
            raise HbtError(f"precision {kwargs['precision']!r}: a bundle gives float32 vectors; leave precision unset")
        texts = [text for batch in inputs for text in batch["text"]]
        return self.encoder.encode(texts, batch_size, self.prompt(prompt_type))


def model_meta(encoder: Encoder) -> ModelMeta:
    """What MTEB records beside the results, read from the bundle's manifest."""
    manifest = encoder.manifest
    # Bundles are normalized for cosine, or left as they are for dot (hbt.sources reads it so).
    similarity = ScoringFunction.COSINE if manifest.normalize else ScoringFunction.DOT_PRODUCT
    return ModelMeta(
        loader=load_bundle_encoder,
        loader_kwargs={"bundle_dir": str(encoder.bundle_dir.resolve()), "runtime": encoder.runtime},
        name=f"hbt/{encoder.bundle_dir.resolve().name}",
        revision=manifest.fingerprint.removeprefix(FINGERPRINT_SCHEME),
        release_date=None, languages=None, n_parameters=None, memory_usage_mb=None,
        max_tokens=manifest.max_length, embed_dim=manifest.dimension, license=None, open_weights=None,
        public_training_code=None, public_training_data=None, training_datasets=None,
        framework=["ONNX" if encoder.runtime == "onnxruntime" else "OpenVINO"],
        similarity_fn_name=similarity, use_instructions=bool(manifest.query_prefix or manifest.passage_prefix),
        adapted_from=manifest.source,
        # OpenVINO's int8 vectors differ slightly from onnxruntime's: its results go to their own cache folder.
        experiment_kwargs={"runtime": encoder.runtime} if encoder.runtime != "onnxruntime" else None,
    )


def load_bundle_encoder(model_name: str, revision: str | None, *, bundle_dir: str, runtime: str = "onnxruntime",
                        device: str | None = None, **kwargs: Any) -> BundleEncoder:
    """``ModelMeta.load_model``'s loader: the bundle again, refused if it changed since the meta was made."""
    if device not in (None, "cpu"):
        raise HbtError(f"device {device!r}: hbt runs bundles on the CPU; leave device unset")
    encoder = BundleEncoder(bundle_dir, runtime=runtime, **kwargs)
    if revision is not None and encoder.mteb_model_meta.revision != revision:
        raise BundleError(f"{bundle_dir}: its fingerprint is no longer {revision} ({model_name}'s revision); "
                          "the bundle changed since, so evaluate BundleEncoder(bundle_dir) afresh")
    return encoder
