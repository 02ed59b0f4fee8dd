"""``superclip serve``: a FastAPI app over an index folder: text search, image search (upload), more like this, tag
filters and facets, zero-shot classification of an upload, an item's image, health; the search page at ``/``.

Safety: the app opens only files the catalog recorded (a request names an id, never a path), uploads are capped
(``max_upload_bytes``, checked on Content-Length before the body is parsed and again on the bytes read), images are
decoded by :func:`superclip.data.images.decode_image` (PIL's decompression-bomb limit applies), cross-origin requests
are refused unless origins are named. Every error is a JSON ``{"error": "one line"}`` with a 4xx status; an
unexpected failure is a 500 with no traceback (it goes to the server's log), and the server keeps serving.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import faiss
import numpy as np
import torch
from fastapi import FastAPI, File, Form, Query, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from swagger_ui_bundle import swagger_ui_path

from ..cpu import cores
from ..data.images import decode_image
from .batcher import Batcher
from .job import index_model
from .names import display
from .originals import NotServed, original
from .parts import read_thumb
from .searcher import Searcher, Unavailable, item_name

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
MAX_ID = (1 << 63) - 1  # SQLite's largest integer: a larger id names no item
UPLOAD_PATHS = ("/api/search/image", "/api/classify")
# a search (and its results' catalog rows) runs on the event loop while searches take under this on average, else on
# a worker thread: a hand-over costs more than a small index's search, and a slow one must not hold the loop
INLINE_SEARCH_MS = 1.0


@dataclass
class ServeOptions:
    device: str = "cpu"
    max_upload_bytes: int = 20 << 20
    cors_origins: List[str] = field(default_factory=list)
    max_k: int = 200
    max_query_chars: int = 500
    template: str = "a photo of {c}."
    model_threads: Optional[int] = None  # torch threads of a model pass; None: model_threads()
    map_vectors: bool = False  # stored vectors gathered from the parts mapped into memory (Searcher's ``mapped``)


def model_threads(workers: int = 1) -> int:
    """torch threads of one server process's model passes: alone, every core but one (its HTTP layer, upload decoding
    and searches need the last); one of ``workers`` processes, its share of the cores; at least one."""
    return max(1, cores() - 1) if workers == 1 else max(1, cores() // workers)


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Engine:
    """The model and the searcher behind the app. Model calls go through two batchers (text, image; batcher.py):
    concurrent requests share a forward pass, one pass at a time, on ``model_threads`` torch threads (every core
    but one: the HTTP layer, upload decoding and searches need the last; on the 2-core machine a Tiny text query
    took 1.8 ms on one thread and 2.0 ms on two, a batch of 8 4.4 and 5.4-10.5 ms: bench/search_http.py). Searches
    use one faiss thread (a search is one query) and never wait for a model call. When
    the index is re-embedded with another checkpoint while it serves, the new model is loaded on the next query
    (under the model lock: no pass runs with half a model).

    The endpoints are coroutines: a request hands its tokens to a batcher and awaits the pass's future on the event
    loop (the pass's thread wakes the loop; no thread of the pool waits for a model), uploads are decoded on a worker
    thread (PIL releases the GIL), and a search runs on the loop while searches are cheap (``INLINE_SEARCH_MS``)."""

    def __init__(self, root: str, opts: ServeOptions):
        self.root, self.opts = root, opts
        self.searcher = Searcher(root, mapped=opts.map_vectors)
        self.device = torch.device(opts.device)
        torch.set_num_threads(opts.model_threads or model_threads())
        # one query a search: faiss's OpenMP team would only add a barrier (13% of a loaded server's CPU samples)
        faiss.omp_set_num_threads(1)
        self.lock = threading.Lock()
        self.sha256 = None
        self._load(self.searcher.manifest)
        self.texts = Batcher(lambda x: self._encode(self.net.encode_text, x), lock=self.lock, name="text")
        self.images = Batcher(lambda x: self._encode(self.net.encode_image, x), lock=self.lock, name="image")
        self.search_ms = 0.0  # a moving average of a search's wall time (``search``)

    def _load(self, manifest) -> None:
        self.net, self.preprocess, self.tokenizer, _, _ = index_model(manifest, self.root, self.opts.device)
        self.sha256 = manifest["checkpoint_sha256"]

    def _current(self) -> None:
        self.searcher.reload_if_changed()
        if self.searcher.manifest["checkpoint_sha256"] != self.sha256:
            with self.lock:
                if self.searcher.manifest["checkpoint_sha256"] != self.sha256:
                    self._load(self.searcher.manifest)

    @torch.no_grad()
    def _encode(self, encode, x: torch.Tensor) -> np.ndarray:
        return encode(x.to(self.device), normalize=True).float().cpu().numpy()

    def text(self, texts: List[str]) -> np.ndarray:
        """(n, D) normalised text embeddings (a caller's thread waits; the endpoints await :meth:`text_async`)."""
        return self._text_future(texts).result()

    async def text_async(self, texts: List[str]) -> np.ndarray:
        return await asyncio.wrap_future(self._text_future(texts))

    def _text_future(self, texts: List[str]):
        self._current()
        return self.texts.submit(self.tokenizer(texts))

    def pixels(self, data: bytes) -> torch.Tensor:
        """The model's input for encoded image bytes; BadRequest for what is not a readable image."""
        try:
            return self.preprocess(decode_image(data))
        except Image.DecompressionBombError as e:
            raise BadRequest(413, f"image too large when decoded (decompression bomb limit): {e}") from None
        except Exception as e:  # noqa: BLE001 - whatever PIL raises, an unreadable upload is the client's mistake
            raise BadRequest(400, f"the upload is not a readable image ({type(e).__name__})") from None

    async def image_async(self, data: bytes) -> np.ndarray:
        """(D,) normalised embedding of encoded image bytes, decoded on a worker thread."""
        self._current()
        pixels = await run_in_threadpool(self.pixels, data)
        return (await asyncio.wrap_future(self.images.submit(pixels[None])))[0]

    def _timed(self, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.search_ms = 0.8 * self.search_ms + 0.2 * 1000 * (time.perf_counter() - t0)

    async def search(self, fn, *args):
        """``fn(*args)`` (a search and its results) on the event loop while searches are cheap, else on a worker
        thread (faiss releases the GIL: slow searches run side by side and the loop keeps answering)."""
        if self.search_ms < INLINE_SEARCH_MS:
            return self._timed(fn, *args)
        return await run_in_threadpool(self._timed, fn, *args)


def _tags(tags: Optional[str]) -> List[str]:
    return [t.strip().lower() for t in (tags or "").split(",") if t.strip()]


def create_app(root: str, opts: Optional[ServeOptions] = None) -> FastAPI:
    opts = opts or ServeOptions()
    engine = Engine(root, opts)
    searcher = engine.searcher
    app = FastAPI(title="superclip search", description=f"Search {root} with its SuperCLIP model and head tags.",
                  docs_url=None, redoc_url=None)
    app.state.engine = engine

    if opts.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=opts.cors_origins, allow_methods=["GET", "POST"])

    app.add_middleware(_UploadLimit, limit=opts.max_upload_bytes)

    @app.exception_handler(BadRequest)
    async def bad_request(request, exc: BadRequest):
        return _error(exc.status, exc.message)

    @app.exception_handler(NotServed)
    async def not_served(request, exc: NotServed):
        return _error(exc.status, exc.message)

    @app.exception_handler(Unavailable)
    async def unavailable(request, exc: Unavailable):
        return _error(503, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("query", "body", "path"))
        return _error(422, f"{where}: {first.get('msg', 'invalid')}" if where else first.get("msg", "invalid"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request, exc: Exception):
        if not searcher.layout.manifest.exists():  # the folder went away in the middle of the request
            return _error(503, str(searcher._gone()))
        log.exception("error serving %s", request.url.path)
        return _error(500, "internal error (the server log has the details)")

    def check_k(k: int) -> int:
        if not 1 <= k <= opts.max_k:
            raise BadRequest(400, f"k must be between 1 and {opts.max_k}, got {k}")
        return k

    async def read_upload(file: UploadFile) -> bytes:
        data = await file.read(opts.max_upload_bytes + 1)
        if len(data) > opts.max_upload_bytes:
            raise BadRequest(413, f"upload larger than the limit of {opts.max_upload_bytes} bytes")
        if not data:
            raise BadRequest(400, "the upload is empty")
        return data

    def found(vector, k: int, tags: Optional[str], exclude=()):
        # the request has checked the folder already (engine._current, live_item): a second check was 7 % of its CPU
        return searcher.results(searcher.search(vector, k, _tags(tags), exclude=exclude, reload=False))

    def respond(results, **extra):
        # a JSONResponse as it is: FastAPI's jsonable_encoder walking the results was 25% of a text query's CPU
        return JSONResponse({**extra, "results": results})

    @app.get("/api/health")
    def health():
        searcher.reload_if_changed()
        info = searcher.manifest.get("index") or {}
        return {"status": "ok", "items": searcher.count(), "dim": searcher.dim, "index": info.get("kind"),
                "recall_at_10": info.get("recall_at_10")}

    @app.get("/api/search")
    async def search_text(q: str = Query("", description="what to look for"), k: int = 20,
                    tags: Optional[str] = Query(None, description="comma-separated tags every result carries")):
        q = q.strip()
        if not q:
            raise BadRequest(400, "the query is empty")
        if len(q) > opts.max_query_chars:
            raise BadRequest(400, f"the query is longer than {opts.max_query_chars} characters")
        check_k(k)
        vector = (await engine.text_async([q]))[0]
        return respond(await engine.search(found, vector, k, tags), query=q)

    @app.post("/api/search/image")
    async def search_image(file: UploadFile = File(...), k: int = Form(20), tags: Optional[str] = Form(None)):
        check_k(k)
        vector = await engine.image_async(await read_upload(file))
        return respond(await engine.search(found, vector, k, tags))

    def live_item(item_id: int):
        searcher.reload_if_changed()
        item = searcher.catalog.items([item_id]).get(item_id) if 0 < item_id <= MAX_ID else None
        if item is None or item["deleted"]:
            raise BadRequest(404, f"no item with id {item_id}")
        return item

    @app.get("/api/items/{item_id}")
    def item(item_id: int):
        it = live_item(item_id)
        return {**{k: it[k] for k in ("id", "size", "mtime", "sha256", "tags")}, "path": display(it["path"]),
                "name": item_name(it)}

    @app.get("/api/items/{item_id}/similar")
    def similar(item_id: int, k: int = 20, tags: Optional[str] = None):
        check_k(k)
        live_item(item_id)
        vector = searcher.vector(item_id)
        return respond(found(vector, k, tags, exclude=[item_id]), id=item_id)

    @app.get("/api/items/{item_id}/image", responses={409: {"description": "changed since it was indexed"}})
    def image(item_id: int):
        """The original image, only while its bytes are the ones indexed (409 otherwise)."""
        data, media_type = original(live_item(item_id))
        return Response(data, media_type=media_type, headers={"Cache-Control": "no-store"})

    @app.get("/api/items/{item_id}/thumbnail")
    def thumb(item_id: int):
        """The small JPEG made when the item was embedded (the index's own copy: its original is not read)."""
        it = live_item(item_id)
        if it["thumb_size"] is None:  # an index built without thumbnails (--thumb-size 0, or an older version)
            return image(item_id)
        return Response(read_thumb(searcher.layout, it["part"], it["thumb_offset"], it["thumb_size"]),
                        media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/tags")
    def facets(limit: int = 30, tags: Optional[str] = None):
        searcher.reload_if_changed()
        if not 1 <= limit <= 1000:
            raise BadRequest(400, f"limit must be between 1 and 1000, got {limit}")
        return {"facets": [{"tag": t, "count": n} for t, n in searcher.catalog.facets(limit, _tags(tags))]}

    @app.post("/api/classify")
    async def classify(file: UploadFile = File(...), labels: str = Form(...)):
        names = [x.strip() for x in labels.split(",") if x.strip()]
        if len(names) < 2:
            raise BadRequest(400, "labels: give at least two comma-separated labels")
        if len(set(names)) < len(names) or len(names) > 100:
            raise BadRequest(400, "labels: at most 100 labels, each named once")
        vector = await engine.image_async(await read_upload(file))
        weights = await engine.text_async([opts.template.format(c=n) for n in names])
        scale = float(engine.net.logit_scale.detach().exp())
        probs = torch.from_numpy(scale * weights @ vector).softmax(0).tolist()
        ranked = sorted(zip(names, probs), key=lambda x: -x[1])
        return {"labels": [{"label": n, "probability": round(p, 6)} for n, p in ranked]}

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=app.title + " - API",
                                   swagger_js_url="/docs-static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-static/swagger-ui.css",
                                   swagger_favicon_url="/docs-static/favicon-32x32.png")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs-static", StaticFiles(directory=swagger_ui_path), name="docs-static")
    return app


def settle() -> int:
    """Before serving: collect, then move every object alive now (the model, torch, faiss, the app: ~460k objects)
    out of the garbage collector's view (``gc.freeze``), so that a full collection scans only what requests made. A
    full collection over them took ~220 ms, stalling every request in flight: the p99 of Tiny text queries at
    concurrency 8 was 126.7 ms for a p50 of 12.0 (bench/search_http.py). Returns the number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class _UploadLimit:
    """Refuses an upload whose Content-Length is over ``limit`` before its body is read. A plain ASGI middleware:
    Starlette's ``@app.middleware("http")`` streams every response through a task and a queue (17% of a text
    query's CPU, bench/search_http.py under py-spy)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] in UPLOAD_PATHS:
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit + 64 * 1024:
                await _error(413, f"upload larger than the limit of {self.limit} bytes")(scope, receive, send)
                return
        await self.app(scope, receive, send)

def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)
