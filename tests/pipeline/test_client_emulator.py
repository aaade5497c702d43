"""The client against the emulator over real HTTP: two independent implementations of Krea's contract."""

import asyncio

import pytest
from PIL import Image

from krea_dagster.api import (
    AmbiguousSubmitError,
    AsyncKreaClient,
    AuthenticationError,
    BadRequestError,
    InsufficientCreditsError,
    KreaClient,
    NotFoundError,
    catalog,
)

REQUESTS = [
    ("bfl/flux-1-dev", {"prompt": "a fox", "width": 640, "height": 512}, (640, 512)),
    ("openai/gpt-image-2", {"prompt": "a heron", "width": 1024, "height": 768}, (1024, 768)),
    ("z-image/z-image", {"prompt": "a canal", "aspect_ratio": "16:9", "resolution": "1K"}, None),
    ("google/nano-banana-2", {"prompt": "a tulip field", "aspect_ratio": "1:1"}, None),
    ("bytedance/seedream-4", {"prompt": "a lighthouse", "width": 800, "height": 600}, (800, 600)),
]


@pytest.fixture
def client(emulator):
    with KreaClient(api_key=emulator.token, base_url=emulator.base_url) as client:
        yield client


@pytest.mark.parametrize(("model", "params", "size"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_submit_wait_download_for_several_models(model, params, size, client, emulator, tmp_path):
    """Each model's job completes and its result is a real PNG of the requested size."""
    job = client.submit(model, params)
    done = client.wait(job.job_id, model=model, timeout=30, poll_interval=0.02)
    assert done.is_completed and done.result_urls[0].startswith(emulator.cdn_url)
    downloaded = client.download(done.result_urls[0], tmp_path / "result.png")
    with Image.open(downloaded.path) as image:
        assert image.format == "PNG"
        if size is not None:
            assert image.size == size
        if "aspect_ratio" in params:
            left, right = (float(x) for x in params["aspect_ratio"].split(":"))
            assert image.size[0] / image.size[1] == pytest.approx(left / right, rel=0.02)
    assert downloaded.size == downloaded.path.stat().st_size


def test_every_catalog_example_is_accepted_by_the_emulator(client):
    """The client's catalog and the emulator's schema validation agree on every image model's example."""
    for spec in catalog.image_models():
        body = dict(spec.example)
        if spec.model == "runway/gen-4-image":  # the document's example omits a required field
            body["reference_images"] = [{"url": "https://example.com/ref.png", "tag": "ref"}]
        for name in spec.required:
            body.setdefault(name, spec.fields[name].enum[0] if spec.fields[name].enum else "x")
        assert catalog.validate(spec.model, body).ok, spec.model
        client.submit(spec.model, body)


def test_accept_then_drop_then_reconcile_bills_exactly_one_job(emulator):
    """A POST whose answer is lost raises AmbiguousSubmitError; reconciliation finds the one job."""
    emulator.configure(accept_then_drop_rate=1.0)
    with KreaClient(api_key=emulator.token, base_url=emulator.base_url) as client:
        with pytest.raises(AmbiguousSubmitError) as raised:
            client.submit("bfl/flux-1-dev", {"prompt": "lost answer"})
        emulator.configure(accept_then_drop_rate=0.0)
        outcome = client.reconcile_submission(raised.value, known_job_ids=())
        assert outcome.job is not None
        client.wait(outcome.job.job_id, timeout=30, poll_interval=0.02)
    stats = emulator.stats()
    assert stats["jobs_created"] == 1
    assert stats["jobs_billed"] == 1
    assert stats["requests_by_route"]["POST /generate/image/{provider}/{model}"] == 1


def test_errors_from_the_emulator_map_to_the_client_classes(emulator):
    """401, 402, 400 (after local validation is skipped) and 404 become their typed errors."""
    with (
        KreaClient(
            api_key="00000000-0000-4000-8000-00000000dead:wrong", base_url=emulator.base_url
        ) as bad,
        pytest.raises(AuthenticationError, match="id:secret"),
    ):
        bad.get_job("00000000-0000-4000-8000-000000000001")
    with KreaClient(api_key=emulator.token, base_url=emulator.base_url) as client:
        with pytest.raises(BadRequestError, match="width"):
            client.submit("bfl/flux-1-dev", {"prompt": "a", "width": 99999}, validate=False)
        with pytest.raises(NotFoundError):
            client.get_job("00000000-0000-4000-8000-000000000001")
        emulator.set_balance(0.0)
        with pytest.raises(InsufficientCreditsError, match="top up"):
            client.submit("bfl/flux-1-dev", {"prompt": "a"})


def test_poll_many_over_the_list_endpoint(emulator):
    """Polling 50 jobs costs a few list requests, not 50 GETs, and returns them in order."""
    with KreaClient(api_key=emulator.token, base_url=emulator.base_url) as client:
        ids = [client.submit("bfl/flux-1-dev", {"prompt": f"p{i}"}).job_id for i in range(50)]
        before = emulator.stats()["requests_by_route"]
        jobs = client.poll_many(ids)
        after = emulator.stats()["requests_by_route"]
    assert [job.job_id for job in jobs] == ids
    assert after.get("GET /jobs", 0) - before.get("GET /jobs", 0) == 1
    assert after.get("GET /jobs/{id}", 0) == before.get("GET /jobs/{id}", 0)


def test_async_client_parity_against_the_emulator(emulator):
    """The async client submits and waits like the sync one."""

    async def run() -> str:
        async with AsyncKreaClient(api_key=emulator.token, base_url=emulator.base_url) as client:
            job = await client.submit("bfl/flux-1-dev", {"prompt": "async fox"})
            done = await client.wait(job.job_id, timeout=30, poll_interval=0.02)
            return str(done.status)

    assert asyncio.run(run()) == "completed"
