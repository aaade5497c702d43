"""The YAML component: a whole krea-dagster node from a ``defs.yaml``, one model for every node.

``KreaWorkflowComponent`` and ``KreaImagesComponent`` are the same model (``KreaComponent``)
under the two names users know, with a scaffolder each: the fields are the arguments of
``build_krea_node``, so a YAML node has every guarantee and feature a Python one has.

.. code-block:: yaml

    type: krea_dagster.KreaWorkflowComponent
    attributes:
      name_prefix: catalog
      prompts: products              # a folder of prompt files, relative to this defs.yaml
      # table: products              # ... or an upstream table asset's key
      key_column: sku
      steps:
        - name: edit
          model: openai/gpt-image-2
          prompt: "Studio photo of a {color} {name} on a white table"
          inputs: {image_urls: ["{photo}"]}
        - name: upscale
          model: enhance/topaz/standard-enhance
          inputs: {image_url: "{previous}"}
          defaults: {model: Standard V2, width: 2048, height: 2048}
          price_usd: 0.01
      max_usd_per_run: 5
      executor: in_process           # runs of this code location in one process
      krea:
        api_key: "{{ env.KREA_API_KEY }}"
      sensors: {default_status: running}

A one-step node may write ``image_model:`` (with ``defaults:`` and ``price_usd:``) instead of
``steps:``. ``store`` and ``ledger`` default to ``krea-output/images`` and ``$KREA_LEDGER_URL``
(else ``sqlite:///krea-output/ledger.db``), relative to the project root: one token, one ledger.

The ``krea:`` block takes every field of ``KreaResource`` (derived from it, so they cannot
drift), resolved by a ``dg.Resolver`` (a plain resource-typed field would not get
``{{ env.* }}`` templating, dagster issue #33677) and **embedded** in the node: no fixed
resource key is registered, so any number of YAML nodes coexist, and the resolved token never
appears as resource configuration in the UI. With ``KREA_API_KEY`` unset the component still
loads (``dg check defs`` passes); a run then fails with a message naming the variable.
"""

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import dagster as dg
import pydantic
from pydantic import Field, model_validator

from krea_dagster.checks import DEFAULT_MAX_FAILED_FRACTION
from krea_dagster.engine.nodes import KreaStep
from krea_dagster.engine.paths import DEFAULT_STORE, LEDGER_ENV, default_ledger
from krea_dagster.engine.source import BATCH_COLUMN
from krea_dagster.node import KreaNodeAssets, build_krea_node
from krea_dagster.resource import KreaResource
from krea_dagster.schedules import build_krea_regeneration_schedule
from krea_dagster.sensors import DEFAULT_TICK_BUDGET_SECONDS, build_krea_sensors
from krea_dagster.translator import KreaAssetProps, KreaTranslator

__all__ = [
    "KreaComponent",
    "KreaImagesComponent",
    "KreaImagesScaffolder",
    "KreaSettings",
    "KreaWorkflowComponent",
    "KreaWorkflowScaffolder",
    "ScheduleOptions",
    "SensorOptions",
    "StepOptions",
]

MISSING_KEY = ""


def _settings_model() -> type[dg.Model]:
    """The ``krea:`` block: every field of ``KreaResource``, with its default and description."""
    fields: dict[str, Any] = {}
    for name, field in KreaResource.model_fields.items():
        default = (
            Field(default_factory=field.default_factory, description=field.description)
            if field.default_factory is not None
            else Field(default=field.default, description=field.description)
        )
        fields[name] = (field.annotation, default)
    model: type[dg.Model] = pydantic.create_model(
        "KreaSettings",
        __base__=dg.Model,
        __doc__="The krea: block: the Krea account and how it is used (KreaResource's fields).",
        **fields,
    )
    return model


KreaSettings = _settings_model()


def resolve_krea(context: dg.ResolutionContext, settings: Any) -> KreaResource:
    """The ``krea:`` block, templates rendered, as a ``KreaResource`` to embed."""
    raw = settings.model_dump() if settings is not None else {}
    values = dict(context.resolve_value(raw))
    api_key = values.pop("api_key", None)
    # A missing variable renders as None (or "None" through a string template): keep loading,
    # fail at first use with a message naming KREA_API_KEY.
    if api_key in (None, "None"):
        api_key = MISSING_KEY
    values = {key: value for key, value in values.items() if value is not None}
    return KreaResource(api_key=api_key, **values)


