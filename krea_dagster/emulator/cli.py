"""``krea-emulator``: run the Krea API emulator from the command line.

``krea-emulator serve [options]`` (``serve`` may be omitted) binds the API and the CDN, prints
one JSON line ``{"base_url", "cdn_url", "token", "admin_token"}`` as the first line of standard
output, then serves until SIGINT or SIGTERM and shuts down cleanly. Logs go to standard error.
``krea-emulator start --state-dir DIR [options]`` starts one in the background for DIR (state
kept in DIR, the ``serve`` options passed on), waits until it answers, prints the same JSON
line and returns; it fails at once, in the foreground, when the port is taken, so the next
command never talks to another emulator by mistake. ``krea-emulator stop --state-dir DIR`` stops
the background emulator started for DIR (by ``start``, the demo, or
``krea_dagster.emulator.local.ensure_local_emulator``). ``DIR`` defaults to ``.krea-emulator``.

Every knob of ``EmulatorConfig`` is a flag (``error_5xx_rate`` -> ``--error-5xx-rate``; list
knobs repeat: ``--error-5xx-routes "POST /generate"``; ``--job-failures CODE=MESSAGE``);
precedence is defaults < ``--config FILE`` (a JSON object of knobs) < flags.

Without ``--token`` the emulator serves the fixed demo account ``DEMO_TOKEN``
(``00000000-0000-4000-8000-000000000000:krea-emulator-demo-secret``), so the demo needs no
account; the admin token defaults to ``krea-emulator-admin``.

The server needs the ``emulator`` extra (starlette, uvicorn, python-multipart, jsonschema);
without it the command says which extra to install instead of failing with a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib.util
import json
import sys
from typing import Any

from krea_dagster.emulator.config import EmulatorConfig
from krea_dagster.emulator.errors import BadRequest

LIST_KNOBS = {"latency_routes", "error_5xx_routes", "job_failures"}
# The emulator's server stack: import name -> distribution (all in the `emulator` extra).
SERVER_STACK = {
    "starlette": "starlette",
    "uvicorn": "uvicorn",
    "multipart": "python-multipart",
    "jsonschema": "jsonschema",
}
INSTALL_HINT = "pip install 'krea-dagster[emulator]'"
# Kept equal to admin.DEFAULT_ADMIN_TOKEN and state.DEMO_TOKEN (a test checks), so --help
# works without importing the server stack.
DEFAULT_ADMIN_TOKEN = "krea-emulator-admin"
DEMO_TOKEN = "00000000-0000-4000-8000-000000000000:krea-emulator-demo-secret"

# One line per knob of EmulatorConfig (a test checks that every knob has one).
KNOB_HELP = {
    "seed": "seed of every fault's random stream: a run is reproducible per seed and request order",
    "latency_ms": "added latency per request of the public API, in milliseconds",
    "latency_routes": "limit the latency to these routes (route key or prefix, e.g. "
    "'POST /generate'; repeatable; none = every public route)",
    "error_5xx_rate": "probability that a public API request is answered 500/502/503",
    "error_5xx_routes": "limit the 5xx faults to these routes (repeatable; none = every route)",
    "accept_then_drop_rate": "probability that POST /generate creates the job (POST "
    "/node-apps/{id}/execute: all its jobs), then drops the connection without answering",
    "upload_accept_then_drop_rate": "probability that POST /assets stores the upload, then "
    "drops the connection without answering",
    "error_429_rate": "probability that POST /generate (or a node-app execute) is answered 429",
    "burst_429_every": "every N-th POST /generate or node-app execute starts a burst of 429s "
    "(0 = off)",
    "burst_429_length": "how many answers (that POST included) a 429 burst lasts",
    "job_failure_rate": "probability that a new job ends failed (failed jobs are not billed)",
    "job_failures": "failure CODE=MESSAGE drawn for failed jobs (repeatable)",
    "stuck_rate": "probability that a new job never finishes (until Krea's automatic timeout)",
    "webhook_duplicate_rate": "probability that a webhook is delivered twice",
    "webhook_delay_seconds": "delay before each webhook delivery, in seconds",
    "webhook_max_attempts": "delivery attempts per webhook",
    "webhook_retry_seconds": "first retry backoff of a webhook, in seconds (doubles each attempt)",
    "webhook_timeout_seconds": "timeout of one webhook delivery, in seconds",
    "time_scale": "multiplies every render time and Krea's automatic timeouts (0.1 = 10x faster)",
    "render_seconds": "fixed render time of every job, in seconds (default: the model's average "
    "time x time-scale)",
    "clock_offset_seconds": "seconds Krea's clock is ahead of the real one (negative: behind); "
    "created_at, completed_at and every Date header are shifted alike",
    "today": "the emulator's date (ISO, e.g. 2026-06-18) for deprecated-alias sunsets "
    "(default: today in UTC)",
    "node_apps": "JSON file of node apps to serve besides the built-in ones, in the format of "
    'the package\'s emulator/node_apps.json: {"node_apps": [app, ...]} (default: only the '
    "built-in apps)",
    "openapi": "OpenAPI document (JSON file) to serve at GET /openapi.json instead of the "
    "bundled one; its POST /generate operations are the models served (default: the bundled "
    "document)",
    "concurrency": "jobs an account renders at once (more are backlogged)",
    "backlog": "jobs an account may have waiting; beyond it POST /generate (and a node-app "
    "execute) gets 429",
    "balance_usd": "starting USD balance of an account; once spent POST /generate (and a "
    "node-app execute) gets 402",
}


def _knob_type(field: dataclasses.Field[Any]) -> Any:
    if field.name in ("render_seconds", "time_scale") or isinstance(field.default, float):
        return float
    if field.name in ("today", "node_apps", "openapi"):
        return str
    return int


def _default_of(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    assert field.default_factory is not dataclasses.MISSING
    value = field.default_factory()
    if field.name == "job_failures":
        return ", ".join(code for code, _message in value)
    return value or "none"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except for options whose help already names theirs (default None)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``krea-emulator serve``."""
    parser = argparse.ArgumentParser(
        prog="krea-emulator serve",
        description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog=(
            "Also: `krea-emulator start --state-dir DIR [options]` starts one in the background "
            "and waits until it answers; `krea-emulator stop --state-dir DIR` stops it."
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=0, help="API port (0 = a free port)")
    parser.add_argument("--cdn-port", type=int, default=0, help="CDN port (0 = a free port)")
    parser.add_argument(
        "--token",
        action="append",
        default=None,
        help=f"account token id:secret (repeatable; none = the demo account {DEMO_TOKEN})",
    )
    parser.add_argument(
        "--admin-token", default=DEFAULT_ADMIN_TOKEN, help="bearer token of /_emulator routes"
    )
    parser.add_argument(
        "--state-file", help="SQLite file that keeps state across restarts (none = in memory)"
    )
    parser.add_argument("--config", help="JSON file of knobs (flags override it)")
    parser.add_argument(
        "--exit-with-pid",
        type=int,
        default=None,
        help="stop serving when this process exits (an emulator started on behalf of dg dev)",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="uvicorn log level (logs go to standard error)",
    )
    knobs = parser.add_argument_group("knobs (also settable at run time: PATCH /_emulator/config)")
    for field in dataclasses.fields(EmulatorConfig):
        flag = "--" + field.name.replace("_", "-")
        # The parser's default stays None ("not given"), so a --config file is not overridden;
        # the help shows EmulatorConfig's default.
        text = KNOB_HELP[field.name]
        if field.default is not None:  # knobs whose default is None describe it themselves
            text += f" (default: {_default_of(field)})"
        text = text.replace("%", "%%")
        if field.name in LIST_KNOBS:
            knobs.add_argument(flag, action="append", dest=field.name, default=None, help=text)
        else:
            knobs.add_argument(
                flag,
                type=_knob_type(field),
                dest=field.name,
                default=None,
                help=text,
                metavar=field.name.upper(),
            )
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


def missing_server_stack() -> list[str]:
    """Distributions of the server stack that are not installed."""
    return [
        dist for module, dist in SERVER_STACK.items() if importlib.util.find_spec(module) is None
    ]


DEFAULT_STATE_DIR = ".krea-emulator"


def _state_dir_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help=f"state directory of the emulator (default: {DEFAULT_STATE_DIR}; the demo's is "
        ".demo/emulator)",
    )
    return parser


