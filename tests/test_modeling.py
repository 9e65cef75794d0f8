"""The training model's own files: a checkpoint that sentence-transformers, and so hbt-export, can read."""

from __future__ import annotations

import json
import shutil

import numpy as np

from hbt.modeling import DualEncoder
from hbt.sources import resolve_source


def test_a_checkpoint_of_a_source_without_tokenizer_config_still_loads_in_sentence_transformers(tiny_model_dir, tmp_path):
    # Checkpoints resumed from an older run had no tokenizer_config.json, and hbt-export refused them.
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    (bare / "tokenizer_config.json").unlink()
    model = DualEncoder(resolve_source(str(bare)))
    model.save(tmp_path / "checkpoint")

    config = json.loads((tmp_path / "checkpoint" / "tokenizer_config.json").read_text())
    assert config == {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": model.max_length}
    from sentence_transformers import SentenceTransformer

    texts = ["ein kleiner Satz", "une petite phrase"]
    theirs = SentenceTransformer(str(tmp_path / "checkpoint"), device="cpu").encode(texts, normalize_embeddings=True)
    ours = model.embed(texts)
    assert np.min(np.sum(theirs * ours, axis=1)) > 0.9999
