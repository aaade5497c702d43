"""``krea-dagster``: command-line helpers for a code location that uses krea-dagster.

``krea-dagster register-batches [PREFIX ...]`` loads the code location, then adds every batch
of each node as a partition of the Dagster instance in ``$DAGSTER_HOME``, so ``dg launch
--partition BATCH`` can run it: every prompt file of a node over a folder, every value of the
batch column of a node over a table asset (read from the table's latest materialization). It
submits nothing to Krea and needs neither the daemon nor a token. Without PREFIX, every node
of the code location is registered.

``krea-dagster sample-products DIR`` writes a sample product table with reference photos
(``krea_dagster.samples``), for a first workflow.

``krea-dagster catalog [--refresh]`` lists the models the backend serves against this release
(see ``krea_dagster.catalog_command``).

The code location is found like ``dg`` finds it: ``-f FILE`` or ``-m MODULE`` when given;
else the ``[tool.dg.project]`` of the ``pyproject.toml`` in the current folder (or above);
else ``definitions.py`` in the current folder. ``python -m krea_dagster`` is the same command.

``krea-dagster gallery [PREFIX ...]`` loads the code location the same way and serves the local
image store of each instance on http://127.0.0.1 (``--port``, 8765 by default), printing the
address of every batch's gallery page. Browsers do not open ``file://`` links from the Dagster
UI; build the instances with ``store_url="http://127.0.0.1:8765"`` and the UI's gallery links
open on this server.
"""

import argparse
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["main"]


class UsageError(Exception):
    """Bad input: the message says what is wrong and how to fix it."""


def _find_pyproject(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _target(args: argparse.Namespace) -> tuple[str, str, Path]:
    """("file" | "module", file path or module name, working directory)."""
    cwd = Path.cwd()
    if args.file:
        path = Path(args.file).resolve()
        if not path.is_file():
            raise UsageError(f"-f {args.file}: no such file")
        return "file", str(path), path.parent
    if args.module:
        return "module", args.module, cwd
    pyproject = _find_pyproject(cwd)
    if pyproject is not None:
        dg_project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {})
        project = dg_project.get("dg", {}).get("project")
        if project:
            module = project.get("code_location_target_module") or (
                f"{project['root_module']}.definitions"
            )
            top = module.split(".")[0]
            src = pyproject.parent / "src"  # the create-dagster layout
            if (src / top).is_dir() or (src / f"{top}.py").is_file():
                return "module", module, src
            return "module", module, pyproject.parent
    if (cwd / "definitions.py").is_file():
        return "file", str(cwd / "definitions.py"), cwd
    raise UsageError(
        "no code location found: run this in a dg project (pyproject.toml with [tool.dg.project]) "
        "or next to definitions.py, or pass -f FILE / -m MODULE"
    )


def load_code_location(kind: str, target: str, working_directory: Path) -> Any:
    """Load the code location's definitions the way Dagster does (returns a repository)."""
    from dagster._core.definitions.definitions_load_context import (
        DefinitionsLoadContext,
        DefinitionsLoadType,
    )
    from dagster._core.definitions.reconstruct import repository_def_from_target_def
    from dagster._core.errors import DagsterImportError
    from dagster._core.workspace.autodiscovery import (
        loadable_targets_from_python_file,
        loadable_targets_from_python_module,
    )

    DefinitionsLoadContext.set(
        DefinitionsLoadContext(
            load_type=DefinitionsLoadType.INITIALIZATION, repository_load_data=None
        )
    )
    if str(working_directory) not in sys.path:
        sys.path.insert(0, str(working_directory))
    try:
        if kind == "file":
            targets = loadable_targets_from_python_file(target, str(working_directory))
        else:
            targets = loadable_targets_from_python_module(target, str(working_directory))
    except DagsterImportError as error:
        raise UsageError(f"cannot load {target}: {str(error).splitlines()[0]}") from None
    if not targets:
        raise UsageError(f"{target}: no Definitions found in it")
    return [repository_def_from_target_def(t.target_definition) for t in targets]


def register_batches_command(args: argparse.Namespace) -> int:
    from krea_dagster.partitions import built_nodes, register_batches

    kind, target, working_directory = _target(args)
    if not os.environ.get("DAGSTER_HOME"):
        raise UsageError(
            "DAGSTER_HOME is not set: partitions live in a Dagster instance; "
            "export DAGSTER_HOME=/path/to/a/folder (the same one `dg dev` and `dg launch` use)"
        )
    repositories = load_code_location(kind, target, working_directory)
    nodes = built_nodes()
    if not nodes:
        raise UsageError(
            f"{target} defines no krea-dagster node (build_krea_node, build_krea_image_assets, "
            "build_krea_workflow, or a krea_dagster component in its defs folder)"
        )
    prefixes = args.prefix or sorted(nodes)
    unknown = [p for p in prefixes if p not in nodes]
    if unknown:
        raise UsageError(
            f"no krea-dagster node named {', '.join(unknown)} in {target} "
            f"(nodes there: {', '.join(sorted(nodes))})"
        )
    import dagster as dg

    instance = dg.DagsterInstance.get()
    for prefix in prefixes:
        node = nodes[prefix]
        table = None
        if node.table_key is not None:
            table = _table_value(repositories, node.table_key, instance)
        try:
            result = register_batches(node, instance, only=args.batch or None, table=table)
        except ValueError as error:
            raise UsageError(str(error)) from None
        print(result.summary())
        for problem in result.problems:
            print(f"  skipped {problem}")
    return 0


