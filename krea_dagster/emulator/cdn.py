"""The "CDN": a second origin serving result files and uploaded assets without auth.

Krea's result URLs point at a CDN that needs no API token (krea-api.md section 5), so the
emulator serves them from a second server on its own port: a client that wrongly sends its
token to the CDN origin would be sending it to another host. Results are rendered on demand in
a worker thread (deterministic, so nothing needs to be stored) and cached; the random part of
the URL must match the job's, like an unguessable CDN key.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from krea_dagster.emulator import inputs, views
from krea_dagster.emulator.errors import NotFound
from krea_dagster.emulator.images import RenderCache
from krea_dagster.emulator.lifecycle import JobStatus
from krea_dagster.emulator.state import EmulatorState
from krea_dagster.emulator.video import poster_jpeg, render_mp4


async def result_file(request: Request, state: EmulatorState, cache: RenderCache) -> Response:
    """``GET /results/{job_id}/{name}``: the PNG, or the MP4 and its ``.jpg`` poster frame."""
    job = state.jobs.get(request.path_params["job_id"])
    name = request.path_params["name"]
    if job is None or job.status is not JobStatus.COMPLETED:
        raise NotFound("no such file")
    urls = (views.result_url(job, state.cdn_url), views.poster_url(job, state.cdn_url))
    if not any(url and url.endswith(f"/{name}") for url in urls):
        raise NotFound("no such file")
    prompt = str(job.body.get("prompt", job.body.get("image_url", "")))
    seed = job.body.get("seed", state.models[job.model_key].default("seed"))
    state.counters.cdn_downloads += 1
    key = inputs.render_key(job.inputs)
    if name.endswith((".mp4", ".jpg")):
        video_key = f"{prompt}\x00{seed}\x00{key}"
        if name.endswith(".jpg"):
            poster = await run_in_threadpool(poster_jpeg, video_key, job.width, job.height)
            return Response(poster, media_type="image/jpeg")
        data = await run_in_threadpool(render_mp4, video_key, job.width, job.height)
        return Response(data, media_type="video/mp4")
    data = await run_in_threadpool(cache.png, prompt, seed, job.width, job.height, key)
    return Response(
        data, media_type="image/png", headers={"Cache-Control": "public, max-age=86400"}
    )


async def asset_file(request: Request, state: EmulatorState, cache: RenderCache) -> Response:
    """``GET /assets/{name}``: an uploaded asset's bytes."""
    asset_id = request.path_params["name"].split(".")[0]
    asset = state.assets.get(asset_id)
    if asset is None or asset.filename != request.path_params["name"]:
        raise NotFound("no such file")
    state.counters.cdn_downloads += 1
    return Response(asset.data, media_type=asset.mime_type)
