"""The PyTorch dual encoder: one shared backbone and the source's head (pooling, dense layers, normalization).

The head follows the source's ``Layout`` exactly as sentence-transformers runs it;
``hbt.pooling`` is the same head in numpy for the torch-free runtime.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hbt.encoder import pad_batch
from hbt.errors import SourceError
from hbt.sources import ST_CONFIG, ST_MODULES, ST_TRANSFORMER_CONFIG, DenseLayer, Source
from hbt.tokenizer import Tokenizer

# The tokenizer's files besides its vocabulary, which transformers and sentence-transformers read.
TOKENIZER_CONFIGS = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")
HF_TOKENIZER_CLASSES = {"sentencepiece": "XLMRobertaTokenizer", "wordpiece": "BertTokenizer"}  # transformers' slow ones
# Position ids of these architectures start after the padding id, so that many positions are never used.
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert")
ACTIVATIONS = {"identity": torch.nn.Identity, "tanh": torch.nn.Tanh, "gelu": torch.nn.GELU, "relu": torch.nn.ReLU,
               "sigmoid": torch.nn.Sigmoid}


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


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """[B, T, H], [B, T] -> [B, H] by ``mode``, as ``hbt.pooling.pool`` and sentence-transformers' Pooling."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if mode == "cls":  # the first pooled position
        return hidden[rows, mask.to(torch.int32).argmax(dim=1)]
    if mode == "mean":
        return mean_pool(hidden, mask)
    if mode == "max":
        return hidden.masked_fill(mask.unsqueeze(-1) == 0, float("-inf")).max(dim=1).values
    if mode == "lasttoken":  # the last pooled position; zeros for a row with none
        last = mask.shape[1] - 1 - mask.to(torch.int32).flip(1).argmax(dim=1)  # [B]
        return hidden[rows, last] * mask[rows, last].unsqueeze(-1).to(hidden.dtype)
    raise ValueError(f"pooling {mode!r} is not one hbt runs")


def load_dense(layer: DenseLayer) -> torch.nn.Sequential:
    """sentence-transformers' Dense as Linear + activation, with its weights (linear.weight, linear.bias)."""
    if layer.weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(layer.weights)
    else:  # a pickle the user allowed; tensors only
        state = torch.load(layer.weights, map_location="cpu", weights_only=True)
    linear = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
    try:
        linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    except RuntimeError as e:
        raise SourceError(f"{layer.weights}: not the weights of a {layer.in_features}->{layer.out_features} "
                          f"Dense layer ({str(e).splitlines()[0]})") from e
    return torch.nn.Sequential(linear, ACTIVATIONS[layer.activation]())


