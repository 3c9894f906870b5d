"""search_load: a bounded load test of the search service on 127.0.0.1.

`python -m arxiv_embed.search serve` runs as its own process over an index of real papers (the
multi-domain sample's abstracts, embeddings from benchmarks/search_scale's cache, so nothing is
re-encoded here); a fixed number of requests is sent at concurrency 1 and N: throughput, p50/p99
latency and the error count for GET /search (encodes the query: the model dominates) and for GET
/papers/{id}/similar (stored embedding: the index alone), and the server's resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, ROOT, Report, load_note
from benchmarks.search_scale import MODEL, SAMPLE, real_embeddings

QUICK = {"load_papers": 512, "requests": 40, "concurrency": 4}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--load-papers", type=int, default=5120, help="search_load: papers in the served index")
    parser.add_argument("--requests", type=int, default=200, help="search_load: requests per endpoint and concurrency")
    parser.add_argument("--concurrency", type=int, default=4, help="search_load: parallel clients (also run at 1)")


def write_real_index(path: Path, n_papers: int) -> list[str]:
    """An index of the first n_papers of the sample from cached embeddings; returns their titles."""
    from arxiv_embed.search.index import model_identity, write_index
    from arxiv_embed.search.papers import read_papers

    real = real_embeddings(n_papers)
    papers = read_papers(SAMPLE)
    papers = papers.head(len(real["abstracts"]))
    write_index(path, papers, real["abstracts"], "binary", MODEL, model_identity(MODEL))
    return papers["id"].to_list(), papers["title"].to_list()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch(url: str) -> tuple[bool, float]:
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            ok = response.status == 200 and bool(json.loads(response.read())["results"])
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        ok = False
    return ok, (time.perf_counter() - start) * 1e3


def load(urls: list[str], concurrency: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(fetch, urls))
    seconds = time.perf_counter() - start
    latencies = [ms for ok, ms in results if ok]
    return {"requests": len(urls), "errors": sum(not ok for ok, _ in results), "per_second": len(urls) / seconds,
            "p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
            "p99_ms": float(np.percentile(latencies, 99)) if latencies else None}


def run(args: argparse.Namespace) -> Report:
    import psutil

    report = Report("search_load")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)  # a fresh clone has none yet
    with tempfile.TemporaryDirectory(prefix="search-load-", dir=RESULTS_DIR) as tmp:
        index = Path(tmp) / "index"
        ids, titles = write_real_index(index, args.load_papers)
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        server = subprocess.Popen([sys.executable, "-m", "arxiv_embed.search", "serve", "--index", str(index), "--port", str(port)],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while not fetch(f"{base}/search?q=warm")[0]:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the search server did not come up: {server.stderr.read()[-2000:] if server.poll() is not None else 'timeout'}")
                time.sleep(0.5)
            rng = np.random.default_rng(0)
            picks = rng.choice(len(titles), args.requests, replace=len(titles) < args.requests)
            endpoints = {
                "search": [f"{base}/search?" + urllib.parse.urlencode({"q": titles[i], "k": 10}) for i in picks],
                "similar": [f"{base}/papers/{urllib.parse.quote(ids[i])}/similar?k=10" for i in picks],
            }
            figures = {}
            for name, urls in endpoints.items():
                for concurrency in (1, args.concurrency):
                    figures[(name, concurrency)] = load(urls, concurrency)
                    print(f"search_load: {name} x{concurrency}: {figures[(name, concurrency)]}", flush=True)
            rss_mb = psutil.Process(server.pid).memory_info().rss / 2**20
        finally:
            server.terminate()
            server.wait(30)
    for name, label in (("search", "GET /search (encodes the query)"), ("similar", "GET /papers/{id}/similar")):
        one, many = figures[(name, 1)], figures[(name, args.concurrency)]
        report.add(f"{label}: requests/s at concurrency {args.concurrency}", many["per_second"], one["per_second"],
                   note="baseline: concurrency 1")
        report.add(f"{label}: p50 / p99 latency at concurrency {args.concurrency} (ms)", f"{many['p50_ms']:.1f} / {many['p99_ms']:.1f}",
                   f"{one['p50_ms']:.1f} / {one['p99_ms']:.1f}")
        report.add(f"{label}: errors", one["errors"] + many["errors"], note=f"of {one['requests'] + many['requests']} requests")
    report.add("server resident memory after the load (MB)", rss_mb, note=f"index of {len(titles)} real papers, 1-bit; model loaded once")
    report.notes.append(f"{args.requests} requests per endpoint and concurrency, titles of the indexed papers as queries, "
                        f"k=10; server: `python -m arxiv_embed.search serve` (uvicorn, one process) on 127.0.0.1, {os.cpu_count()} cores")
    if note := load_note():
        report.notes.append(note)
    return report
