"""hbt's pure-Python WordPiece equals transformers' slow BertTokenizer, token for token, on multilingual text."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hbt.wordpiece import WordPiece
from tests.conftest import MULTILINGUAL
from tests.st_models import SPECIALS, wordpiece_vocab

pytest.importorskip("transformers", reason="the reference tokenizer is transformers' BertTokenizer")

HARD_CASES = MULTILINGUAL + [
    "", "   ", "\t\n\r", "\u00a0\u3000\u2028 odd spaces \u2009between\u200b",
    "東京タワーは1958年に完成した。𠀋𪚲 (CJK extension B)",
    "서울특별시 한국어 문장입니다.", "ภาษาไทยไม่มีช่องว่างระหว่างคำ", "مرحبا بالعالم! كيف حالك؟", "שלום עולם",
    "naïve café résumé Ångström Øresund ﬁ ligature ℌ𝔢𝔩𝔩𝔬 ＡＢＣ １２３",
    "NFD: cafe\u0301 nai\u0308ve", "İstanbul ǅemal ß ΣΊΣΥΦΟΣ",
    "👩‍👩‍👧 emoji 😀🚀 flags 🇩🇪🇯🇵 and ✈️", "punctuation: (a), [b]; {c}! ¿qué? «guillemets» „Anführung“ — dash… ellipsis",
    "ascii $^`~|\\ @#%&*+=<>/ quote's don't", "control\x00chars\x07\x1f\x7f\x85and\ufffdreplacement\u200e\u202e",
    "x" * 101, "a" * 99 + "é", "unaffable antidisestablishmentarianism " * 20,
]


def reference(vocab_file, lowercase: bool, strip_accents, split_chinese: bool):
    from transformers import BertTokenizer

    return BertTokenizer(str(vocab_file), do_lower_case=lowercase, strip_accents=strip_accents,
                         tokenize_chinese_chars=split_chinese)


def theirs(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# (lowercase, strip_accents as BertTokenizer takes it, and what that resolves to)
OPTIONS = [(False, None, False), (True, None, True), (True, False, False), (False, True, True)]


@pytest.fixture(scope="module", params=["cased", "uncased"])
def vocab_file(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("wordpiece") / "vocab.txt"
    vocab = wordpiece_vocab(MULTILINGUAL + HARD_CASES, lowercase=request.param == "uncased", seed=1)
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("lowercase,strip_accents,resolved", OPTIONS)
@pytest.mark.parametrize("split_chinese", [True, False])
def test_matches_slow_bert_tokenizer(vocab_file, lowercase, strip_accents, resolved, split_chinese):
    ours = WordPiece(vocab_file, lowercase, resolved, split_chinese)
    bert = reference(vocab_file, lowercase, strip_accents, split_chinese)
    differences = [text[:40] for text in HARD_CASES if ours.encode(text) != theirs(bert, text)]
    assert differences == []
    assert any(ours.unk_id in ours.encode(t) for t in HARD_CASES)  # the set reaches [UNK] ...
    assert any(len(ours.encode(w)) > 1 for w in ours.basic_tokenize(" ".join(HARD_CASES)))  # ... and splits words


@pytest.fixture(scope="module")
def slow_tokenizers(vocab_file):
    return {options: reference(vocab_file, options[0], options[1], True) for options in OPTIONS[:2]}


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.characters(codec="utf-8"), max_size=40)
       | st.text(st.sampled_from("aé e\u0301東京タ한ก\u0e31م!?,.-'$ \t\x00\u200b😀Iİ"), max_size=40))
def test_matches_slow_bert_tokenizer_on_any_text(vocab_file, slow_tokenizers, text):
    assume(not any(special in text for special in SPECIALS))  # the documented difference, tested below
    for (lowercase, strip_accents, resolved), bert in slow_tokenizers.items():
        assert WordPiece(vocab_file, lowercase, resolved).encode(text) == theirs(bert, text)


def test_special_token_strings_stay_text(vocab_file):
    """The one documented difference: '[SEP]' inside a text is text, not a separator."""
    ours = WordPiece(vocab_file, lowercase=False, strip_accents=False)
    sep = ours.vocab["[SEP]"]
    assert sep not in ours.encode("a [SEP] b") and len(ours.encode("a [SEP] b")) > 3


def test_vocab_reads_like_transformers(tmp_path):
    """Line numbers are ids; a repeated token keeps its last line, as transformers' load_vocab does."""
    from transformers.models.bert.tokenization_bert import load_vocab as transformers_load_vocab

    from hbt.wordpiece import load_vocab

    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\nab\n##c\nab\n \n", encoding="utf-8")
    assert load_vocab(path) == dict(transformers_load_vocab(str(path)))
