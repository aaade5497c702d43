"""Node apps: ``GET /node-apps/{id}`` and ``POST /node-apps/{id}/execute`` (one job per step)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from PIL import Image

from krea_dagster.emulator import DEMO_NODE_APP_ID
from krea_dagster.emulator.catalog import load_models, openapi_document
from krea_dagster.emulator.images import INPUTS_TEXT_KEY
from krea_dagster.emulator.node_apps import PUBLIC_FIELDS
from krea_dagster.emulator.testing import EmulatorHandle, run_emulator, spawn_emulator

APP = f"/node-apps/{DEMO_NODE_APP_ID}"
EXECUTE = f"{APP}/execute"
INPUTS = {"product_image": "data:,teapot", "product": "a teapot"}
STEP_PRICE = load_models()["image/openai/gpt-image-2"].price["usd"]  # type: ignore[index]


def photo(colour: tuple[int, int, int]) -> bytes:
    """A small PNG of one colour."""
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), colour).save(buffer, "PNG")
    return buffer.getvalue()


def upload(api: httpx.Client, data: bytes) -> str:
    response = api.post("/assets", files={"file": ("ref.png", data, "image/png")})
    assert response.status_code == 200, response.text
    url: str = response.json()["image_url"]
    return url


def response_schema(path: str, method: str) -> dict[str, Any]:
    operation = openapi_document()["paths"][path][method]
    schema: dict[str, Any] = operation["responses"]["200"]["content"]["application/json"]["schema"]
    return schema


def execute(api: httpx.Client, product_image: str, **inputs: Any) -> list[dict[str, Any]]:
    response = api.post(
        EXECUTE, json={"product_image": product_image, "product": "a teapot", **inputs}
    )
    assert response.status_code == 200, response.text
    jobs: list[dict[str, Any]] = response.json()
    return jobs


def finished_pngs(emulator: EmulatorHandle, jobs: list[dict[str, Any]]) -> list[bytes]:
    """Wait for each job and download its result file from the CDN."""
    files = []
    for job in jobs:
        done = emulator.wait_for_job(job["job_id"])
        assert done["status"] == "completed"
        files.append(httpx.get(done["result"]["urls"][0], timeout=10, trust_env=False).content)
    return files


def test_get_node_app_serves_the_documented_object(api: httpx.Client) -> None:
    """GET /node-apps/{id} answers every documented field, valid against Krea's schema, no steps."""
    response = api.get(APP)
    assert response.status_code == 200
    app = response.json()
    assert set(app) == set(PUBLIC_FIELDS)
    Draft202012Validator(response_schema("/node-apps/{id}", "get")).validate(app)
    assert (app["id"], app["name"], app["slug"]) == (
        DEMO_NODE_APP_ID,
        "Product angles",
        "product-angles",
    )
    assert app["input_openapi_schema"]["required"] == ["product_image", "product"]


def test_unknown_node_app_is_404(api: httpx.Client) -> None:
    """An unknown version id is a 404 {"error"} on both routes, and executing it creates nothing."""
    for response in (api.get("/node-apps/nope"), api.post("/node-apps/nope/execute", json={})):
        assert response.status_code == 404
        assert "nope" in response.json()["error"]


def test_node_apps_need_a_token(krea_emulator: EmulatorHandle) -> None:
    """Without a valid token both routes answer 401."""
    with httpx.Client(base_url=krea_emulator.base_url, trust_env=False) as anonymous:
        assert anonymous.get(APP).status_code == 401
        assert anonymous.post(EXECUTE, json={}).status_code == 401