def _start(argv: list[str]) -> int:
    from krea_dagster.emulator.local import DEFAULT_PORT, ensure_local_emulator

    parser = _state_dir_parser(
        "krea-emulator start",
        "Start an emulator in the background for a state directory (or find the one running), "
        "wait until it answers and print its JSON line. Other options are those of serve.",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="API port")
    parser.add_argument("--cdn-port", type=int, default=None, help="CDN port (default: port + 1)")
    args, serve_args = parser.parse_known_args(argv)
    if "--state-file" in serve_args:
        parser.error("the state lives in --state-dir; --state-file is not an option of start")
    build_parser().parse_args(serve_args)  # a wrong option fails here, before anything starts
    cdn_port = args.cdn_port if args.cdn_port is not None else (args.port + 1 if args.port else 0)
    try:
        emulator = ensure_local_emulator(
            args.state_dir, port=args.port, cdn_port=cdn_port, extra_args=tuple(serve_args)
        )
    except RuntimeError as error:
        print(f"krea-emulator: {error}", file=sys.stderr)
        return 3
    info = {
        "base_url": emulator.base_url,
        "cdn_url": emulator.cdn_url,
        "token": emulator.token,
        "admin_token": emulator.admin_token,
    }
    print(json.dumps(info), flush=True)
    return 0


