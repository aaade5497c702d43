"""Named crash points for crash-recovery tests: ``KREA_DAGSTER_CRASH_AT=<name>`` kills the process,
``KREA_DAGSTER_PAUSE_AT=<name>`` stops it (SIGSTOP) until someone sends SIGCONT.

The recovery guarantees (no double pay, nothing lost) are about what happens when a worker dies
at the worst moment. These points let a test kill a real run worker at exactly that moment
with SIGKILL (nothing flushed, no ``finally``), the way an OOM killer or a lost node would.
Unset (always, outside such tests), a crash point is a dictionary lookup.

A pause is what a VM pause, a long garbage collection or a suspended container does to a
worker: it keeps its sockets and its leases in the ledger, and wakes up later as if nothing
happened.

Points: ``submit.after_intent`` (intent committed, POST not sent), ``submit.after_note_send``
(``sent_at`` recorded and the lease extended, POST not written), ``submit.during_429_wait``
(a 429 answered, the next attempt not sent yet), ``upload.after_post`` (a reference file
uploaded, not yet recorded), ``submit.after_post``
(Krea answered, job id not yet recorded), ``collect.after_download`` (image downloaded, not yet
stored or recorded).
"""

import os
import signal

__all__ = ["CRASH_ENV", "PAUSE_ENV", "crash_point"]

CRASH_ENV = "KREA_DAGSTER_CRASH_AT"
PAUSE_ENV = "KREA_DAGSTER_PAUSE_AT"
_paused: set[str] = set()


def crash_point(name: str, where: str | None = None) -> None:
    """SIGKILL this process if ``KREA_DAGSTER_CRASH_AT`` names this point; SIGSTOP it (the first
    time only) if ``KREA_DAGSTER_PAUSE_AT`` does.

    ``name@where`` narrows it to one place (a ledger scope: ``submit.after_post@catalog.scene``
    kills during the ``scene`` step of the ``catalog`` workflow, not before).
    """
    names = (name, f"{name}@{where}")
    if os.environ.get(CRASH_ENV) in names:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(PAUSE_ENV) in names and name not in _paused:
        _paused.add(name)  # once per process: the woken worker goes on as a paused one would
        os.kill(os.getpid(), signal.SIGSTOP)
