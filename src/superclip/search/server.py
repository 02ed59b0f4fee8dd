"""``superclip serve``: a FastAPI app over an index folder: text search, image search (upload), more like this, tag
filters and facets, zero-shot classification of an upload, an item's image, health; the search page at ``/``.

Safety: the app opens only files the catalog recorded (a request names an id, never a path), uploads are capped
(``max_upload_bytes``, checked on Content-Length before the body is parsed and again on the bytes read), images are
decoded by :func:`superclip.data.images.decode_image` (PIL's decompression-bomb limit applies), cross-origin requests
are refused unless origins are named. Every error is a JSON ``{"error": "one line"}`` with a 4xx status; an
unexpected failure is a 500 with no traceback (it goes to the server's log), and the server keeps serving.
"""
from __future__ import annotations

import logging
import mimetypes
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import faiss
import numpy as np
import torch
from fastapi import FastAPI, File, Form, Query, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.images import decode_image
from ..errors import ConfigError
from .batcher import Batcher
from .collection import checkpoint_hash
from .job import load_for_search
from .searcher import Searcher

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
UPLOAD_PATHS = ("/api/search/image", "/api/classify")


@dataclass
class ServeOptions:
    device: str = "cpu"
    max_upload_bytes: int = 20 << 20
    cors_origins: List[str] = field(default_factory=list)
    max_k: int = 200
    max_query_chars: int = 500
    template: str = "a photo of {c}."
    model_threads: Optional[int] = None  # torch threads of a model pass; None: every core but one (at least 1)


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Engine:
    """The model and the searcher behind the app. Model calls go through two batchers (text, image; batcher.py):
    concurrent requests share a forward pass, one pass at a time, on ``model_threads`` torch threads (every core
    but one: the HTTP layer, upload decoding and searches need the last; on the 2-core machine a Tiny text query
    took 1.8 ms on one thread and 2.0 ms on two, a batch of 8 4.4 and 5.4-10.5 ms: bench/search_http.py). Searches
    run on the request's own thread (one faiss thread: a search is one query) and never wait for a model call."""

    def __init__(self, root: str, opts: ServeOptions):
        self.searcher = Searcher(root)
        m = self.searcher.manifest
        self.net, self.preprocess, self.tokenizer, _, info = load_for_search(m["model"], m["pretrained"], opts.device)
        if checkpoint_hash(info.get("path")) != m["checkpoint_sha256"]:
            raise ConfigError(f"the checkpoint {m['pretrained']} changed since {root} was built (sha256 differs)")
        self.device = torch.device(opts.device)
        torch.set_num_threads(opts.model_threads or max(1, (os.cpu_count() or 1) - 1))
        # one query a search: faiss's OpenMP team would only add a barrier (13% of a loaded server's CPU samples)
        faiss.omp_set_num_threads(1)
        self.lock = threading.Lock()
        self.texts = Batcher(lambda x: self._encode(self.net.encode_text, x), lock=self.lock, name="text")
        self.images = Batcher(lambda x: self._encode(self.net.encode_image, x), lock=self.lock, name="image")

    @torch.no_grad()
    def _encode(self, encode, x: torch.Tensor) -> np.ndarray:
        return encode(x.to(self.device), normalize=True).float().cpu().numpy()

    def text(self, texts: List[str]) -> np.ndarray:
        """(n, D) normalised text embeddings."""
        return self.texts(self.tokenizer(texts))

    @torch.no_grad()
    def image(self, data: bytes) -> np.ndarray:
        """(D,) normalised embedding of encoded image bytes; BadRequest for what is not a readable image."""
        try:
            pixels = self.preprocess(decode_image(data))
        except Image.DecompressionBombError as e:
            raise BadRequest(413, f"image too large when decoded (decompression bomb limit): {e}") from None
        except Exception as e:  # noqa: BLE001 - whatever PIL raises, an unreadable upload is the client's mistake
            raise BadRequest(400, f"the upload is not a readable image ({type(e).__name__})") from None
        return self.images(pixels[None])[0]


