"""Node apps (saved workflows): the registry, input validation and the steps they run.

``GET /node-apps/{id}`` serves an app by its version id and ``POST /node-apps/{id}/execute``
runs it: one flat JSON object of inputs in, one job per step out (krea-api.md section 13).
Krea documents what an app looks like from outside, not what runs inside it, so the emulator
describes each app's inside as ``steps``, never served::

    {"model": "image/openai/gpt-image-2",
     "params": {"prompt": "Front view of {product}", "image_urls": ["{product_image}"]}}

A step is a generation request of a catalog model. Its string values may hold ``{input}``
placeholders, replaced by the inputs (after the input schema's top-level defaults are filled
in); a value that is exactly ``"{input}"`` takes the input as is (a list stays a list) and is
left out when the input is absent and has no default. Each step's job is then a generation job
of its model in every respect: validated against the model's schema, priced, billed,
backlogged, rendered from its params and media inputs like a ``POST /generate`` job.

Apps come from the package file ``node_apps.json`` (the built-in apps, among them
:data:`DEMO_NODE_APP_ID`) and from the ``node_apps`` knob (``--node-apps FILE``), a JSON file of
the same format, ``{"node_apps": [app, ...]}``; an app of the file replaces a built-in one with
the same id. Every app is checked when loaded: the public fields of Krea's node-app object, a
valid input schema, at least one step, known models and placeholders that name declared inputs.
Every account sees every app (the emulator has one workspace).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from krea_dagster.emulator.catalog import ModelSpec, load_models
from krea_dagster.emulator.errors import BadRequest, NotFound
from krea_dagster.emulator.validation import FORMAT_CHECKER, check_schema

BUILTIN_FILE = "node_apps.json"
#: Version id of the built-in "Product angles" app (two gpt-image-2 steps: 2 jobs per execute).
DEMO_NODE_APP_ID = "4f0c6a52-0d3e-4a8e-9a61-5b7e2c1d9a10"

#: The fields of Krea's node-app object (``GET /node-apps/{id}`` requires all of them).
PUBLIC_FIELDS = (
    "id",
    "author_id",
    "workspace_id",
    "name",
    "slug",
    "description",
    "scope",
    "created_at",
    "updated_at",
    "last_version_id",
    "version",
    "version_created_at",
    "username",
    "example_outputs",
    "input_openapi_schema",
    "output_openapi_schema",
    "input_key_mapping",
    "output_key_mapping",
)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ABSENT = object()


@dataclass(frozen=True)
class Step:
    """One generation request of an app: a catalog model and its templated params."""

    spec: ModelSpec
    params: dict[str, Any]


@dataclass(frozen=True)
class NodeApp:
    """One node-app version: its public object and the steps that run on execute."""

    public: dict[str, Any]
    steps: tuple[Step, ...]
    validator: Draft202012Validator

    @property
    def id(self) -> str:
        """The version id (the ``{id}`` of both routes)."""
        return str(self.public["id"])

    @property
    def input_schema(self) -> dict[str, Any]:
        """``input_openapi_schema`` (an empty object schema when null)."""
        return self.public["input_openapi_schema"] or {"type": "object", "properties": {}}

    def inputs_of(self, body: Any) -> dict[str, Any]:
        """The validated inputs with the schema's top-level defaults filled in (400 otherwise)."""
        if not isinstance(body, dict):
            raise BadRequest(
                f"request body must be a JSON object of the node app's inputs, not "
                f"{type(body).__name__}; inputs: {', '.join(self.input_schema['properties'])}"
            )
        check_schema(self.validator, body, f"invalid inputs for node app {self.public['slug']}")
        inputs = dict(body)
        for name, schema in self.input_schema.get("properties", {}).items():
            if name not in inputs and isinstance(schema, dict) and "default" in schema:
                inputs[name] = schema["default"]
        return inputs

    def requests(self, inputs: dict[str, Any]) -> list[tuple[ModelSpec, Any]]:
        """Each step's model and rendered request body, in step order."""
        return [(step.spec, render(step.params, inputs)) for step in self.steps]


