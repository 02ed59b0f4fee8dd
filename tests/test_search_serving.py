"""What ``superclip serve`` sends and how it fails (issue 25, items 1 and 7): an item's bytes only while they are the
bytes indexed, never through a path the catalog did not record; thumbnails from the index folder; clean JSON errors
for huge ids, a failing ``pipe:`` command, a deleted index folder; ``HEAD /``; ``/docs`` without a CDN; a bad port
in one line before anything is announced."""
import os
import shutil
import socket
import tarfile

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("faiss")

from fastapi.testclient import TestClient  # noqa: E402

from .search_helpers import build_args, cli, make_checkpoint, write_scene_shards, write_scenes  # noqa: E402


@pytest.fixture(scope="module")
def base(module_tmp):
    """A tiny checkpoint, 4 scenes, a local shard of 3 samples and a ``pipe:`` shard that counts its runs."""
    root = module_tmp("search-serving")
    ckpt = make_checkpoint(root / "tiny.pt")
    write_scenes(root / "scenes", 4)
    shards = write_scene_shards(root / "shards", 6)
    return {"root": root, "ckpt": ckpt, "shards": shards}


def _fresh(base, tmp_path):
    """A copy of the scenes and shards in ``tmp_path`` indexed there; (client, app, index folder, images, shards,
    pipe counter file). The pipe: shard appends a line to the counter each time its command runs."""
    from superclip.search.server import create_app

    images = tmp_path / "images"
    shutil.copytree(base["root"] / "scenes", images)
    shards = [tmp_path / os.path.basename(s) for s in base["shards"]]
    for s, d in zip(base["shards"], shards):
        shutil.copy(s, d)
    counter = tmp_path / "runs.txt"
    pipe = f"pipe:echo run >> {counter}; cat {shards[1]}"
    out = tmp_path / "idx"
    assert cli(*build_args(base["ckpt"], out, images, str(shards[0]), pipe)) == 0
    counter.unlink()  # the build's own run
    return TestClient(create_app(str(out)), raise_server_exceptions=False), out, images, shards, counter


@pytest.fixture(scope="module")
def shared(base, module_tmp):
    """One index for the tests that change nothing on disk."""
    return _fresh(base, module_tmp("search-serving-shared"))


def _id_of(client, name):
    from superclip.search.catalog import Catalog

    root = client.app.state.engine.searcher.layout.root
    cat = Catalog(root / "catalog.sqlite", readonly=True)
    try:
        return next(i for i, p, _ in cat._all("SELECT id, path, deleted FROM items") if str(p).endswith(name))
    finally:
        cat.close()


def test_an_indexed_file_replaced_by_a_link_or_another_image_is_never_sent(base, tmp_path):
    """The security test. Before: ``/api/items/ID/image`` sent whatever the path held (200, image/png): the bytes of
    a file outside the collection through a symbolic link, another image copied over it, a same-named file in a folder
    a link now stands for; each is a 409 JSON line now, and nothing of those bytes is in the answer."""
    client, _, images, _, _ = _fresh(base, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"password: hunter2\n" * 20)
    a0, b1, a2 = images / "a" / "0000.png", images / "b" / "0001.png", images / "a" / "0002.png"
    ids = {p: _id_of(client, str(p)) for p in (a0, b1, a2)}
    original = a2.read_bytes()
    r = client.get(f"/api/items/{ids[a2]}/image")
    assert (r.status_code, r.content, r.headers["content-type"]) == (200, original, "image/png")

    a0.unlink()
    os.symlink(secret, a0)  # the indexed file is now a link to a file outside the collection
    os.symlink("/etc/passwd", images / "passwd.png")
    shutil.copy(a2, b1)  # another image in the place of b1 (same type, other bytes)
    for path in (a0, b1):
        r = client.get(f"/api/items/{ids[path]}/image")
        assert r.status_code == 409, (path, r.status_code, r.content[:40])
        assert r.json()["error"].startswith(f"the image of item {ids[path]} changed since it was indexed (")
        assert r.json()["error"].endswith("): run superclip index add") and b"hunter2" not in r.content
        assert r.content != original
    # a folder on the path replaced by a link to a folder holding the same name with the same bytes: the catalog
    # recorded no link there, so nothing is read through it
    moved = tmp_path / "elsewhere"
    shutil.move(str(images / "a"), moved)
    os.symlink(moved, images / "a")
    r = client.get(f"/api/items/{ids[a2]}/image")
    assert r.status_code == 409 and "symbolic link" in r.json()["error"]
    # only a changed mtime (same bytes): still the indexed image, sent
    os.unlink(images / "a")
    shutil.move(str(moved), images / "a")
    os.utime(a2, (1e9, 1e9))
    r = client.get(f"/api/items/{ids[a2]}/image")
    assert (r.status_code, r.content) == (200, original)
    a2.unlink()
    r = client.get(f"/api/items/{ids[a2]}/image")
    assert r.status_code == 404 and r.json()["error"].startswith(f"the image of item {ids[a2]} is no longer on disk")


