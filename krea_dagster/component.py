"""``KreaImagesComponent``: a whole krea-dagster instance from a ``defs.yaml``.

.. code-block:: yaml

    type: krea_dagster.KreaImagesComponent
    attributes:
      name_prefix: posters
      prompts: prompts            # relative to this defs.yaml, or absolute, or a URL
      image_model: bfl/flux-1-dev
      defaults: {width: 1024, height: 1024}
      store: "{{ env.KREA_STORE }}"  # relative paths: to the project root
      ledger: sqlite:///posters-ledger.db
      max_usd_per_run: 25
      # price_usd: 0.02           # USD per request; needed with a cap when the catalog has no price
      max_failed_fraction: 0.2     # more than 20% failed prompts fail the batch
      krea:
        api_key: "{{ env.KREA_API_KEY }}"
        poll_interval: 2
      sensors:
        default_status: running
      schedule:
        cron: "0 3 * * *"
        mode: changed

The Krea settings are resolved by a ``dg.Resolver`` (a plain resource-typed field would not get
``{{ env.* }}`` templating, dagster issue #33677) and **embedded** in the instance: no fixed
resource key is registered, so any number of YAML instances coexist, and the resolved token
never appears as resource configuration in the UI. With ``KREA_API_KEY`` unset the component
still loads (``dg check defs`` passes); a run then fails with a message naming the variable.

``dg scaffold defs krea_dagster.KreaImagesComponent <name>`` writes a working ``defs.yaml``.
"""

from pathlib import Path
from typing import Annotated, Any, Literal

import dagster as dg
from pydantic import Field

from krea_dagster.api import DEFAULT_BASE_URL
from krea_dagster.assets import (
    DEFAULT_MAX_FAILED_FRACTION,
    KreaImageAssets,
    build_krea_image_assets,
)
from krea_dagster.resource import KreaResource
from krea_dagster.schedules import build_krea_regeneration_schedule
from krea_dagster.sensors import build_krea_sensors

__all__ = [
    "KreaImagesComponent",
    "KreaImagesScaffolder",
    "KreaSettings",
    "KreaWorkflowComponent",
    "ScheduleOptions",
    "SensorOptions",
    "StepOptions",
]

MISSING_KEY = ""


class KreaSettings(dg.Model):
    """The ``krea:`` block: the account and how it is used (fields of ``KreaResource``)."""

    api_key: str | None = Field(
        default=None, description='The id:secret token; use "{{ env.KREA_API_KEY }}".'
    )
    base_url: str | None = Field(
        default=None,
        description=f"API base URL; default: $KREA_BASE_URL when set, else {DEFAULT_BASE_URL}.",
    )
    poll_interval: float = 2.0
    poll_timeout: float = 0.0
    on_poll_timeout: Literal["report", "cancel"] = "report"
    max_concurrent_submits: int = 0
    max_concurrent_downloads: int = 8
    cancel_on_termination: bool = True
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    write_timeout: float = 30.0
    max_retries: int = 3


def resolve_krea(context: dg.ResolutionContext, settings: KreaSettings) -> KreaResource:
    """The ``krea:`` block, templates rendered, as a ``KreaResource`` to embed."""
    values = dict(context.resolve_value(settings.model_dump()))
    api_key = values.pop("api_key", None)
    # A missing variable renders as None (or "None" through a string template): keep loading,
    # fail at first use with a message naming KREA_API_KEY.
    if api_key in (None, "None"):
        api_key = MISSING_KEY
    return KreaResource(api_key=api_key, **values)


class SensorOptions(dg.Model):
    """The ``sensors:`` block."""

    discovery: bool = True
    completion: bool = True
    deferred: bool = True
    discovery_interval_seconds: int = 30
    completion_interval_seconds: int = 10
    tick_budget_seconds: float = 20.0
    delete_removed_batches: bool = False
    default_status: Literal["running", "stopped"] = "stopped"


class ScheduleOptions(dg.Model):
    """The ``schedule:`` block (omit it for no schedule)."""

    cron: str
    mode: Literal["changed", "all"] = "changed"
    batches: list[str] | None = None
    timezone: str | None = None
    default_status: Literal["running", "stopped"] = "stopped"


