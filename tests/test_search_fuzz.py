"""``superclip serve``'s API fuzzed from its own OpenAPI spec (schemathesis, over a real tiny index): every generated
request, valid or not, gets a 2xx or a 4xx JSON ``{"error": "one line"}``, never a 500, and the server keeps
serving. Bounded (``MAX_EXAMPLES`` per operation, derandomized: the same requests every run)."""
import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("faiss")

from hypothesis import HealthCheck, settings  # noqa: E402

from .search_helpers import build_args, cli, make_checkpoint, write_scene_shards, write_scenes  # noqa: E402

MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def app(module_tmp):
    from superclip.search.server import ServeOptions, create_app

    root = module_tmp("search-fuzz")
    ckpt = make_checkpoint(root / "tiny.pt")
    write_scenes(root / "images", 6)
    shards = write_scene_shards(root / "shards", 3)
    assert cli(*build_args(ckpt, root / "idx", root / "images", f"pipe:cat {shards[0]}")) == 0
    assert cli("index", "remove", root / "idx", "2") == 0  # a removed item among the ids tried
    return create_app(str(root / "idx"), ServeOptions(max_upload_bytes=200_000))


def _check(case, seen):
    response = case.call()
    seen["requests"] += 1
    seen["statuses"][response.status_code] = seen["statuses"].get(response.status_code, 0) + 1
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        assert list(body) == ["error"] and body["error"] and "\n" not in body["error"], body


def test_every_generated_request_gets_2xx_or_a_4xx_json_line(app):
    """Each operation of ``/openapi.json``: ``MAX_EXAMPLES`` requests that fit its schema and as many that do not
    (schemathesis's positive and negative modes), driven by hypothesis here (schemathesis's own pytest plugin does not
    run under pytest 9.2). Then the server still answers."""
    from fastapi.testclient import TestClient
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen, skipped = {"requests": 0, "statuses": {}}, []
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 9
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                strategy = op.as_strategy(generation_mode=mode)
            except Exception:  # noqa: BLE001 - an operation with nothing to make invalid has no negative mode
                continue

            @given(case=strategy)
            @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case):
                _check(case, seen)
            try:
                run()
            except Unsatisfiable:  # nothing of this operation can be made invalid (no parameter, no body)
                assert mode == GenerationMode.NEGATIVE
                skipped.append(f"{op.method.upper()} {op.path}")
    with TestClient(app) as client:
        assert client.get("/api/health").json()["items"] == 8
        assert client.get("/api/search", params={"q": "a red circle", "k": 3}).status_code == 200
    assert seen["requests"] >= 10 * len(operations), seen
    print(f"schemathesis: {len(operations)} operations, {seen['requests']} requests, statuses "
          f"{dict(sorted(seen['statuses'].items()))}; no invalid request to make for {skipped}")
