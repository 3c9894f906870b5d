"""The search service: FastAPI app (OpenAPI docs at /docs) plus the web page, served by uvicorn.

    GET /search?q=&k=&category=     top-k papers for a free-text query (category: cs.LG or a whole archive, cs)
    GET /papers/{id}/similar?k=     "more like this", from the paper's stored embedding (no re-encoding)
    GET /categories                 what the filter accepts, with paper counts
    GET /health                     index and model; 503 with what to do while no index is loaded (a readiness probe)
    GET /                           the page (static HTML/JS/CSS, no CDN); /docs also serves its assets itself
"""

from __future__ import annotations

import sys
import threading
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from arxiv_embed.files import recover
from arxiv_embed.models import ModelNotFoundError
from arxiv_embed.search.index import Hit, SearchIndex, model_identity
from arxiv_embed.search.papers import SearchError, UnknownPaperError

MAX_K = 1000
MAX_QUERY_CHARS = 2000
MISSING = (-1, -1)  # Searcher._stamp while the index folder is not there (a stat never gives it)
STATIC = Path(__file__).parent / "static"


class IndexUnavailableError(SearchError):
    """The server has no index it can serve (HTTP 503, a server-side state, not the request's fault): the message says why and what to do."""


class NoIndexError(IndexUnavailableError):
    """No index is there yet (HTTP 503): the message says how to build one."""


def validate_query(query: str, k: int) -> str:
    """The stripped query, or SearchError for an empty, invisible, overlong or NUL-holding query or k out of range."""
    if "\x00" in query:
        raise SearchError("the query contains a NUL character: give plain text")
    # Bytes that are not UTF-8: Python decodes argv's as surrogates, the web server a URL's as U+FFFD. Either way, one answer.
    if "\ufffd" in query or any(unicodedata.category(ch) == "Cs" for ch in query):
        raise SearchError("the query is not valid UTF-8 text (or holds U+FFFD, the mark of bytes that did not decode): give "
                          "it in UTF-8 (check the terminal's encoding)")
    # Zero-width and other format/control characters carry no meaning: a query of only those is empty.
    query = "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in query
                    if unicodedata.category(ch) not in ("Cf", "Co", "Cn")).strip()
    if not any(ch.isalnum() for ch in query):
        raise SearchError("the query is empty (no letters or digits): give some words to search for")
    if len(query) > MAX_QUERY_CHARS:
        raise SearchError(f"the query is {len(query)} characters long; the limit is {MAX_QUERY_CHARS}")
    validate_k(k)
    return query


def validate_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise SearchError(f"k must be between 1 and {MAX_K}, got {k}")


@dataclass
class _QueryVector:
    """A query waiting for its vector (Searcher._encode_query), from the model of the index it will search."""

    query: str
    model: object
    vector: np.ndarray | None = None
    error: Exception | None = None


@dataclass(frozen=True)
class Loaded:
    """An index and the model it was built with, swapped in together: a query is encoded by the model of the
    index it searches, even while a rebuilt index is being loaded."""

    index: SearchIndex
    model: object
    model_ref: str
    identity: str