def _table_value(repositories: list[Any], key: Any, instance: Any) -> Any:
    """The latest materialized value of a node's table asset, through its IO manager."""
    name = key.to_user_string()
    for repository in repositories:
        if not repository.asset_graph.has(key):
            continue
        if repository.asset_graph.get(key).partitions_def is not None:
            raise UsageError(
                f"the table {name} is partitioned: its partitions are the node's batches, "
                "added with the table's own partitions"
            )
        if instance.get_latest_materialization_event(key) is None:
            raise UsageError(
                f"the table {name} has not been materialized yet: materialize it first "
                f"(dg launch --assets {name}), then register its batches"
            )
        try:
            return repository.load_asset_value(key, instance=instance)
        except Exception as error:  # the user's IO manager
            raise UsageError(f"could not load the table {name}: {error}") from None
    raise UsageError(f"the table asset {name} is not defined in the code location")


def sample_products_command(args: argparse.Namespace) -> int:
    from krea_dagster.samples import write_sample_products

    try:
        table = write_sample_products(args.folder, batch=args.batch)
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from None
    print(f"wrote {table} and its photos in {table.parent / 'photos'}")
    return 0


DEFAULT_GALLERY_PORT = 8765


def gallery_command(args: argparse.Namespace) -> int:
    from krea_dagster.engine.gallery_server import GalleryServer, gallery_pages
    from krea_dagster.partitions import built_nodes

    kind, target, working_directory = _target(args)
    load_code_location(kind, target, working_directory)
    nodes = built_nodes()
    prefixes = args.prefix or sorted(nodes)
    unknown = [p for p in prefixes if p not in nodes]
    if unknown or not prefixes:
        raise UsageError(
            f"no krea-dagster node named {', '.join(unknown) or '(any)'} in {target} "
            f"(nodes there: {', '.join(sorted(nodes)) or 'none'})"
        )
    roots: dict[str, str] = {}  # every step's folder: <store root>/<prefix>[.<step>]
    for prefix in prefixes:
        for pipeline in nodes[prefix].pipelines.values():
            store = pipeline.store
            if "://" in store.root:
                print(f"krea-dagster: {prefix}: its store {store.root} is not local; not served")
            else:
                roots[pipeline.prefix] = store.root
    if not roots:
        raise UsageError("none of these nodes has a local store to serve")
    try:
        server = GalleryServer(roots, port=args.port)
    except OSError as error:
        raise UsageError(
            f"cannot listen on 127.0.0.1:{args.port} ({error.strerror or error}); pick another "
            "port with --port (and the same one in store_url)"
        ) from None
    print(f"krea-dagster gallery: serving at {server.url}/ (Ctrl-C to stop)", flush=True)
    for prefix, batches in gallery_pages(server.roots).items():
        for batch in batches:
            print(f"  {prefix} / {batch}: {server.page_url(prefix, batch)}")
    print(
        f'  store_url="{server.url}" in build_krea_image_assets (store_url: in defs.yaml) '
        "makes the UI's gallery links open here",
        flush=True,
    )
    if args.exit_with_pid:
        _stop_when_gone(args.exit_with_pid, server.close)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def _stop_when_gone(pid: int, stop: Any) -> None:
    """Call ``stop`` once process ``pid`` has exited (checked every second)."""
    import threading
    import time

    def watch() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                stop()
                return
            except PermissionError:
                pass  # alive, another user's
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True).start()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="krea-dagster", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    register = commands.add_parser(
        "register-batches",
        help="add each node's batches as partitions of $DAGSTER_HOME; pays nothing",
        description=(
            "Load the code location and add the batches of each krea-dagster node (its prompt "
            "files, or its table's batch column) as partitions of the Dagster instance in "
            "$DAGSTER_HOME. Submits nothing to Krea."
        ),
    )
    register.add_argument(
        "prefix", nargs="*", help="name_prefix of the nodes (default: every node)"
    )
    register.add_argument("--batch", action="append", help="only this batch (repeatable)")
    where = register.add_mutually_exclusive_group()
    where.add_argument("-f", "--python-file", dest="file", help="file defining the Definitions")
    where.add_argument("-m", "--module-name", dest="module", help="module defining them")
    register.set_defaults(handler=register_batches_command)
    sample = commands.add_parser(
        "sample-products",
        help="write a sample product table with reference photos (for a first workflow)",
    )
    sample.add_argument("folder", help="where to write products.csv and photos/")
    sample.add_argument(
        "--batch", help="only this batch, as <batch>.csv without a batch column (a prompt folder)"
    )
    sample.set_defaults(handler=sample_products_command)
    gallery = commands.add_parser(
        "gallery",
        help="serve the nodes' local image stores on 127.0.0.1 so gallery links open",
        description=(
            "Load the code location and serve each krea-dagster node's local image store on "
            "http://127.0.0.1, read only, printing every batch's gallery address. Give the "
            "nodes store_url=http://127.0.0.1:PORT so the Dagster UI links here."
        ),
    )
    gallery.add_argument("prefix", nargs="*", help="name_prefix of the nodes (default: every node)")
    gallery.add_argument(
        "--port",
        type=int,
        default=DEFAULT_GALLERY_PORT,
        help=f"port on 127.0.0.1 (default {DEFAULT_GALLERY_PORT}; 0 picks a free one)",
    )
    gallery.add_argument(
        "--exit-with-pid",
        type=int,
        default=None,
        help="stop when this process exits (for a server started on behalf of dg dev)",
    )
    where = gallery.add_mutually_exclusive_group()
    where.add_argument("-f", "--python-file", dest="file", help="file defining the Definitions")
    where.add_argument("-m", "--module-name", dest="module", help="module defining them")
    gallery.set_defaults(handler=gallery_command)
    from krea_dagster.catalog_command import add_catalog_command

    add_catalog_command(commands, UsageError)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``krea-dagster`` script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except UsageError as error:
        print(f"krea-dagster: {error}", file=sys.stderr)
        return 2
    return code
