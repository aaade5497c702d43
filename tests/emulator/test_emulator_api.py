"""The public API over real HTTP: auth, validation, aliases, job JSON, cancel and listing."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from conftest import TEST_MODEL_PATH, TEST_SLOW_MODEL_PATH, make_body

from krea_dagster.emulator.catalog import load_models, openapi_text
from krea_dagster.emulator.clock import ManualClock
from krea_dagster.emulator.config import EmulatorConfig
from krea_dagster.emulator.state import DEMO_TOKEN, EmulatorState
from krea_dagster.emulator.testing import EmulatorHandle, run_emulator


def submit(api: httpx.Client, path: str = TEST_MODEL_PATH, **changes: Any) -> dict[str, Any]:
    """POST a valid body and return the JobCreated JSON (asserting 200)."""
    response = api.post(path, json=make_body(**changes))
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing Authorization header"),
        ({"Authorization": "Basic abc"}, "Bearer <id>:<secret>"),
        ({"Authorization": "Bearer no-colon"}, "malformed API token"),
        ({"Authorization": "Bearer someone:else"}, "invalid API token"),
    ],
    ids=["missing", "not-bearer", "no-colon", "unknown-token"],
)
def test_requests_without_a_valid_token_get_401(
    krea_emulator: EmulatorHandle, headers: dict[str, str], message: str
) -> None:
    """Missing, malformed or unknown tokens answer 401 with an error message."""
    response = httpx.post(
        f"{krea_emulator.base_url}{TEST_MODEL_PATH}", json=make_body(), headers=headers
    )
    assert response.status_code == 401
    assert message in response.json()["error"]


def test_post_answers_job_created_with_null_completed_at_and_result(api: httpx.Client) -> None:
    """POST /generate answers the JobCreated shape of the OpenAPI document."""
    created = submit(api)
    assert set(created) == {"job_id", "status", "created_at", "completed_at", "result"}
    assert uuid.UUID(created["job_id"]).version == 4
    assert created["status"] == "queued"
    assert created["created_at"].endswith("Z")
    assert (created["completed_at"], created["result"]) == (None, None)


def test_pending_job_omits_completed_at_and_completed_job_has_urls(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """GET /jobs/{id} omits completed_at while pending and adds result.urls when completed."""
    krea_emulator.configure(render_seconds=30)
    pending = api.get(f"/jobs/{submit(api)['job_id']}").json()
    assert "completed_at" not in pending and "result" not in pending
    krea_emulator.configure(render_seconds=0.01)
    job_id = submit(api, prompt="done")["job_id"]
    krea_emulator.wait_for_job(job_id)
    done = api.get(f"/jobs/{job_id}").json()
    assert done["status"] == "completed" and "error" not in done
    assert done["result"]["urls"][0].startswith(f"{krea_emulator.cdn_url}/results/{job_id}/")
    assert done["completed_at"] >= done["created_at"]


def test_failed_job_carries_error_code_and_message(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """A failed job has error.code and error.message and no result."""
    krea_emulator.configure(job_failure_rate=1.0, job_failures=[["safety_filter", "blocked"]])
    job_id = submit(api)["job_id"]
    krea_emulator.wait_for_job(job_id)
    job = api.get(f"/jobs/{job_id}").json()
    assert (job["status"], job["error"]) == (
        "failed",
        {"code": "safety_filter", "message": "blocked"},
    )
    assert "result" not in job


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"width": 4000}, ["body.width: 4000 is greater than the maximum of 2368 (maximum)"]),
        ({"foo": 1}, ["body.foo: unknown field 'foo' (additionalProperties: false)"]),
        ({"prompt": None}, ["body.prompt: required field 'prompt' is missing (required)"]),
        ({"steps": "many"}, ["body.steps: 'many' is not of type 'integer' (type)"]),
        (
            {"width": 100, "bar": True},
            ["body.bar: unknown field 'bar'", "body.width: 100 is less than the minimum of 512"],
        ),
        ({"image_url": "not a url"}, ["body.image_url", "(format)"]),
    ],
    ids=["maximum", "unknown-field", "required", "type", "every-field-named", "uri-format"],
)
def test_invalid_bodies_get_400_naming_every_field_and_rule(
    api: httpx.Client, changes: dict[str, Any], fragments: list[str]
) -> None:
    """Strict validation answers 400 whose message names each failing field and rule."""
    response = api.post(TEST_MODEL_PATH, json=make_body(**changes))
    assert response.status_code == 400
    for fragment in fragments:
        assert fragment in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"{not json", "not valid JSON"), (b"[1, 2]", "is not of type 'object'")],
    ids=["not-json", "not-an-object"],
)
def test_bodies_that_are_not_json_objects_get_400(
    api: httpx.Client, body: bytes, message: str
) -> None:
    """A body that is not a JSON object is a 400."""
    response = api.post(TEST_MODEL_PATH, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and message in response.json()["error"]


@pytest.mark.parametrize(
    ("today", "status"),
    [("2026-06-18", 200), ("2026-06-19", 400), ("2026-11-24", 400)],
    ids=["day-before-sunset-accepted", "sunset-day-rejected", "after-sunset-rejected"],
)
def test_deprecated_aliases_are_rewritten_only_before_the_sunset(
    krea_emulator: EmulatorHandle, api: httpx.Client, today: str, status: int
) -> None:
    """imageUrls is accepted as image_urls strictly before 2026-06-19, unknown afterwards."""
    krea_emulator.configure(today=today)
    body = {"prompt": "x", "imageUrls": ["https://example.com/a.png"]}
    response = api.post(TEST_SLOW_MODEL_PATH, json=body)
    assert response.status_code == status, response.text
    if status == 200:
        stored = krea_emulator.job(response.json()["job_id"])["request"]
        assert stored == {"prompt": "x", "image_urls": ["https://example.com/a.png"]}
    else:
        assert "unknown field 'imageUrls'" in response.json()["error"]


def test_alias_together_with_its_new_name_is_rejected(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """Sending both imageUrls and image_urls is ambiguous and answered 400."""
    krea_emulator.configure(today="2026-06-01")
    body = {
        "prompt": "x",
        "imageUrls": ["https://a.example/1"],
        "image_urls": ["https://a.example/2"],
    }
    response = api.post(TEST_SLOW_MODEL_PATH, json=body)
    assert response.status_code == 400 and "given together" in response.json()["error"]


# Three examples of Krea's document omit a field their own schema requires (a document
# inconsistency): the emulator follows the schema and rejects them, naming the field.
KNOWN_INVALID_EXAMPLES = {
    "enhance/topaz/bloom-enhance": "body.model: required field 'model' is missing",
    "enhance/topaz/standard-enhance": "body.model: required field 'model' is missing",
    "image/runway/gen-4-image": "body.reference_images: required field 'reference_images' is missing",
}
MODELS_WITH_EXAMPLES = sorted(key for key, spec in load_models().items() if spec.example)


@pytest.mark.parametrize("model_key", MODELS_WITH_EXAMPLES)
def test_every_catalog_model_answers_its_documented_example(
    krea_emulator: EmulatorHandle, api: httpx.Client, model_key: str
) -> None:
    """Each model path answers 200 to the document's example (400 for the known bad ones)."""
    krea_emulator.set_balance(10_000)
    spec = load_models()[model_key]
    response = api.post(spec.path, json=spec.example)
    if model_key in KNOWN_INVALID_EXAMPLES:
        assert response.status_code == 400
        assert KNOWN_INVALID_EXAMPLES[model_key] in response.json()["error"]
    else:
        assert response.status_code == 200, response.text