class KreaImagesScaffolder(dg.Scaffolder):
    """Writes a defs.yaml that loads as is (demo-sized defaults, the token from the environment)."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        prefix = request.target_path.name.replace("-", "_")
        dg.scaffold_component(
            request,
            {
                "name_prefix": prefix,
                "prompts": "prompts",
                "image_model": "bfl/flux-1-dev",
                "defaults": {"width": 1024, "height": 1024},
                # Relative to the project root (never inside defs/): one folder of outputs.
                "store": "krea-output/images",
                "ledger": "sqlite:///krea-output/ledger.db",
                "max_usd_per_run": 5.0,
                "krea": {"api_key": "{{ env.KREA_API_KEY }}"},
                "sensors": {"default_status": "stopped"},
            },
        )
        (request.target_path / "prompts").mkdir(parents=True, exist_ok=True)
        example = request.target_path / "prompts" / "example.csv"
        if not example.exists():
            example.write_text("prompt\na lighthouse on a cliff at dawn\n", encoding="utf-8")


@dg.scaffold_with(KreaImagesScaffolder)
class KreaImagesComponent(dg.Component, dg.Model, dg.Resolvable):
    """Generate images with Krea from a folder of prompt files: prompts, jobs, images, sensors."""

    name_prefix: str = Field(description="Names asset keys, partitions and sensors.")
    prompts: str = Field(description="Prompt directory (relative to this file), or a URL.")
    # Not "model": Resolvable.model() builds the YAML schema and must not be shadowed.
    image_model: str = Field(
        description="Krea model path after /generate/image/, e.g. bfl/flux-1-dev."
    )
    store: str = Field(
        description="Image store: a directory (relative to the project root, the folder of "
        "pyproject.toml, or $KREA_DAGSTER_ROOT) or s3://..."
    )
    ledger: str = Field(
        description="Ledger database URL (sqlite:///file.db, relative to the project root; or "
        "postgresql+psycopg://...)."
    )
    defaults: dict[str, Any] = Field(default_factory=dict, description="Request defaults.")
    carry_columns: list[str] = Field(default_factory=list)
    max_usd_per_run: float | None = None
    price_usd: float | None = Field(
        default=None,
        description=(
            "USD per request of image_model, used instead of the catalog's price; needed with "
            "max_usd_per_run when the catalog has no price for the model."
        ),
    )
    max_attempts: int = 3
    max_failed_fraction: float = Field(
        default=DEFAULT_MAX_FAILED_FRACTION,
        description=(
            "Share (0..1) of a batch's prompts whose Krea job may fail before the batch counts "
            "as failed: above it the no_failed_prompts check fails with ERROR and the images "
            "step fails (any failure at all is a WARN)."
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
    group_name: str | None = None
    krea: Annotated[
        KreaResource,
        dg.Resolver(
            resolve_krea,
            model_field_type=KreaSettings,
            description="The Krea account; its api_key from {{ env.KREA_API_KEY }}.",
        ),
    ]
    sensors: SensorOptions = Field(default_factory=SensorOptions)
    schedule: ScheduleOptions | None = None

    def build_assets(self, context: dg.ComponentLoadContext) -> KreaImageAssets:
        """The instance's assets (public so subclasses can add to them)."""
        return build_krea_image_assets(
            self.name_prefix,
            prompts=_local_or_url(context.path, self.prompts),
            model=self.image_model,
            # Outputs resolve against the project root (the folder of the dg project's
            # pyproject.toml, or $KREA_DAGSTER_ROOT), never inside the defs/ package.
            store=self.store,
            ledger=self.ledger,
            root=context.project_root,
            defaults=self.defaults,
            carry_columns=self.carry_columns,
            krea=self.krea,
            max_usd_per_run=self.max_usd_per_run,
            price_usd=self.price_usd,
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
        return dg.Definitions(assets=assets.assets, sensors=sensors, schedules=schedules)


def _local_or_url(base: Path, value: str) -> str:
    if "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


class StepOptions(dg.Model):
    """One ``steps:`` entry of a ``KreaWorkflowComponent`` (the fields of ``KreaStep``)."""

    name: str = Field(description="The step's name: its asset key is [name_prefix, name].")
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
        description="Request fields rendered per row; '{previous}' is the previous step's image.",
    )
    defaults: dict[str, Any] = Field(default_factory=dict, description="Constant request fields.")
    price_usd: float | None = Field(
        default=None,
        description=(
            "USD per request, for a model the catalog has no price for (and per execution of a "
            "node app, which Krea publishes no price for)."
        ),
    )


class KreaWorkflowComponent(dg.Component, dg.Model, dg.Resolvable):
    """Chained Krea steps over the rows of a table asset, from YAML.

    .. code-block:: yaml

        type: krea_dagster.KreaWorkflowComponent
        attributes:
          name_prefix: catalog
          table: products                  # the upstream asset's key
          key_column: sku
          store: krea-output/catalog       # relative to the project root, or s3://...
          ledger: sqlite:///krea-output/ledger.db
          steps:
            - name: edit
              model: openai/gpt-image-2
              prompt: "Studio photo of a {name} on white"
              inputs: {image_urls: ["{photo}"]}
            - name: upscale
              model: enhance/topaz/standard-enhance
              inputs: {image_url: "{previous}"}
              defaults: {model: Standard V2, width: 2048, height: 2048}
          krea:
            api_key: "{{ env.KREA_API_KEY }}"

    Relative ``store`` and ``ledger`` paths resolve against the project root (as for
    ``KreaImagesComponent``); relative reference paths in the table are read from this file's
    folder.
    """

    name_prefix: str = Field(description="Names asset keys, partitions and ledger scopes.")
    table: str = Field(description="The upstream table asset's key, e.g. products or a/b.")
    steps: list[StepOptions] = Field(description="The Krea steps, in order.")
    store: str = Field(description="Image store: a directory (relative to the project) or s3://")
    ledger: str = Field(description="Ledger database URL (relative sqlite paths: to the project).")
    key_column: str | None = Field(default=None, description="The column naming each row.")
    batch_column: str = Field(default="batch", description="The column naming each row's batch.")
    max_usd_per_run: float | None = None
    max_attempts: int = 3
    krea: Annotated[
        KreaResource,
        dg.Resolver(
            resolve_krea,
            model_field_type=KreaSettings,
            description="The Krea account; its api_key from {{ env.KREA_API_KEY }}.",
        ),
    ]

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        from krea_dagster.engine.nodes import KreaStep
        from krea_dagster.workflow import build_krea_workflow

        workflow = build_krea_workflow(
            self.name_prefix,
            table=dg.AssetKey.from_user_string(self.table),
            steps=[
                KreaStep(
                    s.name,
                    s.model,
                    prompt=s.prompt,
                    inputs=s.inputs,
                    defaults=s.defaults,
                    price_usd=s.price_usd,
                )
                for s in self.steps
            ],
            store=self.store,
            ledger=self.ledger,
            root=context.project_root,
            key_column=self.key_column,
            batch_column=self.batch_column,
            base_dir=context.path,
            krea=self.krea,
            max_usd_per_run=self.max_usd_per_run,
            max_attempts=self.max_attempts,
        )
        return dg.Definitions(assets=workflow.assets)
