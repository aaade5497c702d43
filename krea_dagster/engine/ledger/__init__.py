"""The job ledger: one durable row per Krea submission, so nothing is ever paid for twice.

Krea bills every completed job and has no idempotency key. The ledger is what makes a re-run,
a crash or a second worker safe: the *intent* to submit is committed **before** the POST,
with the time its first attempt is sent, in one transaction (``claim``), the time of every
later attempt (a 429 wait, a connect retry) right before it is sent (``note_send``), the job id
right after it (``mark_submitted``), and every later fact about the job (status, error, result
URL, the verified image) is written to the same row. So a POST costs two transactions. A prompt is only submitted again when its
latest row for the generation is terminal and not paid (failed, cancelled, or proven never
created).

States of a row::

    intent ──POST answered──▶ <Krea status> ──poll──▶ completed | failed | cancelled
      │                          (backlogged … intermediate-complete)
      ├──refused / never sent──▶ not_created
      └──outcome unknown───────▶ unknown ──reconciled──▶ <Krea status> | not_created | reported

**Leases and submit lanes.** ``intent`` and ``unknown`` rows are the only rows whose outcome
at Krea is not known. A row becomes one only together with its lease (a row of
``krea_submit_leases``: its worker's process and ``expires_at``, pushed forward before every send
and every wait), written in the same transaction as the intent and deleted in the same
transaction as the answer. While its POST is in flight the lease also holds one of the account's
submit *lanes*: at most ``submit_lanes`` POSTs of an account are in flight at once, across every
worker, instance and prefix that shares this database. A row whose answer was lost keeps its
lane while its worker reconciles it, or (with several lanes) gives it back after a few seconds
(``release_lane``) and keeps its lease, so the account's other submissions go on; ``krea_dagster.engine.reconcile`` decides the unresolved rows whose windows
overlap together. A lease expires: a worker that died, on this host or any other, holds nothing
once it has, whatever Dagster says of its run; its lane is taken over and its row reconciled.

**Guarded writes.** Every state change is one SQL statement whose ``WHERE`` holds its guard
(compare-and-set): a status never moves backwards and an answered row is never overwritten by a
late writer, whatever the interleaving of workers on PostgreSQL.

**Several jobs per submission.** A node app's execution (``POST /node-apps/{id}/execute``)
creates several jobs from one request. Its row is the submission (intent, lease, send time,
reconciliation: one POST, one window) and holds the first job; every further job gets an
*output row* of its own (``parent_id`` names the submission, ``output_key`` its prompt key),
written in the same transaction as the answer, so each job is polled, collected, costed and
cancelled like any other and nothing about it can be lost between the two writes. Output rows
are never claimed or re-sent: only the submission row decides whether the prompt is covered.

The ledger is SQLAlchemy Core on any URL: ``sqlite:///path/ledger.db`` by default,
``postgresql+psycopg://…`` for deployments where several run workers share it. The schema is
created and versioned here (``SCHEMA_VERSION``; older ledgers are upgraded in place).

Its parts, one concept per module: ``records`` (rows, states and the rules over them),
``schema`` (tables, versions, upgrades, the connection), ``protocol`` (every guarded write),
``queries`` (every read), ``uploads`` (reference files by content hash) and ``catalogs`` (each
backend's live model catalog, so every process of a deployment shares one fetch).
"""

from krea_dagster.engine.ledger.catalogs import CachedCatalog, LedgerCatalogCache
from krea_dagster.engine.ledger.protocol import LedgerWrites
from krea_dagster.engine.ledger.queries import LedgerQueries
from krea_dagster.engine.ledger.records import (
    PAID_STATES,
    TERMINAL_STATES,
    UNRESOLVED_STATES,
    Claim,
    JobUpdate,
    Lease,
    PlanProgress,
    Submission,
    SubmissionState,
    attempts_by_prompt,
    may_submit,
    output_key,
    utcnow,
)
from krea_dagster.engine.ledger.schema import SCHEMA_VERSION, LedgerSchemaError
from krea_dagster.engine.ledger.uploads import LedgerUploadCache

__all__ = [
    "PAID_STATES",
    "SCHEMA_VERSION",
    "TERMINAL_STATES",
    "UNRESOLVED_STATES",
    "CachedCatalog",
    "Claim",
    "JobUpdate",
    "Lease",
    "Ledger",
    "LedgerCatalogCache",
    "LedgerSchemaError",
    "LedgerUploadCache",
    "PlanProgress",
    "Submission",
    "SubmissionState",
    "attempts_by_prompt",
    "may_submit",
    "output_key",
    "utcnow",
]


class Ledger(LedgerWrites, LedgerQueries):
    """Durable submissions for every batch and generation of one or more asset prefixes.

    Args:
        url: a SQLAlchemy URL. ``sqlite:///relative/or/absolute.db`` (directories are created)
            or ``postgresql+psycopg://user@host/db``.
    """

    def upload_cache(self, account: str) -> LedgerUploadCache:
        """The ``UploadCache`` of an account: every worker and run sees every upload."""
        return LedgerUploadCache(self, account)

    def catalog_cache(self) -> LedgerCatalogCache:
        """The live model catalogs of every backend, shared by every process of the ledger."""
        return LedgerCatalogCache(self)
