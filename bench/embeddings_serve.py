"""Load on hbt-serve's POST /v1/embeddings: token-budget batching against one request at a time, side by side.

``python -m hbt.bench.embeddings_serve --bundle B`` starts ``hbt-serve --embeddings-only``
once per mode, each in its own process on 127.0.0.1, and sends real sentences
(XQuAD-R/MLQA-R when the shared data is there, the demo corpus otherwise) from
closed-loop clients, one text per request, as an application embedding its documents
one at a time would. The modes take turns, a round each in every repetition, so that
other tenants' load falls on both alike; the ratio is computed per round.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import click
import numpy as np

from hbt.bench.encode_speed import sample_sentences
from hbt.bench.latency import workload
from hbt.bench.reports import environment, write_report
from hbt.bench.serve import Load, cpu_seconds, get, server
from hbt.encoder import Encoder
from hbt.serve.app import ServeConfig
from hbt.serve.embeddings import padded_chunks

# hbt-serve's options per mode, beside its defaults (--workers 2, one encoder thread each on 2 cores).
MODES = {
    "token-budget": {},  # --max-batch-tokens 8192: a batch takes waiting requests up to 8192 padded tokens
    "one-at-a-time": {"max-batch-tokens": 1},  # every batch is a single request
    "token-budget-1x2": {"workers": 1, "threads": 2},
}


def embeddings_load(port: int, bodies: list[bytes]) -> Load:
    """Closed-loop clients of POST /v1/embeddings."""
    return Load(port, bodies, "/v1/embeddings", lambda payload: b'"embedding"' in payload)


def histogram(port: int, name: str) -> tuple[float, float]:
    """(sum, count) of one of the server's histograms."""
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(get(port, "/metrics").decode())
    samples = {s.name: s.value for f in families if f.name == name for s in f.samples}
    return samples[f"{name}_sum"], samples[f"{name}_count"]


def measure(port: int, pid: int, bodies: list[bytes], concurrency: int, seconds: float) -> dict:
    """One round: throughput, latency, mean batch tokens and the server's CPU per request."""
    tokens, cpu = histogram(port, "hbt_embedding_batch_tokens"), cpu_seconds(pid)
    row = asyncio.run(embeddings_load(port, bodies).run(concurrency, seconds))
    after = histogram(port, "hbt_embedding_batch_tokens")
    row["mean_batch_tokens"] = (after[0] - tokens[0]) / max(after[1] - tokens[1], 1)
    row["server_cpu_ms_per_request"] = (cpu_seconds(pid) - cpu) * 1000 / max(row["requests"], 1)
    row["load_average"] = os.getloadavg()[0]
    return row


def encoder_alone(encoder: Encoder, sentences: list[str], group: int, rounds: int) -> dict:
    """Texts/s of the encoder alone (one thread, no server): one text per call, against ``group`` texts at a
    time cut as the server cuts a batch (sorted by length, within the token budget); the ceiling of any gain."""
    budget = ServeConfig().max_batch_tokens
    lengths = [len(ids) for ids in encoder.tokenizer.encode(
        [encoder.manifest.passage_prefix + t for t in sentences], encoder.manifest.max_length)[0]]

    def batched():
        for start in range(0, len(sentences), group):
            order = sorted(range(start, min(start + group, len(sentences))), key=lambda i: lengths[i])
            for a, b in padded_chunks([lengths[i] for i in order], budget):
                encoder.encode_passages([sentences[i] for i in order[a:b]], batch_size=b - a)

    def alone():
        for text in sentences:
            encoder.encode_passages([text])

    rates = {"one-at-a-time": [], "batched": []}
    for _ in range(rounds):
        for name, run in (("one-at-a-time", alone), ("batched", batched)):
            start = time.perf_counter()
            run()
            rates[name].append(len(sentences) / (time.perf_counter() - start))
    return {"group": group, "texts": len(sentences), "texts_per_s": rates,
            "ratios": [b / a for a, b in zip(rates["one-at-a-time"], rates["batched"])]}


