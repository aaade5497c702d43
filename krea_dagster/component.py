"""``KreaImagesComponent``: a whole krea-dagster instance from a ``defs.yaml``.

.. code-block:: yaml

    type: krea_dagster.KreaImagesComponent
    attributes:
      name_prefix: posters
      prompts: prompts            # relative to this defs.yaml, or absolute, or a URL
      image_model: bfl/flux-1-dev
      defaults: {width: 1024, height: 1024}
      store: "{{ env.KREA_STORE }}"
      ledger: sqlite:///posters-ledger.db
      max_usd_per_run: 25
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
    "ScheduleOptions",
    "SensorOptions",
]

MISSING_KEY = ""


class KreaSettings(dg.Model):
    """The ``krea:`` block: the account and how it is used (fields of ``KreaResource``)."""

    api_key: str | None = Field(
        default=None, description='The id:secret token; use "{{ env.KREA_API_KEY }}".'
    )
    base_url: str = DEFAULT_BASE_URL
    poll_interval: float = 2.0
    poll_timeout: float = 0.0
    on_poll_timeout: Literal["report", "cancel"] = "report"
    max_inflight_submits: int = 1
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
                "store": "images",
                "ledger": f"sqlite:///{prefix}-ledger.db",
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
    store: str = Field(description="Image store: a directory (relative to this file) or s3://...")
    ledger: str = Field(
        description="Ledger database URL (sqlite:///file.db or postgresql+psycopg://...)."
    )
    defaults: dict[str, Any] = Field(default_factory=dict, description="Request defaults.")
    carry_columns: list[str] = Field(default_factory=list)
    max_usd_per_run: float | None = None
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
            store=_local_or_url(context.path, self.store),
            ledger=_sqlite_relative(context.path, self.ledger),
            defaults=self.defaults,
            carry_columns=self.carry_columns,
            krea=self.krea,
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
        return dg.Definitions(assets=assets.assets, sensors=sensors, schedules=schedules)


def _local_or_url(base: Path, value: str) -> str:
    if "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _sqlite_relative(base: Path, url: str) -> str:
    """``sqlite:///name.db`` relative to the defs.yaml folder; other URLs unchanged."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str((base / url[len(prefix) :]).resolve())
    return url
