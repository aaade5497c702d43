"""krea-dagster: generate images with the Krea AI API as Dagster software-defined assets."""

from dagster import DagsterLibraryRegistry

from krea_dagster.version import __version__

DagsterLibraryRegistry.register("krea-dagster", __version__, is_dagster_package=False)

__all__ = ["__version__"]