_ENV_NAME = re.compile(r"env(?:\.|\(\s*['\"])([A-Za-z_][A-Za-z0-9_]*)")


def _text(field: str, default: Any = None) -> Any:
    """A resolver for a text field whose template may render empty: the error then names the
    environment variable the template reads, instead of a bare type error."""

    def resolve(context: dg.ResolutionContext, raw: Any) -> Any:
        if raw is None:
            return default() if callable(default) else default
        value = context.resolve_value(raw)
        if value is None or (isinstance(value, str) and value.strip() in ("", "None")):
            names = sorted(set(_ENV_NAME.findall(str(raw))))
            variables = (
                f": the environment variable {', '.join(names)} is not set; set it, or write "
                "the value itself"
                if names
                else ""
            )
            raise ValueError(f"{field}: {str(raw)!r} rendered empty{variables}")
        return str(value)

    return resolve


class StepOptions(dg.Model):
    """One ``steps:`` entry (the fields of ``KreaStep``)."""

    name: str = Field(description="The step's name: its outputs asset is [name_prefix, name].")
    model: str = Field(
        description=(
            "Model path after /generate/image/ (openai/gpt-image-2), a catalog key for other "
            "kinds (enhance/topaz/standard-enhance, video/kling/kling-2.6), or "
            "node-app/<version id> for one of your Krea node apps."
        )
    )
    prompt: str | None = Field(
        default=None, description="Prompt template over the row's columns, e.g. 'Photo of {name}'."
    )
    inputs: dict[str, Any] = Field(
        default_factory=dict,
        description="Request fields rendered per row; '{previous}' is the previous step's output.",
    )
    defaults: dict[str, Any] = Field(default_factory=dict, description="Constant request fields.")
    price_usd: float | None = Field(
        default=None,
        description=(
            "USD per request, for a model the catalog has no price for (and per execution of a "
            "node app, which Krea publishes no price for)."
        ),
    )


class SensorOptions(dg.Model):
    """The ``sensors:`` block (``build_krea_sensors``)."""

    discovery: bool = True
    completion: bool = True
    deferred: bool = True
    discovery_interval_seconds: int = 30
    completion_interval_seconds: int = 10
    tick_budget_seconds: float = DEFAULT_TICK_BUDGET_SECONDS
    delete_removed_batches: bool = False
    default_status: Literal["running", "stopped"] = "stopped"


class ScheduleOptions(dg.Model):
    """The ``schedule:`` block (omit it for no schedule)."""

    cron: str
    mode: Literal["changed", "all"] = "changed"
    batches: list[str] | None = None
    timezone: str | None = None
    default_status: Literal["running", "stopped"] = "stopped"


class _GroupTranslator(KreaTranslator):
    """Puts every asset of a node in one group."""

    def __init__(self, group: str) -> None:
        self.group = group

    def get_asset_spec(self, props: KreaAssetProps) -> dg.AssetSpec:
        return super().get_asset_spec(props).replace_attributes(group_name=self.group)


