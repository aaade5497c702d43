"""Cancel Krea jobs and record what Krea then says of each: the only place that cancels.

Used when a run is terminated (its own pending jobs), when jobs stay pending past
``poll_timeout`` with ``on_poll_timeout="cancel"`` (inline collection and the completion
sensor alike). Only jobs the ledger made are ever cancelled: a job on the account that the
ledger does not know is reported by reconciliation, never cancelled.
"""

import logging
from collections.abc import Sequence
from typing import Any

from krea_dagster.api import AsyncKreaClient, DeadlineExceededError, Job, KreaError
from krea_dagster.engine.ledger import JobUpdate, Ledger

__all__ = ["cancel_jobs"]


async def cancel_jobs(
    client: AsyncKreaClient,
    ledger: Ledger,
    job_ids: Sequence[str],
    *,
    log: logging.Logger | Any,
    deadline: float | None = None,
) -> list[Job]:
    """Cancel these jobs at Krea and record each one's status after the cancel.

    A job that cannot be cancelled is logged and left as it is; the rest are returned. With a
    ``deadline`` (``time.monotonic()`` seconds), every request is clipped to the time left and
    the loop stops when it passes: the jobs not reached stay pending for the next caller.
    """
    cancelled: list[Job] = []
    for index, job_id in enumerate(job_ids):
        try:
            await client.cancel_job(job_id, deadline=deadline)
            job = await client.get_job(job_id, deadline=deadline)
        except DeadlineExceededError:
            log.warning(
                f"deadline reached after {len(cancelled)} cancel(s); {len(job_ids) - index} "
                "job(s) left for the next caller"
            )
            break
        except KreaError as error:
            log.warning(f"could not cancel job {job_id}: {error}")
            continue
        ledger.update_jobs([JobUpdate.from_job(job)])
        cancelled.append(job)
    return cancelled
