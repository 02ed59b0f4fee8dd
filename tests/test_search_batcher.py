"""Model calls batched across concurrent requests (search/batcher.py): each request gets exactly the embedding it
would get alone (<= 1e-6), the requests really share passes, an error reaches every request of its pass, and the
server's text and image searches go through the batchers."""
import threading

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("faiss")

TEXTS = ["a", "a red circle", "a small blue square on a large green triangle", "yellow", "two purple circles",
         "a photo of a red square and a blue circle next to a green triangle", "square", "a large yellow circle"]


def _concurrently(batcher, inputs):
    """Every input handed in from its own thread while the batcher's pass lock is held, so that all of them wait
    and share at most two passes (the worker may have gathered some before the rest arrived); returns the outputs
    in input order."""
    out = [None] * len(inputs)

    def run(i):
        out[i] = batcher(inputs[i])

    with batcher.lock:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        while batcher.waiting < len(inputs):  # all handed in: queued, or gathered by the worker waiting on the lock
            threading.Event().wait(0.01)
    for t in threads:
        t.join(60)
    return out


@pytest.fixture(scope="module")
def tiny():
    import superclip

    from .conftest import TINY_CFG

    model = superclip.create_model(TINY_CFG).eval()
    return model, superclip.get_tokenizer(model.config), superclip.get_transforms(model)[1]


def test_batched_text_and_image_embeddings_equal_single_calls(tiny):
    import torch

    from superclip.data.synthetic import SyntheticCaptions
    from superclip.search.batcher import Batcher

    model, tokenizer, preprocess = tiny

    @torch.no_grad()
    def text(x):
        return model.encode_text(x, normalize=True).float().numpy()

    @torch.no_grad()
    def image(x):
        return model.encode_image(x, normalize=True).float().numpy()

    texts = Batcher(text, name="text")
    tokens = [tokenizer([t]) for t in TEXTS] + [tokenizer(TEXTS[:3])]  # the last: 3 rows from one caller
    got = _concurrently(texts, tokens)
    assert texts.passes <= 2 and texts.rows == len(TEXTS) + 3  # 9 callers, 11 rows, at most 2 passes
    for t, g in zip(tokens, got):
        assert g.shape == (len(t), 32)  # TINY_CFG embeds in 32 dimensions
        np.testing.assert_allclose(g, text(t), atol=1e-6, rtol=0)
    data = SyntheticCaptions(6, image_size=64, seed=3)
    pixels = [preprocess(data[i][0])[None] for i in range(6)]
    images = Batcher(image, name="image")
    got = _concurrently(images, pixels)
    assert images.passes <= 2 and images.rows == 6
    for p, g in zip(pixels, got):
        np.testing.assert_allclose(g, image(p), atol=1e-6, rtol=0)
    texts.close()
    images.close()


def test_an_error_in_a_pass_reaches_each_of_its_requests_and_the_next_pass_runs():
    import torch

    from superclip.search.batcher import Batcher

    def fn(x):
        if (x < 0).any():
            raise ValueError("negative input")
        return x.numpy() * 2

    b = Batcher(fn)
    got = []

    def run(v):
        try:
            got.append(("ok", b(torch.tensor([[v]])).item()))
        except ValueError as e:
            got.append(("error", str(e)))

    inputs = [1.0, -1.0, 3.0]
    with b.lock:
        threads = [threading.Thread(target=run, args=(v,)) for v in inputs]
        for t in threads:
            t.start()
        while b.waiting < 3:
            threading.Event().wait(0.01)
    for t in threads:
        t.join(10)
    assert len(got) == 3 and ("error", "negative input") in got  # the pass holding -1 failed for its requests
    assert b(torch.tensor([[5.0]])).item() == 10.0  # and the batcher still serves
    b.close()