class KreaComponent(dg.Component, dg.Model, dg.Resolvable):
    """A krea-dagster node from YAML: a prompt folder or a table asset, then Krea steps."""

    name_prefix: str = Field(description="Names asset keys, partitions, sensors, ledger scopes.")
    prompts: str | None = Field(
        default=None,
        description="A folder of prompt files (relative to this defs.yaml), or a URL. Or table:",
    )
    table: str | None = Field(
        default=None, description="The upstream table asset's key, e.g. products or a/b."
    )
    steps: list[StepOptions] | None = Field(
        default=None, description="The Krea steps, in order (or image_model: for one step)."
    )
    # Not "model": Resolvable.model() builds the YAML schema and must not be shadowed.
    image_model: str | None = Field(
        default=None,
        description="One step: the model path after /generate/image/, e.g. bfl/flux-1-dev.",
    )
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="One step: request fields of every prompt."
    )
    price_usd: float | None = Field(
        default=None,
        description="One step: USD per request, instead of the catalog's price.",
    )
    store: Annotated[
        str,
        dg.Resolver(
            _text("store", DEFAULT_STORE),
            model_field_type=str | None,
            inject_before_resolve=False,
            description=(
                "Image store: a directory (relative to the project root, the folder of "
                f"pyproject.toml, or $KREA_DAGSTER_ROOT) or s3://... Default: {DEFAULT_STORE}."
            ),
        ),
    ] = DEFAULT_STORE
    ledger: Annotated[
        str,
        dg.Resolver(
            _text("ledger", default_ledger),
            model_field_type=str | None,
            inject_before_resolve=False,
            description=(
                "Ledger database URL (sqlite:///file.db, relative to the project root; or "
                f"postgresql+psycopg://...). Default: ${LEDGER_ENV}, else "
                "sqlite:///krea-output/ledger.db. One token, one ledger."
            ),
        ),
    ] = Field(default_factory=default_ledger)
    key_column: str | None = Field(default=None, description="The column naming each row.")
    batch_column: str = Field(default=BATCH_COLUMN, description="The column naming each batch.")
    base_dir: str | None = Field(
        default=None,
        description=(
            "Where relative reference paths (photos/a1.png) are read from, relative to this "
            "defs.yaml (default: the prompt folder, else this defs.yaml's folder)."
        ),
    )
    carry_columns: list[str] = Field(default_factory=list)
    max_usd_per_run: float | None = None
    max_attempts: int = 3
    max_failed_fraction: float = Field(
        default=DEFAULT_MAX_FAILED_FRACTION,
        description=(
            "Share (0..1) of a batch's prompts whose Krea job may fail before the batch counts "
            "as failed: above it the no_failed_prompts check fails with ERROR and the step "
            "fails (any failure at all is a WARN)."
        ),
    )
    thumbnails: int = 24
    store_url: str | None = Field(
        default=None,
        description=(
            "HTTP(S) address at which the store root is served, so the gallery link in the UI "
            "opens in the browser."
        ),
    )
    group_name: str | None = Field(
        default=None, description="The asset group of the node (default: name_prefix)."
    )
    executor: Literal["in_process", "multiprocess"] | None = Field(
        default=None,
        description=(
            "The code location's executor: in_process runs every step of a run in its process "
            "(small batches start in seconds); default: Dagster's (multiprocess)."
        ),
    )
    krea: Annotated[
        KreaResource,
        dg.Resolver(
            resolve_krea,
            model_field_type=KreaSettings | None,
            description=(
                "The Krea account (every KreaResource field); api_key from "
                "{{ env.KREA_API_KEY }}. Default: KREA_API_KEY and KREA_BASE_URL."
            ),
        ),
    ] = Field(default_factory=KreaResource)
    sensors: SensorOptions = Field(default_factory=SensorOptions)
    schedule: ScheduleOptions | None = None

    @model_validator(mode="after")
    def _one_source_and_steps(self) -> "KreaComponent":
        if (self.prompts is None) == (self.table is None):
            raise ValueError(
                "give the rows' source: prompts: <folder of prompt files> or table: <upstream "
                "table asset key> (one of them)"
            )
        if (self.steps is None) == (self.image_model is None):
            raise ValueError(
                "give the Krea steps: steps: [...] (one or more), or image_model: <model> for "
                "a single step (one of them)"
            )
        if self.steps is not None and (self.defaults or self.price_usd is not None):
            raise ValueError(
                "defaults: and price_usd: belong to image_model:; with steps:, put them in the step"
            )
        return self

    def build_steps(self) -> list[KreaStep]:
        """The node's steps (public so subclasses can add to them)."""
        if self.steps is None:
            assert self.image_model is not None
            return [
                KreaStep("", self.image_model, defaults=self.defaults, price_usd=self.price_usd)
            ]
        return [
            KreaStep(
                step.name,
                step.model,
                prompt=step.prompt,
                inputs=step.inputs,
                defaults=step.defaults,
                price_usd=step.price_usd,
            )
            for step in self.steps
        ]

    def build_assets(self, context: dg.ComponentLoadContext) -> KreaNodeAssets:
        """The node's assets (public so subclasses can add to them)."""
        here = Path(context.path)
        return build_krea_node(
            self.name_prefix,
            steps=self.build_steps(),
            prompts=_local_or_url(here, self.prompts) if self.prompts is not None else None,
            table=self.table,
            # Outputs resolve against the project root (the folder of the dg project's
            # pyproject.toml, or $KREA_DAGSTER_ROOT), never inside the defs/ package.
            store=self.store,
            ledger=self.ledger,
            root=context.project_root,
            key_column=self.key_column,
            batch_column=self.batch_column,
            base_dir=(
                _local_or_url(here, self.base_dir)
                if self.base_dir is not None
                else (here if self.table is not None else None)
            ),
            carry_columns=self.carry_columns,
            krea=self.krea,
            translator=_GroupTranslator(self.group_name) if self.group_name else None,
            max_usd_per_run=self.max_usd_per_run,
            max_attempts=self.max_attempts,
            max_failed_fraction=self.max_failed_fraction,
            thumbnails=self.thumbnails,
            store_url=self.store_url,
        )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        assets = self.build_assets(context)
        options = self.sensors
        status = (
            dg.DefaultSensorStatus.RUNNING
            if options.default_status == "running"
            else dg.DefaultSensorStatus.STOPPED
        )
        sensors = build_krea_sensors(
            assets,
            discovery=options.discovery,
            completion=options.completion,
            deferred=options.deferred,
            discovery_interval_seconds=options.discovery_interval_seconds,
            completion_interval_seconds=options.completion_interval_seconds,
            tick_budget_seconds=options.tick_budget_seconds,
            delete_removed_batches=options.delete_removed_batches,
            default_status=status,
        )
        schedules = []
        if self.schedule is not None:
            schedules.append(
                build_krea_regeneration_schedule(
                    assets,
                    cron_schedule=self.schedule.cron,
                    mode=self.schedule.mode,
                    batches=self.schedule.batches,
                    execution_timezone=self.schedule.timezone,
                    default_status=dg.DefaultScheduleStatus.RUNNING
                    if self.schedule.default_status == "running"
                    else dg.DefaultScheduleStatus.STOPPED,
                )
            )
        executor = {
            None: None,
            "in_process": dg.in_process_executor,
            "multiprocess": dg.multiprocess_executor,
        }[self.executor]
        return dg.Definitions(
            assets=assets.assets, sensors=sensors, schedules=schedules, executor=executor
        )


