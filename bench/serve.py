"""Load on hbt-serve over loopback: throughput and latency by concurrency, micro-batching on and off, a soak.

``python -m hbt.bench.serve --bundle B`` indexes real passages (XQuAD-R/MLQA-R sentences
when the shared data is there, the demo corpus otherwise), starts ``hbt-serve`` in its
own process once per batching mode, and sends real questions from closed-loop clients
(each sends its next request when the last is answered) at each concurrency, for a
bounded time. Then a soak at concurrency 16 with micro-batching on measures the
server's RSS at its start and end and commits an ``add`` and a ``delete`` to the index
midway, counting failed requests throughout. Every target is the server on 127.0.0.1.

The client speaks HTTP/1.1 over asyncio streams rather than through an HTTP library:
on a 2-core machine the load generator shares the CPUs with the server, and a few
microseconds of client work per request leave the server the most of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable
from pathlib import Path

import click
import numpy as np

from hbt.bench.latency import workload
from hbt.bench.reports import environment, write_report
from hbt.corpus import Document
from hbt.encoder import Encoder
from hbt.index import add_documents, build_index, delete_documents

HOST = "127.0.0.1"  # loopback only
# hbt-serve's options per mode, beside its defaults (--max-batch 32 --max-wait-ms 2 --workers 2,
# the cores shared among the workers). "off" encodes one query per call; "1x2" runs one batch
# at a time on two encoder threads instead of two batches on one thread each (on 2 cores).
MODES = {
    "on": {},
    "off": {"max-batch": 1},
    "on-no-wait": {"max-wait-ms": 0},
    "on-1x2": {"workers": 1, "threads": 2},
    "off-1x2": {"max-batch": 1, "workers": 1, "threads": 2},
}
MAX_REQUESTS = 200_000  # per phase, beside its time bound
SOAK_WARMUP = 60  # seconds at concurrency 64 before the soak's first RSS


class Load:
    """Closed-loop clients: each keeps one request in flight on its own keep-alive connection."""

    def __init__(self, port: int, bodies: list[bytes], path: str = "/search",
                 answered: Callable[[bytes], bool] = lambda payload: bool(json.loads(payload)["results"][0]["hits"])):
        self.port, self.bodies, self.path, self.answered = port, itertools.cycle(bodies), path, answered
        self.latencies: list[float] = []
        self.failures: list[str] = []

    async def run(self, concurrency: int, seconds: float) -> dict:
        self.latencies, self.failures = [], []
        start = time.perf_counter()
        await asyncio.gather(*(self._client(start + seconds) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        ms = np.array(self.latencies) * 1000
        return {"concurrency": concurrency, "seconds": elapsed, "requests": len(ms) + len(self.failures),
                "failed": len(self.failures), "failures": sorted(set(self.failures))[:5],
                "qps": len(ms) / elapsed, "mean_ms": float(ms.mean()) if len(ms) else float("nan"),
                **{f"p{q}_ms": float(np.percentile(ms, q)) if len(ms) else float("nan") for q in (50, 99)}}

    async def _client(self, stop_at: float) -> None:
        connection = None
        while time.perf_counter() < stop_at and len(self.latencies) + len(self.failures) < MAX_REQUESTS:
            body = next(self.bodies)
            start = time.perf_counter()
            try:
                connection = connection or await asyncio.open_connection(HOST, self.port)
                status, payload = await post(*connection, self.path, body)
                if status != 200 or not self.answered(payload):
                    self.failures.append(f"HTTP {status}: {payload[:200].decode(errors='replace')}")
                    continue
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                self.failures.append(f"{type(e).__name__}: {e}")
                connection = None
                continue
            self.latencies.append(time.perf_counter() - start)
        if connection:
            connection[1].close()


async def post(reader, writer, path: str, body: bytes) -> tuple[int, bytes]:
    writer.write(f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in head[1:] if line)
    return int(head[0].split()[1]), await reader.readexactly(int(headers["content-length"]))


def get(port: int, path: str) -> bytes:
    """The body of GET ``path`` on a fresh connection."""
    with socket.create_connection((HOST, port), timeout=10) as connection:
        connection.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        response = b"".join(iter(lambda: connection.recv(65536), b""))
    return response.split(b"\r\n\r\n", 1)[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@contextlib.contextmanager
def server(serving: list[str], options: dict):
    """hbt-serve in its own process on a free loopback port, serving ``serving`` (["--index", DIR], say) with
    these options; yields (port, pid)."""
    port = free_port()
    flags = [str(part) for name, value in options.items() for part in (f"--{name}", value)]
    process = subprocess.Popen([sys.executable, "-m", "hbt.cli.serve", *serving, "--host", HOST,
                                "--port", str(port), *flags])
    try:
        for _ in range(600):  # up to 60 s
            with contextlib.suppress(OSError):
                get(port, "/health")
                break
            if process.poll() is not None:
                raise RuntimeError(f"hbt-serve exited with code {process.returncode}")
            time.sleep(0.1)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(30)


def batch_sizes(port: int) -> tuple[float, float]:
    """(sum, count) of the server's batch-size histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    text = get(port, "/metrics").decode()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) if f.name == "hbt_encoder_batch_queries"
               for s in f.samples}
    return samples["hbt_encoder_batch_queries_sum"], samples["hbt_encoder_batch_queries_count"]