def _stop(argv: list[str]) -> int:
    from krea_dagster.emulator.local import stop_local_emulator

    parser = _state_dir_parser(
        "krea-emulator stop", "Stop the background emulator started for a state directory."
    )
    args = parser.parse_args(argv)
    if stop_local_emulator(args.state_dir):
        print(f"krea-emulator: stopped the emulator of {args.state_dir}")
    else:
        print(f"krea-emulator: no emulator was running for {args.state_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``krea-emulator`` script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "stop":
        return _stop(argv[1:])
    if argv and argv[0] == "start":
        return _start(argv[1:])
    if argv and argv[0] == "serve":
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    missing = missing_server_stack()
    if missing:
        print(
            f"krea-emulator: the emulator's server stack is not installed (missing: "
            f"{', '.join(missing)}); install it with: {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    return _serve_from_args(args)


def _serve_from_args(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from krea_dagster.emulator.persistence import MemoryStore, SqliteStore
    from krea_dagster.emulator.server import EmulatorServer, run
    from krea_dagster.emulator.state import EmulatorState

    async def serve(server: EmulatorServer, token: str) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.stop)
        sys.stdout.write(json.dumps(server.info(token)) + "\n")
        sys.stdout.flush()
        if args.exit_with_pid:
            watcher = asyncio.create_task(_stop_when_gone(args.exit_with_pid, server.stop))
        await server.serve()
        if args.exit_with_pid:
            watcher.cancel()

    try:
        config = config_from_args(args)
        tokens = args.token or [DEMO_TOKEN]
        store = SqliteStore(args.state_file) if args.state_file else MemoryStore()
        state = EmulatorState(config, store=store, tokens=tokens)
    except BadRequest as error:
        print(f"krea-emulator: {error.message}", file=sys.stderr)
        return 2
    try:
        server = EmulatorServer(
            state,
            host=args.host,
            port=args.port,
            cdn_port=args.cdn_port,
            admin_token=args.admin_token,
            log_level=args.log_level,
        )
    except OSError as error:
        state.close()
        if error.errno != errno.EADDRINUSE:
            print(f"krea-emulator: cannot listen on {args.host}: {error}", file=sys.stderr)
            return 2
        taken = _taken_ports(args.host, (args.port, args.cdn_port))
        print(
            f"krea-emulator: port {' and '.join(map(str, taken))} on {args.host} "
            f"{'is' if len(taken) == 1 else 'are'} already in use (another krea-emulator? stop it with `krea-emulator stop --state-dir DIR`, or "
            "choose other ports with --port/--cdn-port; the demo reads KREA_EMULATOR_PORT)",
            file=sys.stderr,
        )
        return 3
    run(lambda: serve(server, tokens[0]))
    return 0


async def _stop_when_gone(pid: int, stop: Any) -> None:
    """Call ``stop`` once process ``pid`` has exited (checked every second)."""
    import asyncio
    import os

    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            stop()
            return
        except PermissionError:
            pass  # alive, and another user's
        await asyncio.sleep(1.0)


def _taken_ports(host: str, ports: tuple[int, ...]) -> list[int]:
    import socket

    taken = []
    for port in ports:
        if port == 0:
            continue
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                taken.append(port)
    return taken or [port for port in ports if port]


if __name__ == "__main__":
    sys.exit(main())
