"""The feed of an exported graph: only the inputs it declares (shared by the onnxruntime and OpenVINO runtimes)."""

from __future__ import annotations

import numpy as np


def model_inputs(input_ids: np.ndarray, mask: np.ndarray, names: set[str]) -> dict[str, np.ndarray]:
    """The feed for a graph with these input names. BERT graphs also take token_type_ids, all zero for XLM-R."""
    feed = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
    return {name: value for name, value in feed.items() if name in names}