def test_a_shard_replaced_by_another_never_serves_its_sample(base, tmp_path):
    """Before: a shard replaced by another one served that one's sample under this item's id and tags (200)."""
    client, _, _, shards, _ = _fresh(base, tmp_path)
    item = _id_of(client, "#00000001")
    good = client.get(f"/api/items/{item}/image")
    assert good.status_code == 200 and good.headers["content-type"] == "image/png"
    shutil.copy(shards[1], shards[0])  # other samples, other keys, same positions
    r = client.get(f"/api/items/{item}/image")
    assert r.status_code == 409 and "its shard holds another sample there" in r.json()["error"]
    with tarfile.open(shards[0], "w"):  # an empty archive: fewer samples than indexed
        pass
    r = client.get(f"/api/items/{item}/image")
    assert r.status_code in (409, 502) and r.json()["error"] and r.content != good.content


def test_thumbnails_come_from_the_index_and_never_rerun_a_pipe(shared):
    """Before: the page showed each ``pipe:`` item through ``/image``, running its shard's command once per image (40
    a page). Thumbnails are made while embedding and read from the index folder: the command never runs."""
    from PIL import Image

    client, out, _, _, counter = shared
    pipe_items = [_id_of(client, f"#0000000{k}") for k in (3, 4, 5)]
    for item in pipe_items:
        r = client.get(f"/api/items/{item}/thumbnail")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert Image.open(__import__("io").BytesIO(r.content)).size == (32, 32)  # never enlarged
    assert not counter.exists()  # the pipe: command did not run
    assert client.get(f"/api/items/{pipe_items[0]}/image").status_code == 200  # the original, on request: runs it
    assert counter.read_text() == "run\n"
    counter.unlink()
    assert sorted(p.name for p in (out / "thumbs").iterdir()) == [f"thumbs_0000{i}.bin" for i in range(3)]


def test_a_pipe_whose_command_now_fails_is_a_json_error(base, tmp_path):
    """Before: 500 ("internal error") from the image endpoint when the ``pipe:`` command failed."""
    client, _, _, shards, _ = _fresh(base, tmp_path)
    item = _id_of(client, "#00000004")
    shards[1].unlink()
    r = client.get(f"/api/items/{item}/image")
    assert r.status_code == 502 and r.json()["error"].startswith(f"the image of item {item} cannot be read from its "
                                                                 "shard now")
    assert client.get("/api/health").status_code == 200


def test_a_deleted_index_folder_gives_clean_errors_and_no_stale_data(base, tmp_path):
    """Before: 500 from health, search and similar, and the deleted catalog's data (200) from items and tags."""
    client, out, _, _, _ = _fresh(base, tmp_path)
    assert client.get("/api/items/1").status_code == 200
    shutil.rmtree(out)
    for url in ("/api/health", "/api/search?q=red", "/api/items/1", "/api/items/1/similar", "/api/items/1/image",
                "/api/items/1/thumbnail", "/api/tags"):
        r = client.get(url)
        assert r.status_code == 503, (url, r.status_code, r.text)
        assert r.json() == {"error": f"the index folder {out} is gone (deleted or moved): nothing can be served "
                                     "from it"}
    assert client.get("/").status_code == 200  # the page still loads (and says so through the API)


