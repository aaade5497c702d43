"""``krea-emulator``: run the Krea API emulator from the command line.

``krea-emulator serve [options]`` (``serve`` may be omitted) binds the API and the CDN, prints
one JSON line ``{"base_url", "cdn_url", "token", "admin_token"}`` as the first line of standard
output, then serves until SIGINT or SIGTERM and shuts down cleanly. Logs go to standard error.

Every knob of ``EmulatorConfig`` is a flag (``error_5xx_rate`` -> ``--error-5xx-rate``; list
knobs repeat: ``--error-5xx-routes "POST /generate"``; ``--job-failures CODE=MESSAGE``);
precedence is defaults < ``--config FILE`` (a JSON object of knobs) < flags.

Without ``--token`` the emulator serves the fixed demo account ``DEMO_TOKEN``
(``00000000-0000-4000-8000-000000000000:krea-emulator-demo-secret``), so the demo needs no
account; the admin token defaults to ``krea-emulator-admin``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
from typing import Any

from krea_dagster.emulator.admin import DEFAULT_ADMIN_TOKEN
from krea_dagster.emulator.config import EmulatorConfig
from krea_dagster.emulator.errors import BadRequest
from krea_dagster.emulator.persistence import MemoryStore, SqliteStore
from krea_dagster.emulator.server import EmulatorServer, run
from krea_dagster.emulator.state import DEMO_TOKEN, EmulatorState

LIST_KNOBS = {"latency_routes", "error_5xx_routes", "job_failures"}


def _knob_type(field: dataclasses.Field[Any]) -> Any:
    if field.name in ("render_seconds", "time_scale") or isinstance(field.default, float):
        return float
    if field.name == "today":
        return str
    return int


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``krea-emulator serve``."""
    parser = argparse.ArgumentParser(
        prog="krea-emulator serve", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="API port (0 = a free port)")
    parser.add_argument("--cdn-port", type=int, default=0, help="CDN port (0 = a free port)")
    parser.add_argument(
        "--token", action="append", default=[], help="account token id:secret (repeatable)"
    )
    parser.add_argument("--admin-token", default=DEFAULT_ADMIN_TOKEN)
    parser.add_argument("--state-file", help="SQLite file that keeps state across restarts")
    parser.add_argument("--config", help="JSON file of knobs")
    parser.add_argument("--log-level", default="warning")
    knobs = parser.add_argument_group("knobs (see EmulatorConfig)")
    for field in dataclasses.fields(EmulatorConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.name in LIST_KNOBS:
            knobs.add_argument(flag, action="append", dest=field.name, default=None)
        else:
            knobs.add_argument(flag, type=_knob_type(field), dest=field.name, default=None)
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Defaults, then the config file, then the flags."""
    config = EmulatorConfig.from_file(args.config) if args.config else EmulatorConfig()
    flags = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(EmulatorConfig)
        if getattr(args, f.name) is not None
    }
    if "job_failures" in flags:
        flags["job_failures"] = [item.split("=", 1) for item in flags["job_failures"]]
    config.update(flags)
    return config


async def _serve(server: EmulatorServer, token: str) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.stop)
    sys.stdout.write(json.dumps(server.info(token)) + "\n")
    sys.stdout.flush()
    await server.serve()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``krea-emulator`` script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        tokens = args.token or [DEMO_TOKEN]
        store = SqliteStore(args.state_file) if args.state_file else MemoryStore()
        state = EmulatorState(config, store=store, tokens=tokens)
    except BadRequest as error:
        print(f"krea-emulator: {error.message}", file=sys.stderr)
        return 2
    server = EmulatorServer(
        state,
        host=args.host,
        port=args.port,
        cdn_port=args.cdn_port,
        admin_token=args.admin_token,
        log_level=args.log_level,
    )
    run(lambda: _serve(server, tokens[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
