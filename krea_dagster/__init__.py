"""krea-dagster: generate images with the Krea AI API as Dagster software-defined assets.

- ``KreaResource``: the Krea account and how it is used (timeouts, concurrency, polling).
- ``build_krea_image_assets``: prompt source -> prompts -> jobs -> images, one partition per
  batch, named from a prefix; ``build_krea_sensors`` and ``build_krea_regeneration_schedule``
  run it unattended; ``KreaImagesComponent`` builds it all from YAML.
- ``krea_dagster.api``: the Krea HTTP client on its own (no Dagster import).
- ``krea_dagster.emulator``: a Krea API emulator for demos, tests and CI (``krea-emulator``).

The names above are imported on first use, so ``import krea_dagster.api`` (a script using only
the client) and the ``krea-emulator`` command do not pay for importing Dagster. The Dagster
layer registers the library with ``DagsterLibraryRegistry`` when it is imported
(``krea_dagster/resource.py``, which every asset, sensor and component module imports).
"""

import importlib
from typing import Any

from krea_dagster.version import __version__

_EXPORTS = {
    "REGENERATE_TAG": "krea_dagster.assets",
    "ImageStore": "krea_dagster.engine.store",
    "KreaAssetProps": "krea_dagster.translator",
    "KreaImageAssets": "krea_dagster.assets",
    "KreaImagesComponent": "krea_dagster.component",
    "KreaImagesConfig": "krea_dagster.assets",
    "KreaJobsConfig": "krea_dagster.assets",
    "KreaResource": "krea_dagster.resource",
    "KreaStep": "krea_dagster.engine.nodes",
    "KreaWorkflow": "krea_dagster.workflow",
    "KreaWorkflowComponent": "krea_dagster.component",
    "KreaTranslator": "krea_dagster.translator",
    "Ledger": "krea_dagster.engine.ledger",
    "PromptSource": "krea_dagster.engine.source",
    "build_krea_image_assets": "krea_dagster.assets",
    "build_krea_regeneration_schedule": "krea_dagster.schedules",
    "build_krea_sensors": "krea_dagster.sensors",
    "build_krea_workflow": "krea_dagster.workflow",
}

__all__ = [
    "REGENERATE_TAG",
    "ImageStore",
    "KreaAssetProps",
    "KreaImageAssets",
    "KreaImagesComponent",
    "KreaImagesConfig",
    "KreaJobsConfig",
    "KreaResource",
    "KreaStep",
    "KreaTranslator",
    "KreaWorkflow",
    "KreaWorkflowComponent",
    "Ledger",
    "PromptSource",
    "__version__",
    "build_krea_image_assets",
    "build_krea_regeneration_schedule",
    "build_krea_sensors",
    "build_krea_workflow",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'krea_dagster' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