def test_huge_ids_head_and_offline_docs(shared):
    """Before: a 500 (SQLite integer overflow) for ids past 2**63 - 1; 405 for ``HEAD /``; ``/docs`` loading its
    scripts from cdn.jsdelivr.net (a blank page offline)."""
    client = shared[0]
    for url in ("/api/items/99999999999999999999", "/api/items/9223372036854775808/image",
                "/api/items/9223372036854775808/similar", "/api/items/18446744073709551616/thumbnail",
                "/api/items/0", "/api/items/-5"):
        r = client.get(url)
        assert r.status_code == 404 and r.json()["error"].startswith("no item with id"), (url, r.text)
    assert client.head("/").status_code == 200
    page = client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assert "cdn." not in page.text and "https://" not in page.text
    for asset in ("/docs-static/swagger-ui-bundle.js", "/docs-static/swagger-ui.css"):
        assert asset in page.text
        r = client.get(asset)
        assert r.status_code == 200 and len(r.content) > 10_000
    assert client.get("/redoc").status_code == 404


def test_a_bad_port_is_one_line_before_anything_is_announced(shared, tmp_path, capfd):
    """Before: ``--port 70000`` printed "serving ... on http://127.0.0.1:70000/" then a traceback (OverflowError)."""
    from superclip.cli import main

    for argv in (["serve", str(tmp_path), "--port", "70000"], ["serve", str(tmp_path), "--port", "-1"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capfd.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "serving" not in err
        assert "--port: must be a TCP port (0 to 65535)" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", str(shared[1]), "--port", str(port)]) == 2
    err = capfd.readouterr().err
    assert err == f"superclip serve: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def _children(pid):
    from pathlib import Path

    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def _cpu_ticks(pid):
    from pathlib import Path

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _start_workers(index, workers):
    import subprocess
    import sys
    import time
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "superclip", "serve", str(index), "--port", "0", "--workers",
                             str(workers)], stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    assert f"{workers} worker processes" in line, line
    port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
    deadline = time.monotonic() + 120
    while True:  # every worker answering: each has its own socket, the kernel picks one a connection
        try:
            if all(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5).status == 200
                   for _ in range(8)) and len(_children(proc.pid)) == workers:
                break
        except OSError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.3)
    return proc, port


@pytest.mark.skipif(not hasattr(os, "fork") or not os.path.exists("/proc/self/task"), reason="Linux: fork, /proc")
def test_serve_workers_share_the_port_answer_alike_and_stop_together(shared):
    """``serve --workers 2``: two processes at one port, both answering (their CPU time grows), the same results
    from each; SIGTERM to the parent stops both (exit 0); a worker killed stops the other, with one line."""
    import json
    import signal
    import urllib.request

    proc, port = _start_workers(shared[1], 2)
    try:
        workers = _children(proc.pid)
        before = {w: _cpu_ticks(w) for w in workers}
        answers = set()
        for _ in range(160):  # a new connection each: spread by the kernel between the two sockets
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/search?q=a+red+circle&k=3", timeout=30) as r:
                answers.add(json.dumps(json.loads(r.read())["results"]))
        assert len(answers) == 1
        grown = [_cpu_ticks(w) - before[w] for w in workers]
        assert min(grown) >= 3, grown  # each answered a share (~2 ms of CPU a request): not one taking every socket
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert all(not os.path.exists(f"/proc/{w}") or "Z" in open(f"/proc/{w}/stat").read().split()[2]
                   for w in workers)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc, port = _start_workers(shared[1], 2)
    try:
        victim = _children(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        assert proc.wait(60) == 1
        assert proc.stderr.read() == f"superclip serve: worker process {victim} ended (signal SIGKILL): stopping the " \
                                     "others\n"
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_worker_that_crashes_before_it_is_ready_is_exit_1_not_a_user_mistake(shared, monkeypatch, capfd):
    """A worker failing on a bug (not a user's mistake) while it starts: ``serve`` says so in one line, exit 1 (it
    was exit 2, the code of a user's mistake), after stopping the other worker; nothing is announced."""
    from superclip.cli import main
    from superclip.search import server

    def broken(*a, **k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(server, "create_app", broken)  # the forked workers inherit it
    assert main(["serve", str(shared[1]), "--port", "0", "--workers", "2"]) == 1
    err = capfd.readouterr().err
    assert "superclip serve: a worker process ended before it was ready" in err and "\nserving " not in "\n" + err
