"""Semantic search over papers with the released model.

    python -m arxiv_embed.search build --papers data/split/test.parquet --model models/release --index search-index
    python -m arxiv_embed.search serve --index search-index      # page on http://127.0.0.1:8000/, API docs on /docs
    python -m arxiv_embed.search query "graph neural networks for molecules" --index search-index -k 10 [--json]
    python -m arxiv_embed.search query "graph neural networks" --server http://127.0.0.1:8000   # no model load

build encodes only new or changed abstracts, resumes an interrupted encoding, and uses the GPU (or
several with --processes / all GPUs) when present. With a model fine-tuned in adapter mode it also keeps its
encoder's vectors, so `--new-model` with an adapter retrained on the same encoder (weights and sequence length) runs
only the adapter.
`--precision binary` (default) searches 1-bit codes (RaBitQ) with float rescoring (27x less memory); `float32`
searches exactly.
`--backend int8` encodes with dynamic int8 Linear layers: ~1.5-1.9x faster on a CPU, NDCG@10 within 1%; query and
serve use it by default when there is no GPU (one short query: ~90 vs ~170 ms on 2 loaded cores).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from arxiv_embed import paths
from arxiv_embed.errors import run
from arxiv_embed.search.engine import RESCORE_MULTIPLIER
from arxiv_embed.search.papers import SearchError, read_papers


def default_model() -> str:
    release = paths.RELEASE
    if not release.exists():
        raise SearchError(f"{release} does not exist: run `dvc repro push` or pass --model PATH")
    return str(release)


def print_results(result: dict) -> None:
    for rank, hit in enumerate(result["results"], 1):
        print(f"{rank:>3}. {hit['score']:.4f}  {hit['id']:<14} {hit['title']}  [{' '.join(hit['categories'])}]")
    size, latency = result["index"], result["latency_ms"]
    print(f"index: {size['papers']} papers, {result['precision']}, {size['bytes_on_disk'] / 1e6:.2f} MB on disk, "
          f"{size['bytes_searched_in_memory'] / 1e6:.3f} MB searched in memory; "
          f"latency: encode {latency['encode']} ms + search {latency['search']} ms")


def positive_int(text: str) -> int:
    """argparse type: a count of 1 or more (a batch size or multiplier of 0 or less would answer nothing)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def port(text: str) -> int:
    """argparse type: a TCP port (0: any free one)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 0-65535, got {value}")
    return value


def server_url(text: str) -> str:
    """argparse type: the http(s) URL of a running `serve`."""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise argparse.ArgumentTypeError(f"must be the server's http URL, as `serve` prints it (http://127.0.0.1:8000), got {text!r}")
    return text


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m arxiv_embed.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="add papers to an index (encodes only new or changed ones)")
    build.add_argument("--papers", type=Path, help="papers parquet or JSON lines (.gz ok); optional with --new-model")
    build.add_argument("--precision", choices=["binary", "float32"],
                       help="binary: 1-bit FAISS index + float rescoring; float32: exact search (default: the index's own, "
                            "binary for a new one)")
    build.add_argument("--batch-size", type=positive_int, default=64,
                       help="texts per batch with --processes (one CPU process: 8 texts of one length a pass; one GPU: token-budget batches)")
    build.add_argument("--processes", type=positive_int, help="encoding processes (default: one per GPU when there are several, else 1)")
    build.add_argument("--new-model", action="store_true",
                       help="the index was built with another model (a retrained release): encode every paper it holds "
                            "again with --model (and --papers' new or changed ones, if given), and replace it (default: refuse)")
    query = commands.add_parser("query", help="top-k papers for a free-text query")
    query.add_argument("text")
    query.add_argument("-k", type=int, default=10)
    query.add_argument("--category", help="only papers of this category (cs.LG) or archive (cs)")
    query.add_argument("--json", action="store_true", help="print the results as JSON")
    query.add_argument("--server", type=server_url, help="ask this running server (http://127.0.0.1:8000) instead of loading the model here")
    serve = commands.add_parser("serve", help="web page and HTTP API (FastAPI; docs on /docs)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=port, default=8000)
    for sub in (build, query, serve):
        sub.add_argument("--index", type=Path, required=sub is not query, help="index folder (query: or --server)")
        sub.add_argument("--model", help="model folder or name (build: models/release; else the index's own)")
        sub.add_argument("--backend", choices=["torch", "int8"], default="torch" if sub is build else None,
                         help="int8: dynamic int8 Linear layers on CPU, ~1.5x faster encoding, NDCG@10 within 1%% "
                              "(query/serve default: int8 without a GPU, else torch)")
    build.add_argument("--rescore-multiplier", type=positive_int,
                       help="binary: float-rescore k*this RaBitQ candidates, stored with the index (default: the "
                            f"index's own, {RESCORE_MULTIPLIER} for a new one)")
    for sub in (query, serve):
        sub.add_argument("--rescore-multiplier", type=positive_int,
                         help="binary: float-rescore k*this RaBitQ candidates (default: the one stored with the index)")
    return parser


def query_server(server: str, text: str, k: int, category: str | None) -> dict:
    """The same answer as a local query, from a running `serve` (its model is loaded already)."""
    params = {"q": text, "k": k, **({"category": category} if category else {})}
    url = f"{server.rstrip('/')}/search?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            answer = _json_object(response.read())
            if answer is None or "results" not in answer:
                raise SearchError(f"--server {server} answered, but not as this search service does (no JSON results): "
                                  "check the URL and port of `python -m arxiv_embed.search serve`")
            return answer
    except urllib.error.HTTPError as error:
        reason = (_json_object(error.read()) or {}).get("error") or f"HTTP {error.code} {error.reason}"
        raise SearchError(f"--server {server}: {reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise SearchError(f"--server {server} is not answering ({getattr(error, 'reason', error)}): start it with "
                          "`python -m arxiv_embed.search serve --index INDEX`, or query with --index instead") from None


def _json_object(body: bytes) -> dict | None:
    """The answer as a JSON object, or None (a proxy's HTML page, another program on that port)."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def query_backend(requested: str | None) -> str:
    """--backend for query/serve: as asked, else int8 without a GPU (a query is one short text: int8 halves its encoding)."""
    if requested:
        return requested
    import torch

    return "torch" if torch.cuda.is_available() else "int8"


def build(args: argparse.Namespace, argv: list[str]) -> None:
    from arxiv_embed.embeddings import refuse_int8_pool
    from arxiv_embed.files import recover
    from arxiv_embed.models import load_model
    from arxiv_embed.search.index import (SearchIndex, build_index, build_lock, check_build_model, check_index_path, encoding_dir,
                                          model_identity, empty_papers)

    # What can be refused is refused before the papers are read (a minute at 2.7M) and encoded (hours).
    args.index = args.index.resolve()  # a link to an index on another disk: the swap replaces its target, not the link
    if args.backend == "int8":
        refuse_int8_pool(args.processes)
    try:
        with build_lock(args.index):
            recover(args.index)  # a build killed between its two renames left the index aside: back before it is read
            check_index_path(args.index)
            model_ref = args.model or default_model()
            identity = model_identity(model_ref)
            check_build_model(args.index, identity, model_ref, args.new_model, papers_given=args.papers is not None)
            if args.papers is None:  # --new-model alone: the index's own papers, re-encoded
                papers = empty_papers()
            elif (papers := read_papers(args.papers)).height == 0:
                raise SearchError(f"--papers {args.papers}: no papers with an id and an abstract")
            model = load_model(model_ref, backend=args.backend)
            report = build_index(papers, model, model_ref, args.index, args.precision, args.batch_size, args.processes,
                                 args.rescore_multiplier, args.backend, identity, args.new_model)
    except KeyboardInterrupt:
        # One line, not torch's traceback: what is kept and how to go on.
        chunks = encoding_dir(args.index)
        saved = len(list(chunks.glob("chunk-*.npy")))  # none when the folder is not there
        kept, then = ((f"{saved} encoded chunks are saved in {chunks}", "resume") if saved else
                      ("no chunk of encoded papers was finished", "start again"))
        print(f"\nsearch: interrupted; {kept} and the old index is untouched: rerun "
              f"`{shlex.join(['python', '-m', 'arxiv_embed.search', *argv])}` to {then}", file=sys.stderr)
        sys.exit(130)
    built = SearchIndex.load(args.index)
    sizes = built.sizes()
    resumed = f", {report.resumed} of them resumed from saved chunks" if report.resumed else ""
    how = (f"every one encoded with the new model{resumed}" if report.reencoded
           else f"{report.encoded} new or changed{resumed}, {report.kept} kept"
           + (f", {report.copied} copied from a paper with the same abstract" if report.copied else "")
           + (" through the new model's adapter, not encoded again" if report.readapted else ""))
    print(f"search: index {args.index}: {report.total} papers ({how}), {built.meta['precision']}, "
          f"{sizes['bytes_on_disk'] / 1e6:.2f} MB on disk, {report.seconds:.1f} s")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.command == "build" and args.papers is None and not args.new_model:
        parser().error("build: --papers is required (without it, --new-model re-encodes the index's own papers)")
    if args.command == "build":
        build(args, argv)
        return

    from arxiv_embed.search.index import no_index_there
    from arxiv_embed.search.service import Searcher, create_app, validate_query

    if args.command == "query":
        validate_query(args.text, args.k)  # before the model loads: a bad query fails in milliseconds
        if args.server:
            # The server answers with its own index, model and settings: a local one asked for here would be ignored.
            local = [flag for flag, value in (("--index", args.index), ("--model", args.model), ("--backend", args.backend),
                                              ("--rescore-multiplier", args.rescore_multiplier)) if value is not None]
            if local:
                parser().error(f"query: {', '.join(local)} cannot go with --server (the server uses those it was started "
                               "with): leave them out, or query with --index instead of --server")
            result = query_server(args.server, args.text, args.k, args.category)
            print(json.dumps(result, indent=2, ensure_ascii=False)) if args.json else print_results(result)
            return
        if args.index is None:
            raise SearchError("query: give --index INDEX (loads the model here) or --server URL (asks a running server)")
        searcher = Searcher(args.index, args.model, args.rescore_multiplier, query_backend(args.backend))
        if searcher.index is None:  # no server here to load one once built: the command line's advice
            raise no_index_there(args.index)
        result = searcher.search(args.text, args.k, args.category)
        print(json.dumps(result, indent=2, ensure_ascii=False)) if args.json else print_results(result)
        return

    import uvicorn

    searcher = Searcher(args.index, args.model, args.rescore_multiplier, query_backend(args.backend), warm_filters=True)
    if searcher.index is None:
        print(f"search: no index at {args.index} yet: the page says how to build one and loads it once it exists",
              file=sys.stderr)
    config = uvicorn.Config(create_app(searcher), host=args.host, port=args.port, log_level="info")
    listening = config.bind_socket()  # bound before the URL is printed: --port 0 takes a free port, which it names
    base = f"http://{f'[{args.host}]' if ':' in args.host else args.host}:{listening.getsockname()[1]}"
    print(f"search: page on {base}/ , API docs on {base}/docs", flush=True)
    uvicorn.Server(config).run(sockets=[listening])


if __name__ == "__main__":
    run(main, "search", takes_arguments=True)  # a UserError prints as `search: error: <message>`, as the stages' errors do
