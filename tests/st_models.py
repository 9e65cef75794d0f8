"""Tiny random encoders saved in the sentence-transformers layout, one per family hbt runs (no downloads).

Each family is the layout of a real multilingual encoder at toy size, so the tests
hold hbt's reading of the layout to sentence-transformers' own ``encode()``:

- ``labse``: BERT, WordPiece (cased), CLS pooling, a tanh Dense layer, Normalize;
- ``bge-m3``: XLM-R, SentencePiece, CLS pooling, Normalize, no prompts;
- ``e5``: XLM-R, SentencePiece, mean pooling, query/passage prompts, no Normalize
  module (cosine similarity);
- ``instructor``: BERT, WordPiece (lower-cased, accents stripped), mean pooling without
  the prompt's tokens (``include_prompt: false``), a GELU and an identity Dense layer,
  dot-product similarity (vectors not normalized).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import MULTILINGUAL, write_tiny_tokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass(frozen=True)
class Family:
    backbone: str  # "bert" (WordPiece) or "xlmr" (SentencePiece)
    pooling: str
    dense: tuple[tuple[int, str], ...] = ()  # (out_features, torch activation class name) per layer
    normalize: bool = True
    prompts: dict = field(default_factory=dict)
    include_prompt: bool = True
    lowercase: bool = False  # WordPiece only
    similarity: str = "cosine"


FAMILIES = {
    "labse": Family("bert", "cls", dense=((24, "Tanh"),)),
    "bge-m3": Family("xlmr", "cls"),
    "e5": Family("xlmr", "mean", normalize=False, prompts={"query": "query: ", "document": "passage: "}),
    "instructor": Family("bert", "mean", dense=((40, "GELU"), (16, "Identity")), normalize=False,
                         prompts={"query": "Represent the question: ", "document": "Represent the passage: "},
                         include_prompt=False, lowercase=True, similarity="dot"),
}


def wordpiece_vocab(texts: list[str], lowercase: bool, seed: int = 0) -> list[str]:
    """A small vocab.txt for ``texts``: specials, every character alone and as ##continuation, and a
    seeded share of the words, their prefixes and their ##suffixes, so that words split several ways.
    Emoji stay out, to exercise [UNK]."""
    from transformers.models.bert.tokenization_bert import BasicTokenizer

    rng = random.Random(seed)
    words = BasicTokenizer(do_lower_case=lowercase).tokenize(" ".join(texts))
    pieces = set()
    for word in words:
        pieces.update(c for c in word if ord(c) < 0x1F000)
        pieces.update("##" + c for c in word if ord(c) < 0x1F000)
        if len(word) > 1 and rng.random() < 0.4:
            pieces.add(word)
        if len(word) > 3:
            cut = rng.randrange(2, len(word) - 1)
            pieces.update((word[:cut], "##" + word[cut:]))
    return SPECIALS + sorted(pieces)


def build(directory: Path, name: str, hidden: int = 32, seed: int = 0) -> Path:
    """Write the family ``name`` as a sentence-transformers directory: the Hugging Face model, its tokenizer,
    modules.json and the module folders, via sentence-transformers' own ``save``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    family = FAMILIES[name]
    torch.manual_seed(seed)
    hf = directory / "hf"
    hf.mkdir(parents=True)
    _save_backbone(hf, family, hidden)
    modules = [Transformer(str(hf), max_seq_length=48)]
    modules.append(Pooling(hidden, pooling_mode=family.pooling, include_prompt=family.include_prompt))
    width = hidden
    for out, activation in family.dense:
        modules.append(Dense(width, out, activation_function=getattr(torch.nn, activation)()))
        width = out
    if family.normalize:
        modules.append(Normalize())
    model = SentenceTransformer(modules=modules, prompts=family.prompts, similarity_fn_name=family.similarity,
                                device="cpu")
    out = directory / name
    model.save(str(out))
    return out


def _save_backbone(directory: Path, family: Family, hidden: int) -> None:
    config = dict(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, intermediate_size=2 * hidden)
    if family.backbone == "bert":
        from transformers import BertConfig, BertModel, BertTokenizerFast

        vocab = wordpiece_vocab(MULTILINGUAL + [p for p in family.prompts.values()], family.lowercase)
        (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        BertModel(BertConfig(vocab_size=len(vocab), max_position_embeddings=64, pad_token_id=0, **config)
                  ).save_pretrained(directory)
        BertTokenizerFast(str(directory / "vocab.txt"), do_lower_case=family.lowercase).save_pretrained(directory)
    else:
        import sentencepiece as spm
        from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizer

        write_tiny_tokenizer(directory / "sentencepiece.bpe.model", MULTILINGUAL)
        pieces = spm.SentencePieceProcessor(model_file=str(directory / "sentencepiece.bpe.model")).get_piece_size()
        XLMRobertaModel(XLMRobertaConfig(vocab_size=pieces + 2, max_position_embeddings=66, pad_token_id=1, **config)
                        ).save_pretrained(directory)
        XLMRobertaTokenizer(str(directory / "sentencepiece.bpe.model")).save_pretrained(directory)


@pytest.fixture(scope="session")
def st_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Every family, built once per test session (~3 s each)."""
    pytest.importorskip("sentence_transformers", reason="pip install 'hbt[bench]' builds the tiny families")
    root = tmp_path_factory.mktemp("st-models")
    return {name: build(root / name, name) for name in FAMILIES}
