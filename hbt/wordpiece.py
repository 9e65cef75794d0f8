"""WordPiece tokenization in pure Python: BERT's basic tokenization, then greedy longest-match-first over vocab.txt.

It reproduces transformers' slow ``BertTokenizer`` token for token, so BERT-family
encoders (LaBSE, multilingual MiniLM with a WordPiece vocabulary) run without Rust,
torch or transformers:

1. lower-case character by character (if the model does); drop NUL, U+FFFD and control
   characters; every whitespace becomes a space;
2. put spaces around CJK ideographs (``split_chinese``), then NFC-normalize;
3. split on whitespace; lower-case each word again and/or strip its accents (NFD, drop Mn)
   per the model's config; split every punctuation character off as its own word;
4. each word: the longest vocabulary entry from its start, then the longest ``##``
   continuation from where that ended, and so on; a word with an unmatched remainder
   (or over 100 characters) is one unknown token.

One deliberate difference: special-token strings inside a text (``[SEP]``) are
tokenized as text, where ``BertTokenizer`` turns them into the special token, so user
text cannot inject separators.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

MAX_WORD_CHARS = 100  # BertTokenizer's max_input_chars_per_word


def load_vocab(path: Path | str) -> dict[str, int]:
    """Token -> id, one token a line, as transformers reads vocab.txt (a repeated token keeps its last line)."""
    with open(path, encoding="utf-8") as f:
        return {line.rstrip("\n"): index for index, line in enumerate(f.readlines())}


def is_chinese_char(code: int) -> bool:
    """The CJK ideograph blocks BERT splits per character (not Hangul, Hiragana or Katakana)."""
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF
            or 0x2A700 <= code <= 0x2B73F or 0x2B740 <= code <= 0x2B81F or 0x2B820 <= code <= 0x2CEAF
            or 0xF900 <= code <= 0xFAFF or 0x2F800 <= code <= 0x2FA1F)


def is_punctuation(char: str) -> bool:
    """Unicode punctuation, and every ASCII character that is neither a letter, a digit nor a space."""
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


class _CleanTable(dict):
    """A ``str.translate`` table built on demand: each code point -> what lower-casing, cleaning and CJK
    spacing make of it.

    transformers lower-cases a text one character at a time before basic tokenization,
    so a final capital sigma becomes σ, not the ς that ``str.lower`` gives a whole word.
    """

    def __init__(self, lowercase: bool, split_chinese: bool):
        super().__init__()
        self.lowercase, self.split_chinese = lowercase, split_chinese

    def __missing__(self, code: int) -> str:
        char = chr(code)
        out = "".join(map(self._clean, char.lower() if self.lowercase else char))
        self[code] = out
        return out

    def _clean(self, char: str) -> str:
        category = unicodedata.category(char)
        if char in " \t\n\r" or category == "Zs":
            return " "
        if char == "\0" or char == "\ufffd" or category.startswith("C"):
            return ""
        if self.split_chinese and is_chinese_char(ord(char)):
            return f" {char} "
        return char


def strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


def split_punctuation(word: str) -> list[str]:
    """'a,b!' -> ['a', ',', 'b', '!']: each punctuation character becomes a word of its own."""
    out, current = [], []
    for char in word:
        if is_punctuation(char):
            if current:
                out.append("".join(current))
                current = []
            out.append(char)
        else:
            current.append(char)
    if current:
        out.append("".join(current))
    return out


class WordPiece:
    """Text -> vocabulary ids (no special tokens added), equal to ``BertTokenizer``'s."""

    def __init__(self, vocab_file: Path | str, lowercase: bool, strip_accents: bool, split_chinese: bool = True,
                 unk_token: str = "[UNK]"):
        self.vocab = load_vocab(vocab_file)
        self.lowercase, self.strip_accents = lowercase, strip_accents
        self.unk_id = self.vocab[unk_token]
        self._clean = _CleanTable(lowercase, split_chinese)
        # A piece longer than the longest entry cannot match: the search starts there.
        self._longest = max(len(token) for token in self.vocab)
        self._word_ids: dict[str, list[int]] = {}  # words repeat (Zipf): cache their pieces

    def basic_tokenize(self, text: str) -> list[str]:
        """Steps 1-3: words and punctuation, lower-cased and accent-stripped as configured."""
        text = unicodedata.normalize("NFC", text.translate(self._clean))
        words = []
        for word in text.split():
            if self.lowercase:
                word = word.lower()
            if self.strip_accents:
                word = strip_accents(word)
            words.extend(split_punctuation(word))
        return " ".join(words).split()  # stripping accents can leave a word empty

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in self.basic_tokenize(text):
            pieces = self._word_ids.get(word)
            if pieces is None:
                pieces = self._wordpiece(word)
                if len(self._word_ids) < 1 << 16:
                    self._word_ids[word] = pieces
            ids.extend(pieces)
        return ids

    def _wordpiece(self, word: str) -> list[int]:
        """Step 4: greedy longest-match-first; [unk] for the whole word when a remainder matches nothing."""
        if len(word) > MAX_WORD_CHARS:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            prefix = "##" if start else ""
            for end in range(min(len(word), start + self._longest - len(prefix)), start, -1):
                piece = self.vocab.get(prefix + word[start:end])
                if piece is not None:
                    ids.append(piece)
                    start = end
                    break
            else:
                return [self.unk_id]
        return ids
