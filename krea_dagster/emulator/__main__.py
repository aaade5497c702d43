"""``python -m krea_dagster.emulator`` runs the ``krea-emulator`` CLI."""

import sys

from krea_dagster.emulator.cli import main

sys.exit(main())