def test_execute_creates_one_billed_job_per_step(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """Execute answers 2 jobs in step order, listed by GET /jobs, completed, billed, unalike."""
    before = krea_emulator.accounts()[0]["balance_usd"]
    jobs = execute(api, upload(api, photo((200, 30, 30))), background="marble")
    Draft202012Validator(response_schema("/node-apps/{id}/execute", "post")).validate(jobs)
    assert len(jobs) == 2
    views = [krea_emulator.job(job["job_id"]) for job in jobs]
    assert [view["request"]["prompt"] for view in views] == [
        "Front view of a teapot on a marble background",
        "Three-quarter view of a teapot on a marble background",
    ]
    assert [view["step"] for view in views] == [0, 1]
    assert views[0]["execution_id"] == views[1]["execution_id"] is not None
    listed = {item["job_id"] for item in api.get("/jobs").json()["items"]}
    assert listed == {job["job_id"] for job in jobs}
    front, three_quarter = finished_pngs(krea_emulator, jobs)
    assert front != three_quarter
    stats = krea_emulator.stats()
    assert (stats["node_app_executions"], stats["node_app_jobs"], stats["jobs_billed"]) == (1, 2, 2)
    assert stats["billed_usd"] == pytest.approx(2 * STEP_PRICE)
    assert stats["requests_by_route"]["POST /node-apps/{id}/execute"] == 1
    after = krea_emulator.accounts()[0]["balance_usd"]
    assert before - after == pytest.approx(2 * STEP_PRICE)


def test_outputs_depend_on_the_inputs(krea_emulator: EmulatorHandle, api: httpx.Client) -> None:
    """Another product image gives other bytes; the default background fills the prompt."""
    red, blue = upload(api, photo((220, 20, 20))), upload(api, photo((20, 20, 220)))
    red_jobs, blue_jobs = execute(api, red), execute(api, blue)
    assert krea_emulator.job(red_jobs[0]["job_id"])["request"]["prompt"].endswith(
        "on a white studio background"
    )
    red_front, blue_front = finished_pngs(krea_emulator, red_jobs[:1] + blue_jobs[:1])
    assert red_front != blue_front
    inputs = Image.open(io.BytesIO(red_front)).info[INPUTS_TEXT_KEY]
    assert inputs.startswith("image_urls[0]=")
    assert krea_emulator.job(red_jobs[0]["job_id"])["inputs"][0]["kind"] == "asset"


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ({"product": "a teapot"}, "body.product_image: required field 'product_image' is missing"),
        ({"product_image": "data:,x", "product": 7}, "body.product: 7 is not of type 'string'"),
        ({"product_image": "data:,x", "product": "a", "size": 1}, "unknown field 'size'"),
        ([], "must be a JSON object"),
    ],
    ids=["missing", "wrong-type", "unknown-key", "not-an-object"],
)
def test_invalid_inputs_are_400_naming_the_input(
    krea_emulator: EmulatorHandle, api: httpx.Client, inputs: Any, expected: str
) -> None:
    """Inputs that break the app's input schema get a 400 naming the input, and no job."""
    response = api.post(EXECUTE, json=inputs)
    assert response.status_code == 400
    assert expected in response.json()["error"]
    assert krea_emulator.stats()["jobs_created"] == 0