def sweep(port: int, pid: int, bodies: list[bytes], concurrencies: list[int], seconds: float,
          warmup: float) -> list[dict]:
    rows = []
    for concurrency in concurrencies:
        load = Load(port, bodies)
        asyncio.run(load.run(concurrency, warmup))
        batches, cpu = batch_sizes(port), cpu_seconds(pid)
        row = asyncio.run(load.run(concurrency, seconds))
        row["server_cpu_ms_per_query"] = (cpu_seconds(pid) - cpu) * 1000 / max(row["requests"], 1)
        after = batch_sizes(port)
        row["mean_batch"] = (after[0] - batches[0]) / max(after[1] - batches[1], 1)
        row["load_average"] = os.getloadavg()[0]  # other tenants' load shows here
        click.echo(f"  concurrency {concurrency:>3}: {row['qps']:7.1f} q/s, p50 {row['p50_ms']:6.1f} ms, "
                   f"p99 {row['p99_ms']:6.1f} ms, mean batch {row['mean_batch']:4.1f}, server CPU "
                   f"{row['server_cpu_ms_per_query']:.1f} ms/query, failed {row['failed']}")
        rows.append(row)
    return rows


def soak(port: int, pid: int, bodies: list[bytes], index_dir: Path, encoder: Encoder, seconds: float,
         concurrency: int) -> dict:
    """Load for ``seconds``; an add at a third of it and a delete at two thirds, each waited for by a probe."""
    new = Document("soak-added", "Die Hummel summt leise über der blühenden Wiese im Frühling.", "", "de")
    probe = json.dumps({"query": new.text, "k": 5}).encode()
    events = {}

    async def visible(present: bool, since: float) -> float:
        """Seconds from ``since`` until the server's answers agree that the new document is (not) there."""
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            for _ in range(3000):  # bounded: 60 s at most
                _, payload = await post(reader, writer, "/search", probe)
                if any(h["id"] == new.id for h in json.loads(payload)["results"][0]["hits"]) == present:
                    return time.perf_counter() - since
                await asyncio.sleep(0.02)
            raise RuntimeError("the server never showed the commit")
        finally:
            writer.close()

    async def update():
        await asyncio.sleep(seconds / 3)
        start = time.perf_counter()
        await asyncio.to_thread(add_documents, index_dir, [new], encoder)
        events["add_commit_s"] = time.perf_counter() - start
        events["add_visible_after_commit_s"] = await visible(True, time.perf_counter())
        await asyncio.sleep(max(0.0, seconds / 3 - (time.perf_counter() - start)))
        start = time.perf_counter()
        await asyncio.to_thread(delete_documents, index_dir, [new.id])
        events["delete_visible_after_commit_s"] = await visible(False, time.perf_counter())

    async def sample_rss():
        """RSS every 10 s: a leak keeps climbing, an allocator warming up levels off."""
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            events.setdefault("rss_mib_every_10_s", []).append(round(rss_mib(pid), 1))
            await asyncio.sleep(10)

    async def main():
        load = Load(port, bodies)
        row, _, _ = await asyncio.gather(load.run(concurrency, seconds), update(), sample_rss())
        return row

    rss_start = rss_mib(pid)
    row = asyncio.run(main())
    rss_end = rss_mib(pid)
    row.update(events, load_average=os.getloadavg()[0], rss_start_mib=rss_start, rss_end_mib=rss_end,
               rss_growth=rss_end / rss_start - 1)
    click.echo(f"  soak: {row['qps']:.1f} q/s, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
               f"failed {row['failed']}, RSS {rss_start:.0f} -> {rss_end:.0f} MiB ({row['rss_growth']:+.1%}), "
               f"add visible {events['add_visible_after_commit_s']:.2f} s after its commit")
    return row


