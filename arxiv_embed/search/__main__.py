"""Semantic search over papers with the released model.

    python -m arxiv_embed.search build --papers data/split/test.parquet --model models/release --index search-index
    python -m arxiv_embed.search serve --index search-index      # page on http://127.0.0.1:8000/, API docs on /docs
    python -m arxiv_embed.search query "graph neural networks for molecules" --index search-index -k 10 [--json]

build encodes only new or changed abstracts, resumes an interrupted encoding, and uses the GPU (or
several with --processes / all GPUs) when present. `--precision binary` (default) searches 1-bit
codes (RaBitQ) with float rescoring (27x less memory); `float32` searches exactly.
`--backend int8` encodes with dynamic int8 Linear layers: ~1.5x faster on a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
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


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m arxiv_embed.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="add papers to an index (encodes only new or changed ones)")
    build.add_argument("--papers", type=Path, required=True, help="papers parquet or JSON lines (.gz ok)")
    build.add_argument("--precision", choices=["binary", "float32"], default="binary",
                       help="binary: 1-bit FAISS index + float rescoring (default); float32: exact search")
    build.add_argument("--batch-size", type=int, default=64)
    build.add_argument("--processes", type=int, help="encoding processes (default: one per GPU when there are several, else 1)")
    query = commands.add_parser("query", help="top-k papers for a free-text query")
    query.add_argument("text")
    query.add_argument("-k", type=int, default=10)
    query.add_argument("--category", help="only papers of this category (cs.LG) or archive (cs)")
    query.add_argument("--json", action="store_true", help="print the results as JSON")
    serve = commands.add_parser("serve", help="web page and HTTP API (FastAPI; docs on /docs)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    for sub in (build, query, serve):
        sub.add_argument("--index", type=Path, required=True, help="index folder")
        sub.add_argument("--model", help="model folder or name (build: models/release; else the index's own)")
        sub.add_argument("--backend", choices=["torch", "int8"], default="torch",
                         help="int8: dynamic int8 Linear layers on CPU, ~1.5x faster encoding, NDCG@10 within 1%%")
    for sub in (query, serve):
        sub.add_argument("--rescore-multiplier", type=int, default=RESCORE_MULTIPLIER,
                         help="binary: float-rescore k*this RaBitQ candidates (default %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "build":
        from arxiv_embed.models import load_model
        from arxiv_embed.search.index import SearchIndex, build_index

        model_ref = args.model or default_model()
        papers = read_papers(args.papers)
        if papers.height == 0:
            raise SearchError(f"--papers {args.papers}: no papers with an id and an abstract")
        model = load_model(model_ref, backend=args.backend)
        report = build_index(papers, model, model_ref, args.index, args.precision, args.batch_size, args.processes)
        sizes = SearchIndex.load(args.index).sizes()
        print(f"search: index {args.index}: {report.total} papers ({report.encoded} encoded, {report.kept} kept), "
              f"{args.precision}, {sizes['bytes_on_disk'] / 1e6:.2f} MB on disk, {report.seconds:.1f} s")
        return

    from arxiv_embed.search.service import Searcher, create_app, validate_query

    if args.command == "query":
        validate_query(args.text, args.k)  # before the model loads: a bad query fails in milliseconds
        result = Searcher(args.index, args.model, args.rescore_multiplier, args.backend).search(args.text, args.k, args.category)
        print(json.dumps(result, indent=2, ensure_ascii=False)) if args.json else print_results(result)
        return

    import uvicorn

    searcher = Searcher(args.index, args.model, args.rescore_multiplier, args.backend)
    if searcher.index is None:
        print(f"search: no index at {args.index} yet: the page says how to build one and loads it once it exists",
              file=sys.stderr)
    print(f"search: page on http://{args.host}:{args.port}/ , API docs on http://{args.host}:{args.port}/docs", flush=True)
    uvicorn.run(create_app(searcher), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    run(main, "search")  # a UserError prints as `search: error: <message>`, as the stages' errors do