class DualEncoder(torch.nn.Module):
    """Queries and passages share one backbone and head; embeddings are unit vectors when the layout says so."""

    def __init__(self, source: Source, max_length: int = 512):
        super().__init__()
        self.source = source
        self.layout = source.layout
        self.backbone = load_backbone(source.model_dir)
        self.dense = torch.nn.ModuleList(load_dense(layer) for layer in source.layout.dense)
        self.tokenizer = Tokenizer(source.tokenizer_file, source.tokenizer)
        config = self.backbone.config
        positions = config.max_position_embeddings
        if config.model_type in OFFSET_POSITIONS:
            positions -= config.pad_token_id + 1
        self.max_length = min(max_length, positions, self.layout.max_seq_length or positions)

    @property
    def dimension(self) -> int:
        return self.layout.dimension or self.backbone.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                pool_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T] ids and mask -> [B, dimension]; ``pool_mask`` (default: the attention mask) picks the pooled tokens."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
        vectors = pool(hidden, attention_mask if pool_mask is None else pool_mask, self.layout.pooling)
        for layer in self.dense:
            vectors = layer(vectors)
        return F.normalize(vectors, dim=-1) if self.layout.normalize else vectors

    def batch(self, texts: list[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize and pad: input ids and attention mask on the model's device."""
        ids, _ = self.tokenizer.encode(texts, max_length or self.max_length)
        input_ids, mask = pad_batch(ids, self.tokenizer.spec.pad_id)
        device = next(self.parameters()).device
        return torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device)

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 32, prompt: str = "") -> np.ndarray:
        """Embed ``prompt`` + each text, in input order: [N, dimension] float32.

        A prompt given here is left out of pooling when the layout says so
        (``include_prompt: false``); one already inside the texts never is.
        """
        self.eval()
        texts = [prompt + t for t in texts]
        skip = 0 if self.layout.include_prompt else self.tokenizer.prompt_length(prompt)
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            chosen = order[start : start + batch_size]
            input_ids, mask = self.batch([texts[i] for i in chosen])
            pool_mask = mask.clone()
            pool_mask[:, :skip] = 0
            out[chosen] = self(input_ids, mask, pool_mask).float().cpu().numpy()
        return out

    def embed_queries(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        return self.embed(texts, batch_size, self.layout.query_prefix)

    def embed_passages(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        return self.embed(texts, batch_size, self.layout.passage_prefix)

    def save(self, directory: Path) -> None:
        """Write the model as a sentence-transformers directory: backbone, tokenizer, and the head's modules.

        hbt reads it back with the same layout (``resolve_source``), and so does
        ``SentenceTransformer(directory)``. Legacy module names and pooling keys keep it
        readable by older sentence-transformers too.
        """
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(directory)
        for file in (self.source.tokenizer_file, *(self.source.model_dir / f for f in TOKENIZER_CONFIGS)):
            if file.is_file():
                shutil.copyfile(file, directory / file.name)
        if not (directory / "tokenizer_config.json").is_file():
            # sentence-transformers (hence hbt-export's check against its encode()) finds the
            # tokenizer through this file; a source that had none would give an unreadable checkpoint.
            write_json(directory / "tokenizer_config.json", {
                "tokenizer_class": HF_TOKENIZER_CLASSES[self.tokenizer.spec.kind], "model_max_length": self.max_length})
        layout = self.layout
        modules = [("Transformer", "")]
        write_json(directory / ST_TRANSFORMER_CONFIG, {"max_seq_length": self.max_length, "do_lower_case": False})
        modes = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens",
                 "lasttoken": "pooling_mode_lasttoken"}
        modules.append(("Pooling", "1_Pooling"))
        write_json(directory / "1_Pooling" / "config.json", {
            "word_embedding_dimension": self.backbone.config.hidden_size,
            **{key: layout.pooling == mode for mode, key in modes.items()}, "include_prompt": layout.include_prompt})
        for spec, layer in zip(layout.dense, self.dense):
            path = f"{len(modules)}_Dense"
            modules.append(("Dense", path))
            activation = type(layer[1])  # torch.nn.modules.activation.Tanh, as sentence-transformers names it
            write_json(directory / path / "config.json", {
                "in_features": spec.in_features, "out_features": spec.out_features, "bias": spec.bias,
                "activation_function": f"{activation.__module__}.{activation.__name__}"})
            save_file({f"linear.{k}": v.detach().cpu().contiguous() for k, v in layer[0].state_dict().items()},
                      directory / path / "model.safetensors")
        if layout.normalize:
            modules.append(("Normalize", f"{len(modules)}_Normalize"))
            (directory / modules[-1][1]).mkdir(exist_ok=True)
        write_json(directory / ST_MODULES, [{"idx": i, "name": str(i), "path": path,
                                              "type": f"sentence_transformers.models.{kind}"}
                                             for i, (kind, path) in enumerate(modules)])
        write_json(directory / ST_CONFIG, {
            "prompts": {"query": layout.query_prefix, "document": layout.passage_prefix}, "default_prompt_name": None,
            "similarity_fn_name": "cosine" if layout.normalize else "dot"})


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False), encoding="utf-8")
