"""``python -m krea_dagster`` runs the ``krea-dagster`` command (see ``krea_dagster.cli``)."""

import sys

from krea_dagster.cli import main

sys.exit(main())
