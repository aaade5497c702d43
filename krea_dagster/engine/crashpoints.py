"""Named crash points for crash-recovery tests: ``KREA_DAGSTER_CRASH_AT=<name>`` kills the process.

The recovery guarantees (no double pay, nothing lost) are about what happens when a worker dies
at the worst moment. These points let a test kill a real run worker at exactly that moment
with SIGKILL (nothing flushed, no ``finally``), the way an OOM killer or a lost node would.
Unset (always, outside such tests), a crash point is a dictionary lookup.

Points: ``submit.after_intent`` (intent committed, POST not sent), ``submit.during_429_wait``
(a 429 answered, the next attempt not sent yet), ``upload.after_post`` (a reference file
uploaded, not yet recorded), ``submit.after_post``
(Krea answered, job id not yet recorded), ``collect.after_download`` (image downloaded, not yet
stored or recorded).
"""

import os
import signal

__all__ = ["CRASH_ENV", "crash_point"]

CRASH_ENV = "KREA_DAGSTER_CRASH_AT"


def crash_point(name: str, where: str | None = None) -> None:
    """SIGKILL this process if ``KREA_DAGSTER_CRASH_AT`` names this point.

    ``name@where`` narrows it to one place (a ledger scope: ``submit.after_post@catalog.scene``
    kills during the ``scene`` step of the ``catalog`` workflow, not before).
    """
    wanted = os.environ.get(CRASH_ENV)
    if wanted is not None and wanted in (name, f"{name}@{where}"):
        os.kill(os.getpid(), signal.SIGKILL)