def markdown(results: dict) -> str:
    env, w = results["environment"], results["workload"]
    base = results["baseline"]
    lines = ["# hbt-serve: POST /v1/embeddings under load", "",
             f"Measured on {env['cpu']} ({env['cores']} cores, shared by the server, the clients and other "
             f"tenants), onnxruntime {env['onnxruntime']}, bundle {env['bundle']['source']} "
             f"({env['bundle']['quantization']}).", "",
             f"{w['texts']} real sentences ({w['source']}), one per request, input_type passage, base64; "
             f"{w['tokens_mean']:.1f} tokens per text on average (p90 {w['tokens_p90']:.0f}, max "
             f"{w['tokens_max']}); closed-loop clients on 127.0.0.1; {w['rounds']} rounds of {w['seconds']:.0f} s per "
             f"mode and concurrency, the modes taking turns, after {w['warmup']:.0f} s of warm-up each.", "",
             "| mode | concurrency | requests/s (median round) | × one-at-a-time (per round) | p50 ms | p99 ms "
             "| mean batch tokens | server CPU ms/request | failed | load |", "|---|---|---|---|---|---|---|---|---|---|"]
    for concurrency, modes in results["points"].items():
        for mode, rounds in modes.items():
            baseline = modes[base]
            ratios = [row["qps"] / b["qps"] for row, b in zip(rounds, baseline)]
            middle = sorted(rounds, key=lambda row: row["qps"])[len(rounds) // 2]  # the median round
            lines.append(f"| {mode} | {concurrency} | {middle['qps']:.1f} | {statistics.median(ratios):.2f} "
                         f"({', '.join(f'{r:.2f}' for r in ratios)}) | {middle['p50_ms']:.1f} | "
                         f"{middle['p99_ms']:.1f} | {middle['mean_batch_tokens']:.0f} | "
                         f"{middle['server_cpu_ms_per_request']:.1f} | {sum(r['failed'] for r in rounds)} | "
                         f"{middle['load_average']:.1f} |")
    lines += ["", "Modes (hbt-serve --embeddings-only's options beside its defaults): " + "; ".join(
        f"{mode}: " + (" ".join(f"--{name} {value}" for name, value in MODES[mode].items()) or "the defaults")
        for mode in results["modes"]) + ".", "",
              "The ratio is the median of the per-round ratios (each round's pair ran back to back), the "
              "rounds' own in brackets. Server CPU is the CPU time the server process used per request "
              "(user + system, all its threads): less sensitive to other tenants than requests/s. Load is the "
              "1-minute load average after the round.", ""]
    alone = results.get("encoder_alone")
    if alone:
        rates = alone["texts_per_s"]
        lines += [f"**The encoder alone** (one thread, no server, the same {alone['texts']} texts, rounds taking "
                  f"turns): one text per call {statistics.median(rates['one-at-a-time']):.1f} texts/s; "
                  f"{alone['group']} at a time, cut as the server cuts a batch, "
                  f"{statistics.median(rates['batched']):.1f} texts/s: "
                  f"{statistics.median(alone['ratios']):.2f} × (rounds: "
                  f"{', '.join(f'{r:.2f}' for r in alone['ratios'])}). No way of batching requests can gain "
                  "more than this over one at a time.", ""]
    lines += verdict(results)
    return "\n".join(lines)


def verdict(results: dict) -> list[str]:
    """Token-budget batching against the baseline at the highest concurrency, against the 1.2 x target."""
    clients = max(results["points"], key=int)
    modes = results["points"][clients]
    if "token-budget" not in modes or results["baseline"] == "token-budget":
        return []
    ratio = statistics.median(row["qps"] / b["qps"] for row, b in zip(modes["token-budget"],
                                                                        modes[results["baseline"]]))
    cpu = {mode: statistics.median(row["server_cpu_ms_per_request"] for row in rows) for mode, rows in modes.items()}
    return [f"**Target** (token-budget batching ≥ 1.2 × {results['baseline']} at concurrency {clients}): "
            f"{ratio:.2f} ×, {'met' if ratio >= 1.2 else 'not met'}. Server CPU per request (medians): "
            f"{cpu['token-budget']:.1f} ms batched, {cpu[results['baseline']]:.1f} ms {results['baseline']}.", ""]


@click.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, path_type=Path), help="Bundle to serve.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(os.environ.get("HBT_DATA", "../shared/data")))
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/reports/serve/embeddings"),
              show_default=True)