def test_server_searches_go_through_the_batchers(module_tmp):
    from fastapi.testclient import TestClient

    from superclip.search.server import create_app

    from .search_helpers import build_args, cli, make_checkpoint, write_scenes

    root = module_tmp("search-batcher")
    ckpt = make_checkpoint(root / "tiny.pt")
    write_scenes(root / "images", 8)
    assert cli(*build_args(ckpt, root / "idx", root / "images")) == 0
    app = create_app(str(root / "idx"))
    engine = app.state.engine
    with TestClient(app) as client:
        alone = {q: client.get("/api/search", params={"q": q, "k": 5}).json()["results"] for q in TEXTS[:4]}
        passes = engine.texts.passes
        assert passes == 4
        together = {}

        def ask(q):
            together[q] = client.get("/api/search", params={"q": q, "k": 5}).json()["results"]

        with engine.lock:  # the queries arrive while a pass runs: they share the next one
            threads = [threading.Thread(target=ask, args=(q,)) for q in TEXTS[:4]]
            for t in threads:
                t.start()
            while engine.texts.waiting < 4:
                threading.Event().wait(0.01)
        for t in threads:
            t.join(60)
        assert engine.texts.passes - passes <= 2
        for q in TEXTS[:4]:
            assert [r["id"] for r in together[q]] == [r["id"] for r in alone[q]]
            np.testing.assert_allclose([r["score"] for r in together[q]], [r["score"] for r in alone[q]], atol=2e-6)


@pytest.fixture(scope="module")
def batched_app(module_tmp):
    from superclip.search.server import create_app

    from .search_helpers import build_args, cli, make_checkpoint, write_scenes

    root = module_tmp("search-async")
    ckpt = make_checkpoint(root / "tiny.pt")
    paths = write_scenes(root / "images", 8)
    assert cli(*build_args(ckpt, root / "idx", root / "images")) == 0
    return create_app(str(root / "idx")), paths


def test_an_upload_waiting_for_its_model_pass_does_not_hold_the_event_loop(batched_app):
    """Before the endpoints awaited the batchers, an image search waited for its pass on the event loop itself:
    while it waited no other request was answered (here: /api/health did not answer in 20 s)."""
    from fastapi.testclient import TestClient

    app, paths = batched_app
    engine = app.state.engine
    upload = {"file": ("a.png", paths[0].read_bytes(), "image/png")}
    with TestClient(app) as client:
        alone = client.post("/api/search/image", files=upload, data={"k": "3"}).json()["results"]
        got, health = {}, {}
        with engine.lock:  # no pass can run: the upload waits for one
            t = threading.Thread(target=lambda: got.update(client.post("/api/search/image", files=upload,
                                                                        data={"k": "3"}).json()))
            t.start()
            while engine.images.waiting < 1:
                threading.Event().wait(0.01)
            h = threading.Thread(target=lambda: health.update(client.get("/api/health").json()))
            h.start()
            h.join(20)
            answered_while_waiting = dict(health)
        t.join(60)
        h.join(60)
    assert answered_while_waiting.get("status") == "ok" and answered_while_waiting["items"] == 8
    assert [r["id"] for r in got["results"]] == [r["id"] for r in alone]
    np.testing.assert_allclose([r["score"] for r in got["results"]], [r["score"] for r in alone], atol=2e-6)


def test_a_slow_search_moves_off_the_event_loop_with_the_same_results(batched_app, monkeypatch):
    """A search runs on the event loop while searches average under INLINE_SEARCH_MS, on a worker thread once they
    do not; the answer is the same either way."""
    from fastapi.testclient import TestClient

    app, _ = batched_app
    engine, searcher = app.state.engine, app.state.engine.searcher
    threads = []
    search = searcher.search

    def recorded(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return search(*args, **kwargs)

    monkeypatch.setattr(searcher, "search", recorded)
    with TestClient(app) as client:
        engine.search_ms = 0.0
        inline = client.get("/api/search", params={"q": "a red circle", "k": 5}).json()["results"]
        engine.search_ms = 1e6  # as after a run of slow searches
        moved = client.get("/api/search", params={"q": "a red circle", "k": 5}).json()["results"]
    assert not threads[0].startswith("AnyIO worker") and threads[1].startswith("AnyIO worker")
    assert moved == inline and len(inline) == 5
    assert 0 < engine.search_ms < 1e6  # the slow search's own time entered the average


def test_settle_takes_the_loaded_server_out_of_the_collectors_view(batched_app):
    """serve calls settle() before it answers: every object alive then is frozen, and a full collection afterwards
    visits none of them (it scanned ~460k objects, ~220 ms, before)."""
    import gc

    from superclip.search.server import settle

    try:
        frozen = settle()
        assert frozen == gc.get_freeze_count() > 10_000  # the app, the model, torch: far more than a request makes
        assert all(len(g) < frozen / 10 for g in (gc.get_objects(generation=i) for i in range(3)))
    finally:
        gc.unfreeze()
