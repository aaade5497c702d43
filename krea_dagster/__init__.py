"""krea-dagster: generate images with the Krea AI API as Dagster software-defined assets.

- ``KreaResource``: the Krea account and how it is used (timeouts, concurrency, polling).
- ``build_krea_node``: one node: a source of rows (a prompt-file folder or any table asset),
  then one or more ``KreaStep``s, each with its validated prompts, paid-once jobs and verified
  outputs, partitioned by batch. ``build_krea_image_assets`` (a prompt folder, one model) and
  ``build_krea_workflow`` (a table asset, named steps) are its presets; ``build_krea_sensors``
  and ``build_krea_regeneration_schedule`` run any node unattended; ``KreaWorkflowComponent``
  and ``KreaImagesComponent`` build one from YAML.
- ``krea_dagster.api``: the Krea HTTP client on its own (no Dagster import).
- ``krea_dagster.emulator``: a Krea API emulator for demos, tests and CI (``krea-emulator``).

The names are imported on first use at run time, so ``import krea_dagster.api`` (a script
using only the client) and the ``krea-emulator`` command do not pay for importing Dagster;
a type checker reads them from the imports below, with their types. The Dagster layer
registers the library with ``DagsterLibraryRegistry`` when it is imported
(``krea_dagster/resource.py``, which every Dagster module of the package imports).
"""

import importlib
from typing import TYPE_CHECKING, Any

from krea_dagster.version import __version__

if TYPE_CHECKING:
    from krea_dagster.component import KreaComponent as KreaComponent
    from krea_dagster.component import KreaImagesComponent as KreaImagesComponent
    from krea_dagster.component import KreaWorkflowComponent as KreaWorkflowComponent
    from krea_dagster.engine.ledger import Ledger as Ledger
    from krea_dagster.engine.nodes import KreaStep as KreaStep
    from krea_dagster.engine.source import PromptSource as PromptSource
    from krea_dagster.engine.store import ImageStore as ImageStore
    from krea_dagster.execution import REGENERATE_TAG as REGENERATE_TAG
    from krea_dagster.execution import KreaImagesConfig as KreaImagesConfig
    from krea_dagster.execution import KreaJobsConfig as KreaJobsConfig
    from krea_dagster.node import KreaImageAssets as KreaImageAssets
    from krea_dagster.node import KreaNodeAssets as KreaNodeAssets
    from krea_dagster.node import KreaStepAssets as KreaStepAssets
    from krea_dagster.node import KreaWorkflow as KreaWorkflow
    from krea_dagster.node import build_krea_image_assets as build_krea_image_assets
    from krea_dagster.node import build_krea_node as build_krea_node
    from krea_dagster.node import build_krea_workflow as build_krea_workflow
    from krea_dagster.partitions import register_batches as register_batches
    from krea_dagster.resource import KreaResource as KreaResource
    from krea_dagster.samples import write_sample_products as write_sample_products
    from krea_dagster.schedules import (
        build_krea_regeneration_schedule as build_krea_regeneration_schedule,
    )
    from krea_dagster.sensors import build_krea_sensors as build_krea_sensors
    from krea_dagster.translator import KreaAssetProps as KreaAssetProps
    from krea_dagster.translator import KreaTranslator as KreaTranslator

_EXPORTS = {
    "REGENERATE_TAG": "krea_dagster.execution",
    "ImageStore": "krea_dagster.engine.store",
    "KreaAssetProps": "krea_dagster.translator",
    "KreaComponent": "krea_dagster.component",
    "KreaImageAssets": "krea_dagster.node",
    "KreaImagesComponent": "krea_dagster.component",
    "KreaImagesConfig": "krea_dagster.execution",
    "KreaJobsConfig": "krea_dagster.execution",
    "KreaNodeAssets": "krea_dagster.node",
    "KreaResource": "krea_dagster.resource",
    "KreaStep": "krea_dagster.engine.nodes",
    "KreaStepAssets": "krea_dagster.node",
    "KreaTranslator": "krea_dagster.translator",
    "KreaWorkflow": "krea_dagster.node",
    "KreaWorkflowComponent": "krea_dagster.component",
    "Ledger": "krea_dagster.engine.ledger",
    "PromptSource": "krea_dagster.engine.source",
    "build_krea_image_assets": "krea_dagster.node",
    "build_krea_node": "krea_dagster.node",
    "build_krea_regeneration_schedule": "krea_dagster.schedules",
    "build_krea_sensors": "krea_dagster.sensors",
    "build_krea_workflow": "krea_dagster.node",
    "register_batches": "krea_dagster.partitions",
    "write_sample_products": "krea_dagster.samples",
}

__all__ = [
    "REGENERATE_TAG",
    "ImageStore",
    "KreaAssetProps",
    "KreaComponent",
    "KreaImageAssets",
    "KreaImagesComponent",
    "KreaImagesConfig",
    "KreaJobsConfig",
    "KreaNodeAssets",
    "KreaResource",
    "KreaStep",
    "KreaStepAssets",
    "KreaTranslator",
    "KreaWorkflow",
    "KreaWorkflowComponent",
    "Ledger",
    "PromptSource",
    "__version__",
    "build_krea_image_assets",
    "build_krea_node",
    "build_krea_regeneration_schedule",
    "build_krea_sensors",
    "build_krea_workflow",
    "register_batches",
    "write_sample_products",
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