def markdown(results: dict) -> str:
    w, sweeps = results["workload"], results["sweeps"]
    sequential = next(iter(sweeps.values()))[0]
    lines = ["# hbt-serve under load", "",
             f"{w['queries']} real questions ({w['source']}) against {w['passages']} passages, k = {w['k']}, "
             f"closed-loop clients on 127.0.0.1, {w['seconds']:.0f} s per point after {w['warmup']:.0f} s of warm-up; "
             f"server and clients share the machine's {results['environment']['cores']} cores.", "",
             "| mode | concurrency | queries/s | × sequential | p50 ms | p99 ms | p99/p50 | mean batch "
             "| server CPU ms/query | failed | load |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, rows in sweeps.items():
        for row in rows:
            lines.append(f"| {mode} | {row['concurrency']} | {row['qps']:.1f} | "
                         f"{row['qps'] / sequential['qps']:.2f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
                         f"{row['p99_ms'] / row['p50_ms']:.1f} | {row['mean_batch']:.1f} | "
                         f"{row['server_cpu_ms_per_query']:.1f} | {row['failed']} | "
                         f"{row['load_average']:.1f} |")
    lines += ["", "Modes (hbt-serve's options beside its defaults): " + "; ".join(
        f"{mode}: " + (" ".join(f"--{name} {value}" for name, value in MODES[mode].items()) or "the defaults")
        for mode in sweeps) + ".",
              "", "Load is the machine's 1-minute load average after the point (2 cores: above 2, other "
              "processes were waiting for them too). Server CPU is the CPU time the server process used per "
              "query (user + system, all its threads): less sensitive to other tenants than queries/s.", "", f"× sequential divides by the first row's rate (concurrency "
              f"{sequential['concurrency']}: one client, one query at a time).", ""]
    if "soak" in results:
        s = results["soak"]
        lines += [f"**Soak** ({s['seconds']:.0f} s at concurrency {s['concurrency']}, batching on): "
                  f"{s['requests']} requests, {s['failed']} failed, {s['qps']:.1f} queries/s, p50 {s['p50_ms']:.1f} ms, "
                  f"p99 {s['p99_ms']:.1f} ms; RSS {s['rss_idle_mib']:.0f} MiB before any query, {s['rss_start_mib']:.0f} "
                  f"MiB at the start (after {SOAK_WARMUP} s at concurrency 64), "
                  f"{s['rss_end_mib']:.0f} MiB at the end ({s['rss_growth']:+.1%}); every 10 s: "
                  f"{', '.join(f'{mib:.0f}' for mib in s['rss_mib_every_10_s'])}. An `add` committed a third of "
                  f"the way in was in the answers {s['add_visible_after_commit_s']:.2f} s after its commit, a "
                  f"`delete` at two thirds gone {s['delete_visible_after_commit_s']:.2f} s after.", ""]
    lines += ["![latency against concurrency](latency.png)", ""]
    return "\n".join(lines)


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency, throughput) = plt.subplots(1, 2, figsize=(9, 3.4))
    for (mode, rows), color in zip(results["sweeps"].items(), ("tab:blue", "tab:green", "tab:orange")):
        x = [row["concurrency"] for row in rows]
        latency.plot(x, [row["p50_ms"] for row in rows], "o-", color=color, label=f"{mode}: p50")
        latency.plot(x, [row["p99_ms"] for row in rows], "s--", color=color, label=f"{mode}: p99")
        throughput.plot(x, [row["qps"] for row in rows], "o-", color=color, label=mode)
    for ax in (latency, throughput):
        ax.set_xscale("log", base=2)
        ax.set_xticks([row["concurrency"] for row in rows], [str(row["concurrency"]) for row in rows])
        ax.set_xlabel("concurrent clients")
    latency.set_yscale("log")
    latency.set_ylabel("latency (ms)")
    throughput.set_ylabel("queries/s")
    latency.legend(fontsize=7)
    throughput.set_ylim(bottom=0)
    throughput.legend(title="mode", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=120)
    plt.close(fig)


