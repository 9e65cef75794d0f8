"""The sentence head in numpy: pooling token vectors, a dense layer, L2 normalization (no torch).

These are what sentence-transformers' ``Pooling``, ``Dense`` and ``Normalize`` modules
compute, written for the torch-free runtime; ``hbt.modeling`` holds their torch
counterparts, and the tests hold both to sentence-transformers' own ``encode()``.
Masks are [B, T] with 1 for a token to pool; ``include_prompt: false`` is a mask
whose prompt positions are 0 (``prompt_mask``).
"""

from __future__ import annotations

import numpy as np

POOLINGS = ("cls", "mean", "max", "lasttoken")
ACTIVATIONS = ("identity", "tanh", "gelu", "relu", "sigmoid")


def prompt_mask(mask: np.ndarray, prompt_length: int) -> np.ndarray:
    """The mask without the first ``prompt_length`` positions (bos and the prompt): [B, T]."""
    pooled = mask.copy()
    pooled[:, :prompt_length] = 0
    return pooled


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Average the token vectors that the mask keeps: [B, T, H], [B, T] -> [B, H]."""
    weights = mask[:, :, None].astype(hidden.dtype)  # [B, T, 1]
    return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """[B, T, H], [B, T] -> [B, H] by ``mode``, one of ``POOLINGS``."""
    if mode == "cls":  # the first pooled position: position 0 unless the prompt is left out
        first = mask.argmax(axis=1)  # [B]
        return hidden[np.arange(len(hidden)), first]
    if mode == "mean":
        return mean_pool(hidden, mask)
    if mode == "max":
        return np.where(mask[:, :, None] > 0, hidden, -np.inf).max(axis=1).astype(hidden.dtype)
    if mode == "lasttoken":  # the last pooled position; a row with none gives zeros, as in sentence-transformers
        width = mask.shape[1]
        last = width - 1 - mask[:, ::-1].argmax(axis=1)  # [B]
        rows = np.arange(len(hidden))
        return hidden[rows, last] * mask[rows, last][:, None].astype(hidden.dtype)
    raise ValueError(f"pooling {mode!r}: choose one of {', '.join(POOLINGS)}")


def erf(x: np.ndarray) -> np.ndarray:
    """The error function to within 1.5e-7 (Abramowitz and Stegun 7.1.26); numpy has none."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


def activate(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "identity":
        return x
    if activation == "tanh":
        return np.tanh(x)
    if activation == "gelu":  # exact (erf) GELU, torch.nn.GELU's default
        return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))
    if activation == "relu":
        return np.maximum(x, 0)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    raise ValueError(f"activation {activation!r}: choose one of {', '.join(ACTIVATIONS)}")


def dense(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, activation: str) -> np.ndarray:
    """activation(x W^T + b): [B, in], [out, in], [out] -> [B, out], as torch.nn.Linear lays out W."""
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return activate(y, activation).astype(np.float32)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
