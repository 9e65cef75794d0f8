"""Sources: the sentence-transformers layout read from its own files, held to sentence-transformers' encode()."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from hbt.errors import SourceError
from hbt.sources import ENCODER_INFO, Layout, hub_files, resolve_source, st_prefixes
from tests.conftest import MULTILINGUAL
from tests.st_models import FAMILIES, st_model_dirs  # noqa: F401 (a fixture)

# Multilingual texts, one longer than the families' max_seq_length (48), one cased and accented.
TEXTS = MULTILINGUAL + ["NAÏVE Café, résumé!", "東京タワーは1958年に完成した。", "ok", "word " * 80]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_dual_encoder_embeds_as_sentence_transformers(st_model_dirs, family):
    """Queries and passages, with the layout's prompts, against encode_query/encode_document: cosine >= .9999."""
    from sentence_transformers import SentenceTransformer

    from hbt.modeling import DualEncoder

    directory = st_model_dirs[family]
    ours = DualEncoder(resolve_source(str(directory)))
    theirs = SentenceTransformer(str(directory), device="cpu")
    for mine, reference in ((ours.embed_queries(TEXTS), theirs.encode_query(TEXTS)),
                            (ours.embed_passages(TEXTS), theirs.encode_document(TEXTS))):
        assert mine.shape == reference.shape
        assert cosines(mine, reference).min() >= 0.9999
    if FAMILIES[family].normalize:  # a Normalize module: the same unit vectors
        np.testing.assert_allclose(mine, reference, atol=1e-5)


def test_layouts_come_from_the_files(st_model_dirs):
    labse, bge, e5, instructor = (resolve_source(str(st_model_dirs[f])) for f in ("labse", "bge-m3", "e5", "instructor"))
    assert (labse.layout.pooling, labse.layout.normalize, labse.layout.query_prefix) == ("cls", True, "")
    assert [(d.out_features, d.activation) for d in labse.layout.dense] == [(24, "tanh")]
    assert (labse.tokenizer.kind, labse.tokenizer.lowercase) == ("wordpiece", False)
    assert (bge.layout.pooling, bge.layout.dense, bge.tokenizer.kind) == ("cls", (), "sentencepiece")
    assert (bge.layout.query_prefix, bge.layout.passage_prefix) == ("", "")
    assert (e5.layout.pooling, e5.layout.normalize) == ("mean", True)  # no Normalize module, cosine similarity
    assert (e5.layout.query_prefix, e5.layout.passage_prefix) == ("query: ", "passage: ")
    assert (instructor.layout.include_prompt, instructor.layout.normalize, instructor.layout.dimension) == (False, False, 16)
    assert [d.activation for d in instructor.layout.dense] == ["gelu", "identity"]
    assert instructor.tokenizer.lowercase and instructor.tokenizer.strip_accents
    assert {s.layout.max_seq_length for s in (labse, bge, e5, instructor)} == {48}


def test_a_plain_directory_keeps_mean_pooling_and_e5_prefixes_and_says_so(tiny_model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="hbt.sources"):
        source = resolve_source(str(tiny_model_dir))
    assert source.layout == Layout() and (source.query_prefix, source.passage_prefix) == ("query: ", "passage: ")
    assert source.tokenizer.kind == "sentencepiece" and source.tokenizer.to_dict()["file"] == "sentencepiece.bpe.model"
    lines = [r.getMessage() for r in caplog.records if r.name == "hbt.sources"]
    assert len(lines) == 1 and "mean pooling" in lines[0] and "'query: '" in lines[0]


def test_hbt_encoder_json_gives_the_prefixes(tiny_model_dir, tmp_path):
    directory = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (directory / ENCODER_INFO).write_text(json.dumps({"pooling": "mean", "query_prefix": "", "passage_prefix": "p: "}))
    source = resolve_source(str(directory))
    assert (source.layout.pooling, source.query_prefix, source.passage_prefix) == ("mean", "", "p: ")


def edited(st_model_dirs, tmp_path, family: str, path: str, edit) -> str:
    """A copy of a family's directory with the JSON file at ``path`` changed by ``edit``."""
    directory = shutil.copytree(st_model_dirs[family], tmp_path / family)
    file = directory / path
    file.write_text(json.dumps(edit(json.loads(file.read_text()))))
    return str(directory)