class Searcher:
    """An index plus the model it was built with, each loaded once; a rebuilt index folder is picked up.

    Safe to share between server threads: one encoding runs at a time (one model, and torch already
    uses every core for one batch), and queries that arrive meanwhile are encoded together in the next
    batch (a batch of a few short queries costs little more than one); FAISS searches and memory-mapped
    reads run concurrently. A rebuilt folder this server cannot load (another model's index, an old
    format, a missing model) does not take it down: it keeps serving the index it has, says why on
    /health, and tries again only when the folder changes.
    """

    def __init__(self, index: Path | str, model_ref: str | None = None, rescore_multiplier: int | None = None, backend: str = "torch",
                 warm_filters: bool = False) -> None:
        self.path, self.requested_model, self.backend = Path(index), model_ref, backend
        # A server builds the category filters when it loads an index (~3 s at 2.7M papers), not in the first request.
        self.warm_filters = warm_filters
        self.rescore_multiplier = rescore_multiplier  # None: the one the index was built with
        self.loaded: Loaded | None = None
        self.failure: str | None = None  # why the folder's current index could not be loaded (None: it was, or there is none)
        self._stamp = None
        self._encode_lock, self._load_lock, self._pending_lock = threading.Lock(), threading.Lock(), threading.Lock()
        self._pending: list[_QueryVector] = []
        with self._load_lock:  # at start an index that cannot be served is an error: the command fails with its reason
            self._load(self._current_stamp())

    @property
    def index(self) -> SearchIndex | None:
        return self.loaded.index if self.loaded else None

    @property
    def model_ref(self) -> str | None:
        return self.loaded.model_ref if self.loaded else None

    def _current_stamp(self) -> tuple[int, int] | None:
        try:
            stat = (self.path / "index.json").stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def refresh(self) -> Loaded | None:
        """Load the index if its folder changed since (an atomic rebuild swaps the folder and index.json)."""
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return self.loaded
        with self._load_lock:
            if stamp != self._stamp:
                try:
                    self._load(stamp)
                except Exception as error:  # noqa: BLE001 (whatever broke the new folder, the old index still serves)
                    self._stamp, self.failure = stamp, str(error) or type(error).__name__
                    kept = f"; still serving the index loaded before ({self.loaded.index.count} papers)" if self.loaded else ""
                    print(f"search: {self.path} changed, but cannot be served: {self.failure}{kept}", file=sys.stderr, flush=True)
        return self.loaded

    def _load(self, stamp) -> None:
        from arxiv_embed.models import encode, load_model

        if stamp is None:
            recover(self.path)  # a rebuild killed between its two renames left the previous folder aside: put it back
            stamp = self._current_stamp()
            if stamp is None:  # none yet, or a live rebuild between its two renames: the index loaded before still serves
                # The stamp of nothing, never equal to a folder's: each request looks again (and recovers) while it lasts.
                self._stamp = MISSING
                self.failure = f"{self.path} holds no index now; still serving the one loaded before" if self.loaded else None
                return
        index = SearchIndex.load(self.path)
        model_ref = self.requested_model or index.meta["model"]
        previous = self.loaded
        if previous is not None and model_ref == previous.model_ref and index.meta["model_sha256"] == previous.identity:
            model, identity = previous.model, previous.identity
        else:
            try:
                identity = model_identity(model_ref)
            except ModelNotFoundError:
                if self.requested_model:
                    raise
                raise SearchError(f"the index {self.path} was built with the model {model_ref} (weights sha256 "
                                  f"{index.meta['model_sha256'][:12]}), which is not there: pass --model PATH to it "
                                  "(any copy with the same weights)") from None
            index.check_model(identity, model_ref)
            model = load_model(model_ref, backend=self.backend)
            encode(model, ["warm-up"], progress=False, queries=True)  # the first query does not pay torch's start-up
        if self.warm_filters:
            index.categories()
        if previous is not None:  # a rebuilt folder taken in while serving: say so in the server's log
            changed = "" if model is previous.model else f", model {model_ref} (weights sha256 {identity[:12]}) loaded with it"
            print(f"search: {self.path} rebuilt: now serving {index.count} papers{changed}", file=sys.stderr, flush=True)
        self.loaded, self._stamp, self.failure = Loaded(index, model, model_ref, identity), stamp, None

    def build_command(self) -> str:
        return f"python -m arxiv_embed.search build --papers data/split/test.parquet --model models/release --index {self.path}"

    def require(self) -> Loaded:
        loaded = self.refresh()
        if loaded is not None:
            return loaded
        if self.failure is not None:
            raise IndexUnavailableError(f"the index at {self.path} cannot be served: {self.failure}")
        raise NoIndexError(f"no search index is loaded: {self.path} holds none. Build it with `{self.build_command()}`; "
                           "the server loads it as soon as the build finishes")

    def search(self, query: str, k: int = 10, category: str | None = None) -> dict:
        query = validate_query(query, k)
        loaded = self.require()
        index = loaded.index
        start = time.perf_counter()
        vector = self._encode_query(query, loaded.model)
        encoded = time.perf_counter()
        hits = index.search(vector, k, category or None, self.rescore_multiplier)
        done = time.perf_counter()
        return {"query": query, "k": k, "category": index.category_name(category), "precision": index.meta["precision"],
                "index": index.sizes(), "results": [asdict(hit) for hit in hits],
                "latency_ms": {"encode": round((encoded - start) * 1e3, 2), "search": round((done - encoded) * 1e3, 2)}}

    def _encode_query(self, query: str, model) -> np.ndarray:
        """The query's vector; while another batch is encoding, queries queue up and the first of them to
        get the model encodes every one waiting, so at concurrency N a query waits for about one batch, not N-1."""
        from arxiv_embed.models import encode

        slot = _QueryVector(query, model)
        with self._pending_lock:
            self._pending.append(slot)
        with self._encode_lock:
            if slot.vector is None and slot.error is None:
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                # One batch per model: right after a reload, queries of the old index still need the old model.
                by_model: dict[int, list[_QueryVector]] = {}
                for waiting in batch:
                    by_model.setdefault(id(waiting.model), []).append(waiting)
                for same in by_model.values():
                    # int8 scales its activations per batch: a query's vector would depend on the queries beside it
                    batch_size = 1 if self.backend == "int8" else len(same)
                    try:
                        vectors = encode(same[0].model, [waiting.query for waiting in same], batch_size=batch_size, progress=False,
                                         queries=True)
                    except Exception as error:
                        for waiting in same:
                            waiting.error = error
                    else:
                        for waiting, vector in zip(same, vectors):
                            waiting.vector = vector
        if slot.error is not None:
            raise slot.error
        return slot.vector

    def similar(self, paper_id: str, k: int = 10, category: str | None = None) -> dict:
        validate_k(k)
        index = self.require().index
        paper, hits = index.similar(paper_id, k, category or None, self.rescore_multiplier)
        return {"paper": asdict(paper), "k": k, "category": index.category_name(category), "results": [asdict(hit) for hit in hits]}


