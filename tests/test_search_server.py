"""``superclip serve``'s API through FastAPI's TestClient: every endpoint, and every bad request answered with a 4xx
JSON line (``{"error": ...}``) while the server keeps serving."""
import io
import struct
import zlib

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("faiss")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from .search_helpers import build_args, cli, make_checkpoint, write_scenes  # noqa: E402

N = 16


@pytest.fixture(scope="module")
def served(module_tmp):
    from superclip.search.server import ServeOptions, create_app

    root = module_tmp("search-server")
    ckpt = make_checkpoint(root / "tiny.pt")
    paths = write_scenes(root / "images", N)
    assert cli(*build_args(ckpt, root / "idx", root / "images")) == 0
    app = create_app(str(root / "idx"), ServeOptions(max_upload_bytes=40_000))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, paths, app


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A PNG header claiming width x height pixels (400 M, over PIL's 179 M bomb limit) with a few bytes of data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_health_and_page(served):
    client, _, _ = served
    r = client.get("/api/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "items": N, "dim": 32, "index": "flat", "recall_at_10": 1.0}
    page = client.get("/")
    assert page.status_code == 200 and "<title>superclip search</title>" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert "/api/search" in client.get("/openapi.json").json()["paths"]


def test_text_search_scores_are_cosines_in_order(served):
    client, _, app = served
    r = client.get("/api/search", params={"q": "a red circle", "k": 5})
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == 5 and {"id", "score", "path", "tags"} <= set(results[0])
    engine = app.state.engine
    q = engine.text(["a red circle"])[0]
    expected = sorted(((float(engine.searcher.vector(i) @ q), i) for i in range(1, N + 1)), reverse=True)[:5]
    assert [x["id"] for x in results] == [i for _, i in expected]
    np.testing.assert_allclose([x["score"] for x in results], [s for s, _ in expected], atol=1e-5)


def test_image_search_finds_the_uploaded_image_first(served):
    client, paths, _ = served
    data = paths[3].read_bytes()
    r = client.post("/api/search/image", files={"file": ("x.png", data, "image/png")}, data={"k": "3"})
    assert r.status_code == 200
    top = r.json()["results"][0]
    assert top["path"] == str(paths[3]) and top["score"] > 0.999


def test_more_like_this_excludes_the_item_and_tags_filter(served):
    client, _, _ = served
    r = client.get("/api/items/2/similar", params={"k": 50})
    ids = [x["id"] for x in r.json()["results"]]
    assert r.status_code == 200 and 2 not in ids and len(ids) == N - 1
    facets = client.get("/api/tags", params={"limit": 5}).json()["facets"]
    assert facets and facets == sorted(facets, key=lambda f: (-f["count"], f["tag"]))
    tag, count = facets[0]["tag"], facets[0]["count"]
    r = client.get("/api/search", params={"q": "anything", "k": 50, "tags": tag})
    got = r.json()["results"]
    assert len(got) == count and all(tag in [t for t, _ in x["tags"]] for x in got)
    narrowed = client.get("/api/tags", params={"tags": tag}).json()["facets"]
    assert {"tag": tag, "count": count} in narrowed


def test_item_and_its_image_bytes(served):
    client, paths, _ = served
    item = client.get("/api/items/1").json()
    assert item["path"] == str(paths[0]) and len(item["tags"]) == 5
    r = client.get("/api/items/1/image")
    assert r.status_code == 200 and r.content == paths[0].read_bytes() and r.headers["content-type"] == "image/png"


def test_classify_probabilities_sum_to_one(served):
    client, paths, _ = served
    r = client.post("/api/classify", files={"file": ("x.png", paths[0].read_bytes(), "image/png")},
                    data={"labels": "red, blue ,green"})
    labels = r.json()["labels"]
    assert r.status_code == 200 and sorted(x["label"] for x in labels) == ["blue", "green", "red"]
    assert abs(sum(x["probability"] for x in labels) - 1) < 1e-4


BAD = [
    ("get", "/api/search", {"params": {"q": "  "}}, 400, "the query is empty"),
    ("get", "/api/search", {"params": {"q": "x", "k": 0}}, 400, "k must be between 1 and 200, got 0"),
    ("get", "/api/search", {"params": {"q": "x", "k": 201}}, 400, "k must be between 1 and 200, got 201"),
    ("get", "/api/search", {"params": {"q": "x", "k": "ten"}}, 422,
     "k: Input should be a valid integer, unable to parse string as an integer"),
    ("get", "/api/search", {"params": {"q": "x" * 501}}, 400, "the query is longer than 500 characters"),
    ("get", "/api/items/999", {}, 404, "no item with id 999"),
    ("get", "/api/items/999/image", {}, 404, "no item with id 999"),
    ("get", "/api/items/999/similar", {}, 404, "no item with id 999"),
    ("get", "/api/items/abc", {}, 422,
     "item_id: Input should be a valid integer, unable to parse string as an integer"),
    ("get", "/api/tags", {"params": {"limit": 0}}, 400, "limit must be between 1 and 1000, got 0"),
    ("get", "/etc/passwd", {}, 404, "Not Found"),
    ("get", "/static/../../catalog.sqlite", {}, 404, "Not Found"),
    ("post", "/api/search/image", {"files": {"file": ("a.txt", b"hello, not an image", "text/plain")}}, 400,
     "the upload is not a readable image (UnidentifiedImageError)"),
    ("post", "/api/search/image", {"files": {"file": ("a.png", b"", "image/png")}}, 400, "the upload is empty"),
    ("post", "/api/search/image", {"files": {"file": ("big.png", b"\0" * 200_000, "image/png")}}, 413,
     "upload larger than the limit of 40000 bytes"),
    ("post", "/api/search/image", {}, 422, "file: Field required"),
    ("post", "/api/classify", {"files": {"file": ("a.png", b"x", "image/png")}, "data": {"labels": "cat"}}, 400,
     "labels: give at least two comma-separated labels"),
]


@pytest.mark.parametrize("method,url,kwargs,status,message", BAD, ids=[f"{b[1]}-{b[3]}-{i}" for i, b in enumerate(BAD)])
def test_bad_requests_get_one_json_line(served, method, url, kwargs, status, message):
    client, _, _ = served
    r = getattr(client, method)(url, **kwargs)
    assert (r.status_code, r.json()) == (status, {"error": message})
    assert client.get("/api/health").status_code == 200  # and the server keeps serving


def test_decompression_bomb_and_a_body_over_the_limit_without_content_length(served):
    client, _, _ = served
    r = client.post("/api/search/image", files={"file": ("bomb.png", bomb_png(), "image/png")})
    assert r.status_code == 413 and r.json()["error"].startswith("image too large when decoded (decompression bomb")
    assert "\n" not in r.json()["error"] and "Traceback" not in r.text

    def chunks():  # streamed: no Content-Length, so the limit is enforced on the bytes read
        boundary = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n\r\n"
        yield boundary
        for _ in range(10):
            yield b"\0" * 10_000
        yield b"\r\n--b--\r\n"
    r = client.post("/api/search/image", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert (r.status_code, r.json()) == (413, {"error": "upload larger than the limit of 40000 bytes"})


def test_no_cors_unless_asked(served):
    from superclip.search.server import ServeOptions, create_app

    client, _, app = served
    r = client.get("/api/health", headers={"origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    r = client.options("/api/search", headers={"origin": "http://evil.example", "access-control-request-method": "GET"})
    assert "access-control-allow-origin" not in r.headers
    root = app.state.engine.searcher.layout.root
    with TestClient(create_app(str(root), ServeOptions(cors_origins=["http://ok.example"]))) as other:
        r = other.get("/api/health", headers={"origin": "http://ok.example"})
        assert r.headers["access-control-allow-origin"] == "http://ok.example"
        r = other.get("/api/health", headers={"origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_serve_binds_loopback_by_default():
    from superclip.cli import build_parser

    args = build_parser().parse_args(["serve", "some-dir"])
    assert (args.host, args.port, args.max_upload, args.cors_origin) == ("127.0.0.1", 8000, 20 << 20, None)