def test_402_when_the_balance_pays_one_step_but_not_both(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """An execute whose jobs together cost more than the balance is refused whole (no job)."""
    krea_emulator.set_balance(STEP_PRICE * 1.5)
    response = api.post(EXECUTE, json={"product_image": "data:,x", "product": "a teapot"})
    assert response.status_code == 402
    assert "these 2 jobs cost" in response.json()["error"]
    assert krea_emulator.stats()["jobs_created"] == 0


def test_429_when_the_backlog_cannot_take_every_step(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """With one free slot and no backlog room the execute is a 429 and creates no job."""
    krea_emulator.update_account(concurrency=1, backlog=0)
    response = api.post(EXECUTE, json={"product_image": "data:,x", "product": "a teapot"})
    assert response.status_code == 429
    assert krea_emulator.stats()["jobs_created"] == 0


def test_a_dropped_answer_still_created_every_job(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """The accept-then-drop fault creates both jobs, then closes the connection unanswered."""
    krea_emulator.configure(accept_then_drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        api.post(EXECUTE, json={"product_image": "data:,x", "product": "a teapot"})
    stats = krea_emulator.stats()
    assert (stats["node_app_executions"], stats["node_app_jobs"]) == (1, 2)
    assert stats["faults_injected"]["accept_then_drop"] == 1
    listed = api.get("/jobs").json()["items"]
    assert len(listed) == 2
    [execution] = krea_emulator.node_app_executions()
    assert execution["node_app_id"] == DEMO_NODE_APP_ID
    assert execution["account"] == krea_emulator.account
    assert set(execution["job_ids"]) == {item["job_id"] for item in listed}
    first = krea_emulator.job(execution["job_ids"][0])
    assert (first["step"], first["execution_id"]) == (0, execution["execution_id"])


def test_an_unfetchable_media_input_is_422_and_creates_nothing(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """A product image naming an asset this emulator does not have is refused before any job."""
    missing = f"{krea_emulator.cdn_url}/assets/00000000-0000-4000-8000-000000000000.png"
    response = api.post(EXECUTE, json={"product_image": missing, "product": "a teapot"})
    assert response.status_code == 422
    assert krea_emulator.stats()["jobs_created"] == 0


def test_the_node_apps_knob_serves_more_apps(
    krea_emulator: EmulatorHandle, api: httpx.Client, tmp_path: Path
) -> None:
    """A node_apps file (knob or --node-apps) adds apps (3 steps: 3 jobs); a bad one is refused."""
    builtin = api.get(APP).json()
    app = {
        **builtin,
        "id": "trio",
        "slug": "trio",
        "input_openapi_schema": {
            "type": "object",
            "properties": {"subject": {"type": "string"}},
            "required": ["subject"],
        },
        "steps": [
            {"model": "image/bfl/flux-1-dev", "params": {"prompt": f"{{subject}}, take {n}"}}
            for n in range(3)
        ],
    }
    good = tmp_path / "apps.json"
    good.write_text(json.dumps({"node_apps": [app]}), encoding="utf-8")
    with spawn_emulator("--node-apps", str(good)) as spawned, spawned.client() as other:
        assert other.get("/node-apps/trio").json()["slug"] == "trio"  # the CLI flag
    krea_emulator.configure(node_apps=str(good))
    response = api.post("/node-apps/trio/execute", json={"subject": "a fox"})
    assert response.status_code == 200, response.text
    assert len(response.json()) == 3
    assert api.get(APP).status_code == 200  # the built-in apps stay
    bad = tmp_path / "bad.json"
    app["steps"] = [{"model": "image/acme/nope", "params": {}}]
    bad.write_text(json.dumps({"node_apps": [app]}), encoding="utf-8")
    with pytest.raises(RuntimeError, match=re.escape("steps[0].model 'image/acme/nope'")):
        krea_emulator.configure(node_apps=str(bad))


def test_an_execute_survives_a_restart_on_its_state_file(tmp_path: Path) -> None:
    """With --state-file, both jobs of an execute and their execution are there after a restart."""
    state_file = tmp_path / "state.db"
    with run_emulator(time_scale=0.001, state_file=state_file) as first, first.client() as api:
        jobs = execute(api, "data:,teapot")
    with run_emulator(time_scale=0.001, state_file=state_file) as second:
        [execution] = second.node_app_executions()
        assert execution["job_ids"] == [job["job_id"] for job in jobs]
        assert second.stats()["node_app_jobs"] == 2


def test_each_job_of_an_execute_is_cancelled_on_its_own(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """Cancelling one job of an execute leaves the other to complete; only that one is billed."""
    krea_emulator.update_account(concurrency=1)  # the second job waits in the backlog
    first, second = execute(api, "data:,teapot")
    assert second["status"] == "backlogged"
    assert api.delete(f"/jobs/{second['job_id']}").json()["status"] == "cancelled"
    assert krea_emulator.wait_for_job(first["job_id"])["status"] == "completed"
    stats = krea_emulator.stats()
    assert (stats["jobs_billed"], stats["billed_usd"]) == (1, pytest.approx(STEP_PRICE))


def test_zero_data_retention_needs_data_uris_for_every_step(
    krea_emulator: EmulatorHandle, api: httpx.Client
) -> None:
    """With X-Api-Zero-Data-Retention an asset URL input is a 422 before any job; data: URIs pass."""
    zdr = {"X-Api-Zero-Data-Retention": "1"}
    asset = upload(api, photo((1, 2, 3)))
    refused = api.post(EXECUTE, json={**INPUTS, "product_image": asset}, headers=zdr)
    assert refused.status_code == 422
    assert "image_urls[0]" in refused.json()["error"]
    assert krea_emulator.stats()["jobs_created"] == 0
    assert len(api.post(EXECUTE, json=INPUTS, headers=zdr).json()) == 2