def refused(source: str, *fragments: str) -> None:
    with pytest.raises(SourceError) as caught:
        resolve_source(source)
    message = str(caught.value)
    assert "\n" not in message and all(f in message for f in fragments), message


def test_unsupported_modules_are_refused_naming_them(st_model_dirs, tmp_path):
    layer_norm = {"idx": 4, "name": "4", "path": "4_LayerNorm", "type": "sentence_transformers.models.LayerNorm"}
    refused(edited(st_model_dirs, tmp_path, "labse", "modules.json", lambda m: m + [layer_norm]),
            "'sentence_transformers.models.LayerNorm'", "modules.json")


def test_custom_code_modules_are_refused(st_model_dirs, tmp_path):
    def custom(modules):
        modules[1]["type"] = "custom_st.Pooling"  # a module shipped as code in the repository
        return modules

    refused(edited(st_model_dirs, tmp_path, "bge-m3", "modules.json", custom), "'custom_st.Pooling'")


@pytest.mark.parametrize("config,fragment", [
    ({"embedding_dimension": 32, "pooling_mode": "weightedmean"}, "weightedmean"),
    ({"embedding_dimension": 32, "pooling_mode": ["cls", "mean"]}, "cls+mean"),
    ({"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_max_tokens": True}, "cls+max"),
])
def test_unsupported_pooling_is_refused(st_model_dirs, tmp_path, config, fragment):
    refused(edited(st_model_dirs, tmp_path, "bge-m3", "1_Pooling/config.json", lambda _: config), fragment)


def test_legacy_pooling_and_module_names_are_read(st_model_dirs, tmp_path):
    """Models saved by sentence-transformers 2.x: pooling_mode_* booleans, sentence_transformers.models.* types."""
    directory = edited(st_model_dirs, tmp_path, "bge-m3", "1_Pooling/config.json",
                       lambda _: {"word_embedding_dimension": 32, "pooling_mode_cls_token": False,
                                  "pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": False})
    modules = json.loads((tmp_path / "bge-m3" / "modules.json").read_text())
    for module, kind in zip(modules, ("Transformer", "Pooling", "Normalize")):
        module["type"] = f"sentence_transformers.models.{kind}"
    (tmp_path / "bge-m3" / "modules.json").write_text(json.dumps(modules))
    assert resolve_source(directory).layout.pooling == "max"


def test_untrusted_activations_and_other_similarities_are_refused(st_model_dirs, tmp_path):
    refused(edited(st_model_dirs, tmp_path / "a", "labse", "2_Dense/config.json",
                   lambda c: c | {"activation_function": "my_package.Swish"}), "'my_package.Swish'")
    refused(edited(st_model_dirs, tmp_path / "b", "e5", "config_sentence_transformers.json",
                   lambda c: c | {"similarity_fn_name": "euclidean"}), "'euclidean'")
    refused(edited(st_model_dirs, tmp_path / "c", "e5", "sentence_bert_config.json",
                   lambda c: c | {"do_lower_case": True}), "do_lower_case")