def test_unknown_model_path_is_404(api: httpx.Client) -> None:
    """A model the catalog does not know answers 404 with an error body."""
    response = api.post("/generate/image/acme/nothing", json={"prompt": "x"})
    assert response.status_code == 404 and "acme/nothing" in response.json()["error"]


def test_invalid_webhook_header_is_400(api: httpx.Client) -> None:
    """X-Webhook-URL must be an absolute http(s) URL."""
    response = api.post(TEST_MODEL_PATH, json=make_body(), headers={"X-Webhook-URL": "ftp://x"})
    assert response.status_code == 400 and "X-Webhook-URL" in response.json()["error"]


def test_another_accounts_job_is_404_for_get_and_delete(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """Jobs are private to their account: others see 404."""
    job_id = submit(api)["job_id"]
    other = krea_emulator.add_account()
    with krea_emulator.client(other["token"]) as intruder:
        assert intruder.get(f"/jobs/{job_id}").status_code == 404
        assert intruder.delete(f"/jobs/{job_id}").status_code == 404
        assert intruder.get("/jobs").json()["items"] == []
    assert api.get(f"/jobs/{uuid.uuid4()}").status_code == 404


def test_delete_cancels_a_pending_job_and_is_a_noop_on_a_terminal_one(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """DELETE turns a pending job cancelled; a second DELETE answers it unchanged."""
    krea_emulator.configure(render_seconds=30)
    job_id = submit(api)["job_id"]
    first = api.delete(f"/jobs/{job_id}")
    assert first.status_code == 200
    assert first.json()["status"] == "cancelled"
    assert first.json()["error"]["code"] == "cancelled"
    second = api.delete(f"/jobs/{job_id}")
    assert (second.status_code, second.json()) == (200, first.json())
    assert krea_emulator.stats()["jobs_billed"] == 0


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ({"limit": "0"}, "query.limit: 0 is less than the minimum of 1"),
        ({"limit": "1001"}, "query.limit: 1001 is greater than the maximum of 1000"),
        ({"limit": "ten"}, "query.limit: 'ten' is not of type 'integer'"),
        ({"cursor": "yesterday"}, "query.cursor: 'yesterday' is not a valid 'date-time'"),
        ({"status": "done"}, "query.status: 'done' is not one of"),
    ],
    ids=["limit-0", "limit-1001", "limit-text", "bad-cursor", "bad-status"],
)
def test_bad_list_queries_get_400(api: httpx.Client, query: dict[str, str], fragment: str) -> None:
    """GET /jobs validates limit, cursor and status."""
    response = api.get("/jobs", params=query)
    assert response.status_code == 400 and fragment in response.json()["error"]


