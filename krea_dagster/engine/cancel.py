"""Cancel Krea jobs and record what Krea then says of each: the only place that cancels.

Used when a run is terminated (its own pending jobs), when jobs stay pending past
``poll_timeout`` with ``on_poll_timeout="cancel"`` (inline collection and the completion
sensor alike). Only jobs the ledger made are ever cancelled: a job on the account that the
ledger does not know is reported by reconciliation, never cancelled.
"""

import logging
import time
from collections.abc import Sequence
from typing import Any

from krea_dagster.api import AsyncKreaClient, DeadlineExceededError, Job, KreaError
from krea_dagster.engine.ledger import Ledger
from krea_dagster.engine.submit import job_update

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
    ``deadline`` (monotonic seconds), stops when it passes and returns what it did so far.
    """
    cancelled: list[Job] = []
    for job_id in job_ids:
        if deadline is not None and time.monotonic() >= deadline:
            log.warning(f"stopped cancelling at the deadline: {len(job_ids) - len(cancelled)} left")
            break
        try:
            # The deadline bounds each request and its retries too, not only the loop.
            await client.cancel_job(job_id, deadline=deadline)
            job = await client.get_job(job_id, deadline=deadline)
        except DeadlineExceededError:
            log.warning(f"stopped cancelling at the deadline: {len(job_ids) - len(cancelled)} left")
            break
        except KreaError as error:
            log.warning(f"could not cancel job {job_id}: {error}")
            continue
        ledger.update_jobs([job_update(job)])
        cancelled.append(job)
    return cancelled