@click.option("--concurrency", default="16", show_default=True, help="Comma-separated client counts.")
@click.option("--modes", default="one-at-a-time,token-budget", show_default=True,
              help=f"Comma-separated, of: {', '.join(MODES)}; the first is the baseline.")
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True)
@click.option("--seconds", type=click.FloatRange(1, 120), default=10, show_default=True, help="Per round.")
@click.option("--warmup", type=click.FloatRange(0, 30), default=3, show_default=True)
@click.option("--texts", type=click.IntRange(10), default=2000, show_default=True)
@click.option("--alone-texts", type=click.IntRange(0), default=256, show_default=True,
              help="Texts for the encoder-alone ceiling (0: skip it).")
def main(bundle, data_dir, out, concurrency, modes, rounds, seconds, warmup, texts, alone_texts):
    """Throughput of /v1/embeddings with token-budget batching against one request at a time."""
    modes = modes.split(",")
    encoder = Encoder(bundle, threads=1)
    if data_dir and (data_dir / "xquad-r").is_dir():
        source, sentences = "XQuAD-R/MLQA-R", sample_sentences(data_dir, texts)
    else:
        source, docs, _ = workload(None, 1, texts)
        sentences = [doc.text for doc in docs][:texts]
    lengths = [len(ids) for ids in encoder.tokenizer.encode(
        [encoder.manifest.passage_prefix + t for t in sentences], encoder.manifest.max_length)[0]]
    model = bundle.name
    bodies = [json.dumps({"input": text, "model": model, "input_type": "passage",
                          "encoding_format": "base64"}).encode() for text in sentences]
    results = {"environment": environment(encoder.manifest, []), "modes": modes, "baseline": modes[0],
               "workload": {"source": source, "texts": len(sentences), "tokens_mean": float(np.mean(lengths)),
                            "tokens_p90": float(np.percentile(lengths, 90)), "tokens_max": max(lengths),
                            "rounds": rounds, "seconds": seconds, "warmup": warmup},
               "points": {}}
    with contextlib.ExitStack() as stack:
        servers = {mode: stack.enter_context(server(["--embeddings-only", "--bundle", str(bundle)], MODES[mode]))
                   for mode in modes}
        for clients in (int(c) for c in concurrency.split(",")):
            points = results["points"][clients] = {mode: [] for mode in modes}
            for mode, (port, _) in servers.items():
                asyncio.run(embeddings_load(port, bodies).run(clients, warmup))
            for round_number in range(rounds):
                for mode, (port, pid) in servers.items():
                    row = measure(port, pid, bodies, clients, seconds)
                    points[mode].append(row)
                    click.echo(f"concurrency {clients} round {round_number + 1} {mode:>18}: {row['qps']:6.1f} req/s, "
                               f"p50 {row['p50_ms']:6.1f} ms, p99 {row['p99_ms']:6.1f} ms, batch "
                               f"{row['mean_batch_tokens']:5.0f} tokens, server CPU "
                               f"{row['server_cpu_ms_per_request']:.1f} ms/request, failed {row['failed']}, "
                               f"load {row['load_average']:.1f}")
    if alone_texts:
        click.echo("the encoder alone")
        group = max(int(c) for c in concurrency.split(","))
        results["encoder_alone"] = encoder_alone(encoder, sentences[:alone_texts], group, rounds)
        click.echo(f"  ratios {results['encoder_alone']['ratios']}")
    write_report(results, out, markdown(results), lambda results, out: None)
    click.echo(f"report: {out}/report.md")


if __name__ == "__main__":
    main()