def test_pickled_weights_are_refused_unless_allowed(tiny_model_dir, tmp_path):
    """A directory with only pytorch_model.bin: refused in one line, read with allow_pickle, same vectors."""
    import torch
    from safetensors.torch import load_file

    from hbt.modeling import DualEncoder

    directory = shutil.copytree(tiny_model_dir, tmp_path / "pickled")
    torch.save(load_file(directory / "model.safetensors"), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    refused(str(directory), "pytorch_model.bin", "pickle", "--allow-pickle")
    pickled = DualEncoder(resolve_source(str(directory), allow_pickle=True)).embed(TEXTS[:4])
    safe = DualEncoder(resolve_source(str(tiny_model_dir))).embed(TEXTS[:4])
    np.testing.assert_allclose(pickled, safe, atol=1e-6)


def test_pickled_dense_weights_are_refused_too(st_model_dirs, tmp_path):
    import torch
    from safetensors.torch import load_file

    directory = shutil.copytree(st_model_dirs["labse"], tmp_path / "labse")
    dense = directory / "2_Dense"
    torch.save(load_file(dense / "model.safetensors"), dense / "pytorch_model.bin")
    (dense / "model.safetensors").unlink()
    refused(str(directory), "2_Dense", "--allow-pickle")
    assert resolve_source(str(directory), allow_pickle=True).layout.dense[0].weights.name == "pytorch_model.bin"


def test_a_vocab_without_its_special_tokens_is_refused(st_model_dirs, tmp_path):
    directory = shutil.copytree(st_model_dirs["labse"], tmp_path / "labse")
    vocab = directory / "vocab.txt"
    vocab.write_text(vocab.read_text(encoding="utf-8").replace("[CLS]\n", "[XLS]\n"), encoding="utf-8")
    refused(str(directory), "vocab.txt", "'[CLS]'")


def test_hub_files_prefer_safetensors_and_fetch_pickles_only_if_allowed():
    repo = ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5", "vocab.txt", "modules.json",
            "1_Pooling/config.json", "2_Dense/config.json", "2_Dense/pytorch_model.bin", "onnx/model.onnx",
            "README.md", "config_sentence_transformers.json", "sentence_bert_config.json"]
    expected = ["config.json", "model.safetensors", "vocab.txt", "modules.json", "1_Pooling/config.json",
                "2_Dense/config.json", "2_Dense/pytorch_model.bin", "config_sentence_transformers.json",
                "sentence_bert_config.json"]
    assert hub_files("o/m", repo, allow_pickle=True) == expected
    with pytest.raises(SourceError, match="2_Dense/pytorch_model.bin is a pickle.*--allow-pickle"):
        hub_files("o/m", repo, allow_pickle=False)
    assert "2_Dense/pytorch_model.bin" not in hub_files("o/m", repo + ["2_Dense/model.safetensors"], allow_pickle=True)


def test_a_hub_source_is_pinned_to_its_revision_and_refused_without_safetensors(tiny_model_dir, monkeypatch):
    """No network: the Hub client is replaced by one that records what it was asked."""
    import huggingface_hub

    asked = []
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files",
                        lambda self, repo_id, revision=None: asked.append(revision) or sorted(
                            p.name for p in tiny_model_dir.iterdir()))
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, revision=None, allow_patterns=(): asked.append(allow_patterns) or tiny_model_dir)
    source = resolve_source("owner/model", revision="0123abc")
    assert source.model_dir == tiny_model_dir and asked[0] == "0123abc" and "model.safetensors" in asked[1]
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files",
                        lambda self, repo_id, revision=None: ["config.json", "pytorch_model.bin"])
    refused("owner/model", "owner/model: pytorch_model.bin is a pickle", "--allow-pickle")


def test_prefixes_follow_encode_query_and_encode_document():
    assert st_prefixes({"query": "q: ", "passage": "p: "}) == ("q: ", "p: ")
    assert st_prefixes({"query": None, "document": "", "corpus": "c: "}) == ("", "c: ")
    assert st_prefixes({}) == ("", "")
    with pytest.raises(SourceError, match="prompts"):
        st_prefixes({"query": 3})


@pytest.mark.parametrize("family", ["labse", "instructor"])
def test_a_saved_dual_encoder_keeps_its_layout(st_model_dirs, tmp_path, family):
    """What hbt-train writes: read back with the same head by hbt and by sentence-transformers."""
    from sentence_transformers import SentenceTransformer

    from hbt.modeling import DualEncoder

    model = DualEncoder(resolve_source(str(st_model_dirs[family])))
    model.save(tmp_path / "saved")
    source = resolve_source(str(tmp_path / "saved"))
    strip = lambda layout: (layout.pooling, layout.include_prompt, layout.normalize, layout.query_prefix,  # noqa: E731
                            layout.passage_prefix, layout.max_seq_length,
                            [(d.in_features, d.out_features, d.bias, d.activation) for d in layout.dense])
    assert strip(source.layout) == strip(model.layout) and source.tokenizer == model.source.tokenizer
    theirs = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    assert cosines(DualEncoder(source).embed_queries(TEXTS), theirs.encode_query(TEXTS)).min() >= 0.9999
    assert cosines(model.embed_queries(TEXTS), theirs.encode_query(TEXTS)).min() >= 0.9999


def test_a_saved_plain_model_keeps_mean_pooling_and_e5_prefixes(tiny_model_dir, tmp_path):
    from hbt.modeling import DualEncoder

    DualEncoder(resolve_source(str(tiny_model_dir))).save(tmp_path / "saved")
    layout = resolve_source(str(tmp_path / "saved")).layout
    assert (layout.pooling, layout.normalize, layout.query_prefix, layout.passage_prefix) == ("mean", True, "query: ",
                                                                                            "passage: ")
