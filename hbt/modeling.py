"""The PyTorch dual encoder: one shared backbone, mean pooling, L2 normalization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hbt.encoder import pad_batch
from hbt.errors import SourceError
from hbt.sources import Source
from hbt.tokenizer import Tokenizer


def load_backbone(model_dir: Path) -> torch.nn.Module:
    """A transformers encoder without a pooler (we pool ourselves)."""
    from transformers import AutoModel

    try:
        try:
            return AutoModel.from_pretrained(model_dir, add_pooling_layer=False)
        except TypeError:  # architectures without a pooler do not take the argument
            return AutoModel.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise SourceError(f"{model_dir}: transformers cannot load this model ({str(e).splitlines()[0]})") from e


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, H], [B, T] -> [B, H]: the average of the unmasked token vectors."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class DualEncoder(torch.nn.Module):
    """Queries and passages share one backbone; embeddings are unit vectors."""

    def __init__(self, source: Source, max_length: int = 512):
        super().__init__()
        self.source = source
        self.backbone = load_backbone(source.model_dir)
        self.tokenizer = Tokenizer(source.tokenizer_file)
        self.max_length = min(max_length, self.backbone.config.max_position_embeddings)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(mean_pool(hidden, attention_mask), dim=-1)  # [B, H]

    def batch(self, texts: list[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize and pad: input ids and attention mask on the model's device."""
        ids, _ = self.tokenizer.encode(texts, max_length or self.max_length)
        input_ids, mask = pad_batch(ids, self.tokenizer.spec.pad_id)
        device = next(self.parameters()).device
        return torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device)

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Embed texts as they are (prefixes already applied), in input order: [N, H] float32."""
        self.eval()
        lengths = [len(t) for t in texts]
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), self.backbone.config.hidden_size), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chosen = order[start : start + batch_size]
            out[chosen] = self(*self.batch([texts[i] for i in chosen])).float().cpu().numpy()
        return out
