"""krea-dagster: generate images with the Krea AI API as Dagster software-defined assets.

- ``KreaResource``: the Krea account and how it is used (timeouts, concurrency, polling).
- ``build_krea_image_assets``: prompt source -> prompts -> jobs -> images, one partition per
  batch, named from a prefix; ``build_krea_sensors`` and ``build_krea_regeneration_schedule``
  run it unattended; ``KreaImagesComponent`` builds it all from YAML.
- ``krea_dagster.api``: the Krea HTTP client on its own (no Dagster import).
- ``krea_dagster.emulator``: a Krea API emulator for demos, tests and CI (``krea-emulator``).
"""

from dagster import DagsterLibraryRegistry

from krea_dagster.assets import (
    REGENERATE_TAG,
    KreaImageAssets,
    KreaJobsConfig,
    build_krea_image_assets,
)
from krea_dagster.component import KreaImagesComponent
from krea_dagster.ledger import Ledger
from krea_dagster.resource import KreaResource
from krea_dagster.schedules import build_krea_regeneration_schedule
from krea_dagster.sensors import build_krea_sensors
from krea_dagster.source import PromptSource
from krea_dagster.store import ImageStore
from krea_dagster.translator import KreaAssetProps, KreaTranslator
from krea_dagster.version import __version__

DagsterLibraryRegistry.register("krea-dagster", __version__, is_dagster_package=False)

__all__ = [
    "REGENERATE_TAG",
    "ImageStore",
    "KreaAssetProps",
    "KreaImageAssets",
    "KreaImagesComponent",
    "KreaJobsConfig",
    "KreaResource",
    "KreaTranslator",
    "Ledger",
    "PromptSource",
    "__version__",
    "build_krea_image_assets",
    "build_krea_regeneration_schedule",
    "build_krea_sensors",
]