@click.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, path_type=Path), help="Bundle to serve.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(os.environ.get("HBT_DATA", "../shared/data")))
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/reports/serve"), show_default=True)
@click.option("--concurrency", default="1,4,16,64", show_default=True, help="Comma-separated client counts.")
@click.option("--modes", default="on,off,on-1x2", show_default=True,
              help=f"Comma-separated, of: {', '.join(MODES)}.")
@click.option("--seconds", type=click.FloatRange(1, 120), default=15, show_default=True, help="Per point.")
@click.option("--warmup", type=click.FloatRange(0, 30), default=2, show_default=True, help="Per point, not counted.")
@click.option("--soak", "soak_seconds", type=click.FloatRange(0, 600), default=300, show_default=True,
              help="Soak length (0: none).")
@click.option("--passages", type=click.IntRange(10), default=2000, show_default=True)
def main(bundle, data_dir, out, concurrency, modes, seconds, warmup, soak_seconds, passages):
    """Throughput and latency of hbt-serve by concurrency, with micro-batching on and off, and a soak."""
    concurrencies = [int(c) for c in concurrency.split(",")]
    encoder = Encoder(bundle)
    source, docs, questions = workload(data_dir, 1000, passages)
    bodies = [json.dumps({"query": q, "k": 10}).encode() for q in questions]
    results = {"environment": environment(encoder.manifest, []),
               "workload": {"source": source, "passages": len(docs), "queries": len(questions), "k": 10,
                            "seconds": seconds, "warmup": warmup},
               "sweeps": {}}
    with tempfile.TemporaryDirectory() as scratch:
        index_dir = Path(scratch) / "index"
        click.echo(f"indexing {len(docs)} passages ({source})")
        build_index(docs, encoder, index_dir)
        for mode in modes.split(","):
            click.echo(f"micro-batching {mode}")
            with server(["--index", str(index_dir)], MODES[mode]) as (port, pid):
                results["sweeps"][mode] = sweep(port, pid, bodies, concurrencies, seconds, warmup)
        if soak_seconds:
            click.echo(f"soak: {soak_seconds:.0f} s at concurrency 16, micro-batching on")
            with server(["--index", str(index_dir)], MODES["on"]) as (port, pid):
                rss_idle = rss_mib(pid)
                # Warm up first, with the largest batches: the encoder's runtime keeps memory for
                # each batch shape it has run, and grows until it has seen them (then levels off).
                asyncio.run(Load(port, bodies).run(64, SOAK_WARMUP))
                results["soak"] = soak(port, pid, bodies, index_dir, encoder, soak_seconds, 16) | {
                    "concurrency": 16, "rss_idle_mib": rss_idle}
    write_report(results, out, markdown(results), plot)
    click.echo(f"report: {out}/report.md")


if __name__ == "__main__":
    main()
