"""A faithful, fault-injectable emulator of the Krea AI API (like stripe-mock or moto).

It is an independent implementation of the contract in Krea's OpenAPI document: it reads the
package data files (``krea_dagster/data``) and imports nothing from ``krea_dagster.api``, so the
client and the emulator check each other. Layout (moto-style):

- ``app.py``: the routes lists and the app factories (API + admin, and the CDN);
- ``handlers.py`` / ``admin.py`` / ``cdn.py``: thin handlers;
- ``state.py``: accounts, jobs, billing and time as an event simulation; ``views.py`` the JSON
  shapes; ``lifecycle.py`` the statuses and transitions as data; ``records.py`` the records;
  ``counters.py`` the stats;
- ``node_apps.py``: the node-app registry (``node_apps.json`` and the ``node_apps`` knob);
- ``validation.py``, ``pricing.py``, ``images.py``, ``assets.py``, ``faults.py``,
  ``webhooks.py``, ``persistence.py``, ``config.py``, ``clock.py``, ``catalog.py``;
- ``server.py`` (uvicorn, two origins), ``cli.py`` (``krea-emulator``), ``testing.py``
  (``run_emulator``, ``spawn_emulator``) and ``pytest_plugin.py`` (the ``krea_emulator`` fixture).

The server stack (starlette, uvicorn, python-multipart, jsonschema) comes with the ``emulator``
extra: ``pip install 'krea-dagster[emulator]'``. The names below are imported on first use, so
``krea-emulator`` can say so when it is missing instead of failing on import.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from krea_dagster.emulator.admin import DEFAULT_ADMIN_TOKEN
    from krea_dagster.emulator.app import create_app, create_cdn_app
    from krea_dagster.emulator.config import EmulatorConfig
    from krea_dagster.emulator.node_apps import DEMO_NODE_APP_ID
    from krea_dagster.emulator.server import EmulatorServer
    from krea_dagster.emulator.state import DEMO_TOKEN, EmulatorState
    from krea_dagster.emulator.testing import EmulatorHandle, run_emulator, spawn_emulator

_EXPORTS = {
    "DEFAULT_ADMIN_TOKEN": "krea_dagster.emulator.admin",
    "DEMO_NODE_APP_ID": "krea_dagster.emulator.node_apps",
    "DEMO_TOKEN": "krea_dagster.emulator.state",
    "EmulatorConfig": "krea_dagster.emulator.config",
    "EmulatorHandle": "krea_dagster.emulator.testing",
    "EmulatorServer": "krea_dagster.emulator.server",
    "EmulatorState": "krea_dagster.emulator.state",
    "create_app": "krea_dagster.emulator.app",
    "create_cdn_app": "krea_dagster.emulator.app",
    "run_emulator": "krea_dagster.emulator.testing",
    "spawn_emulator": "krea_dagster.emulator.testing",
}

__all__ = [
    "DEFAULT_ADMIN_TOKEN",
    "DEMO_NODE_APP_ID",
    "DEMO_TOKEN",
    "EmulatorConfig",
    "EmulatorHandle",
    "EmulatorServer",
    "EmulatorState",
    "create_app",
    "create_cdn_app",
    "run_emulator",
    "spawn_emulator",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'krea_dagster.emulator' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value