class SearchOut(BaseModel):
    query: str
    k: int
    category: str | None
    precision: str
    index: dict[str, int]
    results: list[Hit]
    latency_ms: dict[str, float]


class SimilarOut(BaseModel):
    paper: Hit
    k: int
    category: str | None
    results: list[Hit]


class ErrorOut(BaseModel):
    error: str


ERRORS = {400: {"model": ErrorOut, "description": "bad query, k or category"},
          422: {"model": ErrorOut, "description": "a parameter of the wrong type"},
          503: {"model": ErrorOut, "description": "no index it can serve: none built yet, or one this server cannot load"}}


def create_app(searcher: Searcher) -> FastAPI:
    import swagger_ui  # swagger-ui-py: Swagger UI 5 (reads OpenAPI 3.1, which FastAPI writes)

    swagger_ui_path = Path(swagger_ui.__file__).parent / "static"
    app = FastAPI(title="arxiv-embed search", description=__doc__, version="2", docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # Swagger UI from the swagger-ui-py package, not a CDN: /docs works on a machine without internet.
    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg")

    @app.middleware("http")
    async def head_as_get(request: Request, call_next):  # noqa: ANN001, ANN202
        # HEAD wherever GET is (RFC 9110; a probe's `curl -I /health`): FastAPI's routes take GET only and answered 405.
        if request.method != "HEAD":
            return await call_next(request)
        request.scope["method"] = "GET"
        response = await call_next(request)
        async for _ in response.body_iterator:  # the GET's body, read and dropped: its headers (length, type) stay
            pass
        return Response(status_code=response.status_code, headers=dict(response.headers))

    @app.exception_handler(HTTPException)
    async def routing_error(request: Request, exc: HTTPException) -> JSONResponse:
        # 404 for an unknown path, 405 for a wrong method: the same {"error": ...} shape as every other error.
        return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}"}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(SearchError)
    async def search_error(request: Request, exc: SearchError) -> JSONResponse:
        status = 404 if isinstance(exc, UnknownPaperError) else 503 if isinstance(exc, IndexUnavailableError) else 400
        return JSONResponse({"error": str(exc)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
        reasons = "; ".join(f"{error['loc'][-1]}: {error['msg']}" for error in exc.errors())
        return JSONResponse({"error": reasons}, status_code=422)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/health", responses={503: {"description": "no index it can serve: not ready"}})
    def health():
        try:
            loaded = searcher.require()
        except NoIndexError:  # `error` as every error answer has it; the page reads message and build_command
            message = f"{searcher.path} holds no search index yet."
            return JSONResponse({"status": "no index", "error": message, "message": message,
                                 "build_command": searcher.build_command()}, status_code=503)
        except IndexUnavailableError as error:
            return JSONResponse({"status": "unavailable", "error": str(error), "message": str(error)}, status_code=503)
        index = loaded.index
        body = {"status": "ok", "model": loaded.model_ref, "model_sha256": loaded.identity, "precision": index.meta["precision"],
                **index.sizes()}
        if searcher.failure:  # ready, but not with the folder's current index
            body["warning"] = f"{searcher.path} changed to an index this server cannot load ({searcher.failure}); serving the previous one"
        return body

    @app.get("/search", response_model=SearchOut, responses=ERRORS)
    def search(q: str = Query(..., description=f"free text, 1 to {MAX_QUERY_CHARS} characters"),
               k: int = Query(10, description=f"results, 1 to {MAX_K}"),
               category: str | None = Query(None, description="arXiv category (cs.LG) or archive (cs)")) -> dict:
        return searcher.search(q, k, category)

    @app.get("/papers/{paper_id:path}/similar", response_model=SimilarOut, responses={**ERRORS, 404: {"model": ErrorOut}})
    def similar(paper_id: str, k: int = Query(10, description=f"results, 1 to {MAX_K}"),
                category: str | None = Query(None, description="arXiv category (cs.LG) or archive (cs)")) -> dict:
        return searcher.similar(paper_id, k, category)

    @app.get("/categories", responses=ERRORS)
    def categories() -> dict:
        return {"categories": searcher.require().index.categories()}

    return app


def start_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0):
    """uvicorn serving `app` on a thread (port 0: a free one); returns (server, base URL). Stop: server.should_exit = True."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the search server did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    server.thread = thread
    return server, f"http://{host}:{bound}"