def _local_or_url(base: Path, value: str) -> str:
    if "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


# -- scaffolders ----------------------------------------------------------------------------------


class KreaImagesScaffolder(dg.Scaffolder):
    """Writes a defs.yaml that loads as is: a prompt folder with one example batch, one model."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        prefix = request.target_path.name.replace("-", "_")
        dg.scaffold_component(
            request,
            {
                "name_prefix": prefix,
                "prompts": "prompts",
                "image_model": "bfl/flux-1-dev",
                "defaults": {"width": 1024, "height": 1024},
                "max_usd_per_run": 5.0,
                "executor": "in_process",
                "krea": {"api_key": "{{ env.KREA_API_KEY }}"},
                "sensors": {"default_status": "stopped"},
            },
        )
        folder = request.target_path / "prompts"
        folder.mkdir(parents=True, exist_ok=True)
        example = folder / "example.csv"
        if not example.exists():
            example.write_text("prompt\na lighthouse on a cliff at dawn\n", encoding="utf-8")


class KreaWorkflowScaffolder(dg.Scaffolder):
    """Writes a defs.yaml that loads and runs as is: a product table with reference photos, a
    gpt-image-2 edit of each photo, then an upscale of each edit."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        from krea_dagster.samples import write_sample_products

        prefix = request.target_path.name.replace("-", "_")
        dg.scaffold_component(
            request,
            {
                "name_prefix": prefix,
                "prompts": "products",
                "key_column": "sku",
                "steps": [
                    {
                        "name": "edit",
                        "model": "openai/gpt-image-2",
                        "prompt": "Studio photo of a {color} {name} on a white table",
                        "inputs": {"image_urls": ["{photo}"]},
                        "defaults": {"quality": "low"},
                    },
                    {
                        "name": "upscale",
                        "model": "enhance/topaz/standard-enhance",
                        "inputs": {"image_url": "{previous}"},
                        "defaults": {"model": "Standard V2", "width": 2048, "height": 2048},
                        "price_usd": 0.01,
                    },
                ],
                "max_usd_per_run": 5.0,
                "executor": "in_process",
                "krea": {"api_key": "{{ env.KREA_API_KEY }}"},
                "sensors": {"default_status": "stopped"},
            },
        )
        write_sample_products(request.target_path / "products", batch="spring")


@dg.scaffold_with(KreaImagesScaffolder)
class KreaImagesComponent(KreaComponent):
    """Generate images with Krea from a folder of prompt files (a ``KreaComponent``)."""


@dg.scaffold_with(KreaWorkflowScaffolder)
class KreaWorkflowComponent(KreaComponent):
    """Chained Krea steps over a prompt folder or a table asset (a ``KreaComponent``)."""
