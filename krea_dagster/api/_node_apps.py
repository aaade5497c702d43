"""Flows over ``/node-apps`` shared by both clients: read a node app, execute it.

A node app is a saved workflow, addressed by its *version* id. ``GET /node-apps/{id}`` is a
safe request (retried like ``GET /jobs/{id}``). ``POST /node-apps/{id}/execute`` takes the
app's inputs as one flat JSON object and answers a JSON array of jobs, one per output the
workflow renders: it is a create, run by the same loop as ``submit`` (``RequestCore.create``),
so it is never resent once it may have reached Krea, and an unknown outcome raises
``AmbiguousSubmitError`` with ``model = "node-app/<version id>"`` and ``kind = "node-app"``.
The inputs are not checked here: the app's ``input_schema`` belongs to the caller (Krea
answers 400 naming the input it refuses).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from krea_dagster.api._core import CreateTarget, Flow, RequestCore, SendAttempt, path_for
from krea_dagster.api.catalog import NODE_APP_KIND
from krea_dagster.api.errors import MalformedPayloadError
from krea_dagster.api.models import Job, NodeApp

__all__: list[str] = []

GET_PATH = "/node-apps/{id}"
EXECUTE_PATH = "/node-apps/{id}/execute"


def node_app_model(version_id: str) -> str:
    """The ``model`` of an execute's ``AmbiguousSubmitError``: ``node-app/<version id>``."""
    return f"{NODE_APP_KIND}/{version_id}"


def read_jobs(data: object) -> list[Job]:
    """The jobs of an execute's 200: a non-empty JSON array of Job objects."""
    if not isinstance(data, list) or not data:
        got = "an empty array" if isinstance(data, list) else type(data).__name__
        raise MalformedPayloadError(f"expected a non-empty array of Krea jobs, got {got}")
    return [Job.from_api(item) for item in data]


def get_node_app(
    core: RequestCore, version_id: str, *, max_retries: int | None = None
) -> Flow[NodeApp]:
    response = yield from core.request(
        "GET", GET_PATH, path_params={"id": version_id}, max_retries=max_retries
    )
    return core.parse(NodeApp.from_api, response, "GET", GET_PATH)


def execute_node_app(
    core: RequestCore,
    version_id: str,
    inputs: Mapping[str, Any],
    *,
    max_retries: int | None = None,
    submission_id: str | None = None,
    on_send: Callable[[SendAttempt], object] | None = None,
) -> Flow[list[Job]]:
    if not isinstance(inputs, Mapping):
        raise TypeError(f"inputs must be a mapping of input names, not {type(inputs).__name__}")
    target = CreateTarget(
        path=path_for(EXECUTE_PATH, {"id": version_id}),
        path_template=EXECUTE_PATH,
        body=dict(inputs),
        model=node_app_model(version_id),
        kind=NODE_APP_KIND,
        read=read_jobs,
    )
    jobs = yield from core.create(
        target, max_retries=max_retries, submission_id=submission_id, on_send=on_send
    )
    return jobs