def render(template: Any, inputs: dict[str, Any]) -> Any:
    """``template`` with its ``{input}`` placeholders replaced (see the module docstring)."""
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template)
        if whole:
            return inputs.get(whole.group(1), _ABSENT)
        return _PLACEHOLDER.sub(lambda m: _text(inputs.get(m.group(1), "")), template)
    if isinstance(template, list):
        items = (render(item, inputs) for item in template)
        return [item for item in items if item is not _ABSENT]
    if isinstance(template, dict):
        values = ((key, render(value, inputs)) for key, value in template.items())
        return {key: value for key, value in values if value is not _ABSENT}
    return template


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _placeholders(template: Any) -> set[str]:
    if isinstance(template, str):
        return set(_PLACEHOLDER.findall(template))
    if isinstance(template, list):
        return set().union(*map(_placeholders, template)) if template else set()
    if isinstance(template, dict):
        return _placeholders(list(template.values()))
    return set()


def _load_app(entry: Any, where: str, models: dict[str, ModelSpec]) -> NodeApp:
    if not isinstance(entry, dict):
        raise BadRequest(f"{where}: a node app must be a JSON object")
    missing = [name for name in PUBLIC_FIELDS if name not in entry]
    if missing or not entry.get("id"):
        raise BadRequest(f"{where}: missing node-app fields: {', '.join(missing or ['id'])}")
    where = f"{where} (id {entry['id']})"
    schema = entry["input_openapi_schema"] or {"type": "object", "properties": {}}
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        message = f"{where}: input_openapi_schema is not a valid schema: {error.message}"
        raise BadRequest(message) from None
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        raise BadRequest(f"{where}: input_openapi_schema must be an object schema with properties")
    steps = entry.get("steps")
    if not isinstance(steps, list) or not steps:
        raise BadRequest(f"{where}: 'steps' must be a non-empty list of {{model, params}}")
    parsed = []
    for index, step in enumerate(steps):
        model = step.get("model") if isinstance(step, dict) else None
        if model not in models:
            raise BadRequest(
                f"{where}: steps[{index}].model {model!r} is not a catalog model "
                "(write it like 'image/openai/gpt-image-2')"
            )
        params = step.get("params", {})
        if not isinstance(params, dict):
            raise BadRequest(f"{where}: steps[{index}].params must be a JSON object")
        unknown = sorted(_placeholders(params) - set(schema["properties"]))
        if unknown:
            raise BadRequest(
                f"{where}: steps[{index}].params use undeclared inputs {unknown}; declare them "
                "in input_openapi_schema.properties"
            )
        parsed.append(Step(models[model], params))
    public = {name: entry[name] for name in PUBLIC_FIELDS}
    validator = Draft202012Validator(schema, format_checker=FORMAT_CHECKER)
    return NodeApp(public, tuple(parsed), validator)


def parse_apps(data: Any, where: str) -> dict[str, NodeApp]:
    """Apps by version id from a ``{"node_apps": [...]}`` document (BadRequest naming the fault)."""
    if not isinstance(data, dict) or not isinstance(data.get("node_apps"), list):
        raise BadRequest(f'{where}: expected a JSON object {{"node_apps": [app, ...]}}')
    models = load_models()
    apps = [
        _load_app(entry, f"{where}: node_apps[{index}]", models)
        for index, entry in enumerate(data["node_apps"])
    ]
    return {app.id: app for app in apps}


@cache
def builtin_apps() -> dict[str, NodeApp]:
    """The apps of the package file ``node_apps.json``."""
    text = resources.files(__package__).joinpath(BUILTIN_FILE).read_text(encoding="utf-8")
    return parse_apps(json.loads(text), BUILTIN_FILE)


def load_apps(path: str | Path | None) -> dict[str, NodeApp]:
    """The built-in apps plus those of ``path`` (which win on a shared id)."""
    apps = dict(builtin_apps())
    if path is None:
        return apps
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BadRequest(f"node_apps: cannot read {path}: {error}") from None
    apps.update(parse_apps(data, str(path)))
    return apps


class NodeAppRegistry:
    """The apps served: the built-in ones plus the ``node_apps`` file (reloaded when it changes)."""

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.apps = load_apps(source)

    def get(self, app_id: str, source: str | None) -> NodeApp:
        """The app of this version id (404 otherwise), from the apps of ``source``."""
        if source != self.source:
            self.apps, self.source = load_apps(source), source
        app = self.apps.get(app_id)
        if app is None:
            raise NotFound(f"node app version {app_id!r} not found")
        return app