def _tags(tags: Optional[str]) -> List[str]:
    return [t.strip().lower() for t in (tags or "").split(",") if t.strip()]


def create_app(root: str, opts: Optional[ServeOptions] = None) -> FastAPI:
    opts = opts or ServeOptions()
    engine = Engine(root, opts)
    searcher = engine.searcher
    app = FastAPI(title="superclip search", description=f"Search {root} with its SuperCLIP model and head tags.")
    app.state.engine = engine

    if opts.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=opts.cors_origins, allow_methods=["GET", "POST"])

    app.add_middleware(_UploadLimit, limit=opts.max_upload_bytes)

    @app.exception_handler(BadRequest)
    async def bad_request(request, exc: BadRequest):
        return _error(exc.status, exc.message)

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

    def respond(hits, **extra):
        # a JSONResponse as it is: FastAPI's jsonable_encoder walking the results was 25% of a text query's CPU
        return JSONResponse({**extra, "results": searcher.results(hits)})

    @app.get("/api/health")
    def health():
        searcher.reload_if_changed()
        info = searcher.manifest.get("index") or {}
        return {"status": "ok", "items": searcher.count(), "dim": searcher.dim, "index": info.get("kind"),
                "recall_at_10": info.get("recall_at_10")}

    @app.get("/api/search")
    def search_text(q: str = Query("", description="what to look for"), k: int = 20,
                    tags: Optional[str] = Query(None, description="comma-separated tags every result carries")):
        q = q.strip()
        if not q:
            raise BadRequest(400, "the query is empty")
        if len(q) > opts.max_query_chars:
            raise BadRequest(400, f"the query is longer than {opts.max_query_chars} characters")
        hits = searcher.search(engine.text([q])[0], check_k(k), _tags(tags))
        return respond(hits, query=q)

    @app.post("/api/search/image")
    async def search_image(file: UploadFile = File(...), k: int = Form(20), tags: Optional[str] = Form(None)):
        check_k(k)
        vector = engine.image(await read_upload(file))
        return respond(searcher.search(vector, k, _tags(tags)))

    def live_item(item_id: int):
        item = searcher.catalog.items([item_id]).get(item_id)
        if item is None or item["deleted"]:
            raise BadRequest(404, f"no item with id {item_id}")
        return item

    @app.get("/api/items/{item_id}")
    def item(item_id: int):
        it = live_item(item_id)
        return {k: it[k] for k in ("id", "path", "size", "mtime", "sha256", "tags")}

    @app.get("/api/items/{item_id}/similar")
    def similar(item_id: int, k: int = 20, tags: Optional[str] = None):
        check_k(k)
        live_item(item_id)
        vector = searcher.vector(item_id)
        return respond(searcher.search(vector, k, _tags(tags), exclude=[item_id]), id=item_id)

    @app.get("/api/items/{item_id}/image")
    def image(item_id: int):
        it = live_item(item_id)
        if it["source"]:
            from ..data.webdataset import IMAGE_EXTS, Shard

            with Shard(it["source"]) as shard:
                sample = shard[it["shard_index"]]
            ext = next(e for e in IMAGE_EXTS if e in sample)
            return Response(sample[ext], media_type=mimetypes.types_map.get("." + ext, "image/jpeg"))
        path = Path(it["path"])
        if not path.is_file():
            raise BadRequest(404, f"the image of item {item_id} is no longer on disk")
        return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")

    @app.get("/api/tags")
    def facets(limit: int = 30, tags: Optional[str] = None):
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
        vector = engine.image(await read_upload(file))
        weights = engine.text([opts.template.format(c=n) for n in names])
        scale = float(engine.net.logit_scale.detach().exp())
        probs = torch.from_numpy(scale * weights @ vector).softmax(0).tolist()
        ranked = sorted(zip(names, probs), key=lambda x: -x[1])
        return {"labels": [{"label": n, "probability": round(p, 6)} for n, p in ranked]}

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


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
