"""The CLI in a subprocess: first JSON line, clean shutdown, and restart with --state-file."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path

import httpx
from conftest import TEST_MODEL_PATH, make_body
from test_emulator_inputs import RED, upload

from krea_dagster.emulator.cli import build_parser, config_from_args
from krea_dagster.emulator.clock import parse_timestamp
from krea_dagster.emulator.state import DEMO_TOKEN
from krea_dagster.emulator.testing import spawn_emulator


def test_cli_prints_urls_and_tokens_then_stops_cleanly_on_sigterm() -> None:
    """The first stdout line is the JSON handle; SIGTERM exits 0."""
    with spawn_emulator("--render-seconds", "0.01") as emulator:
        assert emulator.token == DEMO_TOKEN
        assert emulator.base_url.startswith("http://127.0.0.1:")
        assert emulator.cdn_url != emulator.base_url
        with emulator.client() as api:
            assert api.post(TEST_MODEL_PATH, json=make_body()).status_code == 200
        emulator.process.send_signal(signal.SIGTERM)
        assert emulator.process.wait(timeout=10) == 0


def test_config_file_then_flags_take_precedence(tmp_path: Path) -> None:
    """Knobs come from defaults, then --config, then flags."""
    config_file = tmp_path / "knobs.json"
    config_file.write_text(json.dumps({"error_5xx_rate": 0.2, "latency_ms": 10, "seed": 4}))
    args = build_parser().parse_args(
        ["--config", str(config_file), "--latency-ms", "25", "--error-5xx-routes", "POST /generate",
         "--job-failures", "nsfw=flagged"]
    )  # fmt: skip
    config = config_from_args(args)
    assert (config.error_5xx_rate, config.latency_ms, config.seed) == (0.2, 25.0, 4)
    assert config.error_5xx_routes == ["POST /generate"]
    assert config.job_failures == [["nsfw", "flagged"]]


def test_state_file_survives_a_kill_and_jobs_keep_rendering(tmp_path: Path) -> None:
    """kill -9, restart on the same ports: jobs, balance and counters are back and progressed."""
    state_file = tmp_path / "krea.sqlite"
    args = ("--state-file", str(state_file), "--render-seconds", "1", "--concurrency", "1")
    with spawn_emulator(*args) as emulator:
        with emulator.client() as api:
            ids = [
                api.post(TEST_MODEL_PATH, json=make_body(prompt=f"p{i}")).json()["job_id"]
                for i in range(2)
            ]
            assert api.get(f"/jobs/{ids[1]}").json()["status"] == "backlogged"
        emulator.kill()
        time.sleep(1.2)  # "Krea" keeps rendering while the emulator process is down
        emulator.restart()
        with emulator.client() as api:
            first = api.get(f"/jobs/{ids[0]}").json()
            assert first["status"] == "completed"  # finished while the process was down
            second = emulator.wait_for_job(ids[1], timeout=10)
            assert [j["job_id"] for j in api.get("/jobs").json()["items"]] == ids[::-1]
        # The backlogged job started the instant the first one finished, down time or not.
        started = parse_timestamp(first["completed_at"])
        assert parse_timestamp(second["completed_at"]) == started + 1_000_000
        stats = emulator.stats()
        assert (stats["jobs_created"], stats["jobs_billed"]) == (2, 2)
        main = next(a for a in emulator.accounts() if a["account"] == emulator.account)
        assert main["balance_usd"] == 100 - 2 * 0.007
        assert httpx.get(second["result"]["urls"][0]).status_code == 200


def test_uploads_and_job_inputs_survive_a_kill(tmp_path: Path) -> None:
    """kill -9 right after an upload: the asset, the upload counters and job inputs are back."""
    state_file = tmp_path / "krea.sqlite"
    with spawn_emulator("--state-file", str(state_file), "--render-seconds", "0.01") as emulator:
        with emulator.client() as api:
            asset = upload(api, RED)
            body = {"prompt": "p", "image_urls": [asset["image_url"]]}
            job_id = api.post("/generate/image/openai/gpt-image-2", json=body).json()["job_id"]
        emulator.kill()  # no chance to flush anything lazily
        emulator.restart()
        stats = emulator.stats()
        assert stats["uploads"] == 1
        assert stats["uploads_by_sha256"] == {hashlib.sha256(RED).hexdigest(): 1}
        with emulator.client() as api:
            assert [a["id"] for a in api.get("/assets").json()["items"]] == [asset["id"]]
        inputs = emulator.wait_for_job(job_id)["inputs"]
        assert [(i["kind"], i["asset_id"]) for i in inputs] == [("asset", asset["id"])]