def test_list_pages_newest_first_with_next_cursor(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """GET /jobs pages newest first; next_cursor is null on the last page."""
    ids = [submit(api, prompt=f"p{i}")["job_id"] for i in range(5)]
    first = api.get("/jobs", params={"limit": 3}).json()
    assert [j["job_id"] for j in first["items"]] == ids[::-1][:3]
    assert first["next_cursor"] == first["items"][-1]["created_at"]
    second = api.get("/jobs", params={"limit": 3, "cursor": first["next_cursor"]}).json()
    assert [j["job_id"] for j in second["items"]] == ids[::-1][3:]
    assert second["next_cursor"] is None


def test_list_filters_over_http(krea_emulator: EmulatorHandle, api: httpx.Client) -> None:
    """status and types narrow GET /jobs."""
    krea_emulator.configure(render_seconds=30)
    flux = submit(api)["job_id"]
    gpt = submit(api, TEST_SLOW_MODEL_PATH, prompt="gpt")["job_id"]
    api.delete(f"/jobs/{gpt}")
    by_status = api.get("/jobs", params={"status": "cancelled"}).json()["items"]
    by_type = api.get("/jobs", params={"types": "flux,k1"}).json()["items"]
    assert [j["job_id"] for j in by_status] == [gpt]
    assert [j["job_id"] for j in by_type] == [flux]


def test_openapi_document_is_served_without_auth(krea_emulator: EmulatorHandle) -> None:
    """GET /openapi.json answers Krea's document verbatim, with no token."""
    response = httpx.get(f"{krea_emulator.base_url}/openapi.json")
    assert response.status_code == 200
    assert response.json() == json.loads(openapi_text())


def test_unknown_routes_answer_json_404(krea_emulator: EmulatorHandle, api: httpx.Client) -> None:
    """Unknown paths answer 404 with an error body and count as unmatched."""
    response = api.get("/nothing/here")
    assert response.status_code == 404 and "error" in response.json()
    assert krea_emulator.stats()["requests_by_route"]["unmatched"] == 1


def test_http_paging_over_2500_jobs_created_in_one_instant_never_loses_or_repeats() -> None:
    """GET /jobs with next_cursor visits 2,500 same-microsecond jobs exactly once, newest first."""
    clock = ManualClock()
    config = EmulatorConfig(render_seconds=600.0, concurrency=3000, backlog=0, balance_usd=1000.0)
    state = EmulatorState(config, clock=clock)
    account, spec = state.by_token[DEMO_TOKEN], state.models["image/bfl/flux-1-dev"]
    ids = [state.submit(account, spec, {"prompt": f"p{i}"}).id for i in range(2500)]
    seen: list[str] = []
    with run_emulator(state=state) as emulator, emulator.client() as client:
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = client.get("/jobs", params=params).json()
            seen += [job["job_id"] for job in page["items"]]
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
    assert seen == ids[::-1]


def test_default_account_settings_apply_to_accounts_created_afterwards(
    krea_emulator: EmulatorHandle,
) -> None:
    """configure(concurrency=..., backlog=..., balance_usd=...) sets the defaults of new accounts."""
    krea_emulator.configure(concurrency=3, backlog=5, balance_usd=2.5)
    created = krea_emulator.add_account()
    assert (created["concurrency"], created["backlog"], created["balance_usd"]) == (3, 5, 2.5)
