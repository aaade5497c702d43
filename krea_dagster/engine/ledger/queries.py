"""The ledger's reads: rows by batch and generation, pending and unresolved rows, the
batches with work left, and the facts reconciliation and the checks read.
"""

from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from krea_dagster.engine.ledger.records import (
    TERMINAL_STATES,
    UNRESOLVED_STATES,
    PlanProgress,
    Submission,
    SubmissionState,
)
from krea_dagster.engine.ledger.schema import (
    OPEN_ROW_SQL,
    LedgerDatabase,
    accounts_table,
    chunks,
    generations_table,
    plans_table,
    submissions_table,
)

__all__ = ["LedgerQueries"]


class LedgerQueries(LedgerDatabase):
    """Every read of the ledger (see ``Ledger``)."""

    def accounts(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(accounts_table.c.account)).scalars())

    def foreign_jobs_seen(self, account: str) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(accounts_table.c.foreign_jobs_seen).where(
                    accounts_table.c.account == account
                )
            ).scalar_one_or_none()
        return int(value or 0)

    def rows(
        self, scope: str, batch: str | None = None, generation: int | None = None
    ) -> list[Submission]:
        """Every attempt, oldest first."""
        query = sa.select(submissions_table).where(submissions_table.c.scope == scope)
        if batch is not None:
            query = query.where(submissions_table.c.batch == batch)
        if generation is not None:
            query = query.where(submissions_table.c.generation == generation)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(submissions_table.c.id)).mappings()
            return [Submission.from_row(row) for row in rows]

    def latest(self, scope: str, batch: str, generation: int) -> dict[str, Submission]:
        """The latest attempt per prompt key of one generation of a batch (output rows under
        their own keys: see ``outputs``)."""
        latest: dict[str, Submission] = {}
        for row in self.rows(scope, batch, generation):
            latest[row.prompt_key] = row
        return latest

    def outputs(self, submission_ids: Iterable[str]) -> dict[str, list[Submission]]:
        """The output rows of these submissions (a node app's further jobs), in job order."""
        found: dict[str, list[Submission]] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(sorted(set(submission_ids)), 500):
                rows = conn.execute(
                    sa.select(submissions_table)
                    .where(submissions_table.c.parent_id.in_(chunk))
                    .order_by(submissions_table.c.id)
                ).mappings()
                for row in rows:
                    found.setdefault(row["parent_id"], []).append(Submission.from_row(row))
        return found

    def jobs_per_submission(self, model: str) -> int | None:
        """How many jobs the latest answered submission of ``model`` created (None: none yet).

        A node app's count, for reconciliation: an unresolved execution of it created that
        many jobs or none.
        """
        column = submissions_table.c
        with self.engine.connect() as conn:
            latest = conn.execute(
                sa.select(column.submission_id)
                .where(
                    column.model == model,
                    column.parent_id.is_(None),
                    column.job_id.is_not(None),
                    column.late_answer_of.is_(None),
                )
                .order_by(column.id.desc())
                .limit(1)
            ).scalar_one_or_none()
            if latest is None:
                return None
            outputs = conn.execute(
                sa.select(sa.func.count()).where(column.parent_id == latest)
            ).scalar_one()
        return 1 + int(outputs)

    def pending(self, scope: str, batch: str | None = None) -> list[Submission]:
        """Rows whose job exists at Krea and is not terminal yet."""
        query = sa.select(submissions_table).where(
            submissions_table.c.scope == scope,
            submissions_table.c.job_id.is_not(None),
            # Unknown future Krea statuses are live too: select by "not terminal".
            submissions_table.c.state.not_in(sorted(TERMINAL_STATES)),
            submissions_table.c.state.not_in(sorted(UNRESOLVED_STATES)),
        )
        if batch is not None:
            query = query.where(submissions_table.c.batch == batch)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(submissions_table.c.id)).mappings()
            return [Submission.from_row(row) for row in rows]

    def unresolved(self, scope: str | None = None) -> list[Submission]:
        """Rows whose outcome at Krea is not known (intent written, answer never recorded)."""
        query = sa.select(submissions_table).where(
            submissions_table.c.state.in_(sorted(UNRESOLVED_STATES))
        )
        if scope is not None:
            query = query.where(submissions_table.c.scope == scope)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(submissions_table.c.id)).mappings()
            return [Submission.from_row(row) for row in rows]

    def answered(self, host: str | None, limit: int = 200) -> list[Submission]:
        """The most recent rows sent from ``host`` that got an answer (for clock-offset bounds)."""
        query = (
            sa.select(submissions_table)
            .where(
                submissions_table.c.krea_created_at.is_not(None),
                submissions_table.c.submitted_at.is_not(None),
                submissions_table.c.sent_at.is_not(None),
                submissions_table.c.ambiguous_at.is_(None),
                submissions_table.c.owner_host == host,
            )
            .order_by(submissions_table.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [Submission.from_row(row) for row in conn.execute(query).mappings()]

    def known_job_ids(self, start: datetime, end: datetime) -> set[str]:
        """Every job id the ledger knows (all scopes) created between two times (Krea's clock)."""
        query = sa.select(submissions_table.c.job_id).where(
            submissions_table.c.job_id.is_not(None),
            submissions_table.c.krea_created_at >= start,
            submissions_table.c.krea_created_at <= end,
        )
        with self.engine.connect() as conn:
            return {job_id for (job_id,) in conn.execute(query)}

    def reported(self, scope: str, batch: str | None = None) -> list[Submission]:
        """Rows reconciliation could not decide, for the check that names them."""
        query = sa.select(submissions_table).where(
            submissions_table.c.scope == scope,
            submissions_table.c.state == SubmissionState.REPORTED.value,
        )
        if batch is not None:
            query = query.where(submissions_table.c.batch == batch)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(submissions_table.c.id)).mappings()
            return [Submission.from_row(row) for row in rows]

    def plan_progress(self, scope: str, batch: str, generation: int) -> PlanProgress:
        """The run that planned the batch generation, and how many of its planned prompts Krea
        has taken nothing for yet (``PlanProgress``).

        Above 0, a jobs run is still on its way (or died part way, or will re-send what Krea
        never took): the batch is not done, even when every row already written is terminal.
        """
        with self.engine.connect() as conn:
            planned = conn.execute(
                sa.select(plans_table.c.prompt_key, plans_table.c.run_id).where(
                    plans_table.c.scope == scope,
                    plans_table.c.batch == batch,
                    plans_table.c.generation == generation,
                )
            ).all()
        if not planned:
            return PlanProgress(run_id=None, unsent=0)
        latest = self.latest(scope, batch, generation)
        unsent = sum(1 for key, _ in planned if key not in latest or latest[key].awaits_sending)
        return PlanProgress(run_id=planned[0].run_id, unsent=unsent)

    def paid_duplicates(self, scope: str, batch: str, generation: int) -> dict[str, list[str]]:
        """Prompt keys with more than one paid job in a generation, with their job ids."""
        paid: dict[str, list[str]] = {}
        for row in self.rows(scope, batch, generation):
            if row.is_paid and row.job_id:
                paid.setdefault(row.prompt_key, []).append(row.job_id)
        return {key: ids for key, ids in paid.items() if len(ids) > 1}

    def open_batches(self, scope: str) -> list[tuple[str, int]]:
        """(batch, current generation) for the batches whose current generation still has work:
        a row not terminal yet, or completed with neither a stored image nor an image error.

        Reads the partial index ``ix_krea_submissions_open``, which holds only such rows, so the
        cost follows the work in flight, not how many batches the scope ever had.
        """
        with self.engine.connect() as conn:
            # Without statistics SQLite may pick another index on (scope, ...) and read every
            # row of the scope; INDEXED BY pins the partial one (PostgreSQL's planner, with
            # statistics, picks it on its own).
            hint = " INDEXED BY ix_krea_submissions_open" if conn.dialect.name == "sqlite" else ""
            open_rows = sa.text(
                f"SELECT DISTINCT batch, generation FROM {submissions_table.name}{hint} "
                f"WHERE scope = :scope AND {OPEN_ROW_SQL}"
            )
            found = {
                (batch, int(generation))
                for batch, generation in conn.execute(open_rows, {"scope": scope})
            }
            current = self._current_generations(conn, scope, {batch for batch, _ in found})
        return sorted((batch, gen) for batch, gen in found if current.get(batch) == gen)

    def current_generations(self, scope: str, batches: Iterable[str]) -> dict[str, int]:
        """The current generation of each of these batches (batches never started are left out)."""
        with self.engine.connect() as conn:
            return self._current_generations(conn, scope, set(batches))

    @staticmethod
    def _current_generations(conn: Connection, scope: str, batches: set[str]) -> dict[str, int]:
        current: dict[str, int] = {}
        for chunk in chunks(sorted(batches), 500):
            query = (
                sa.select(generations_table.c.batch, sa.func.max(generations_table.c.generation))
                .where(generations_table.c.scope == scope, generations_table.c.batch.in_(chunk))
                .group_by(generations_table.c.batch)
            )
            current.update((batch, int(generation)) for batch, generation in conn.execute(query))
        return current

    def batches(self, scope: str) -> list[tuple[str, int]]:
        """(batch, current generation) for every batch of a scope."""
        query = (
            sa.select(generations_table.c.batch, sa.func.max(generations_table.c.generation))
            .where(generations_table.c.scope == scope)
            .group_by(generations_table.c.batch)
            .order_by(generations_table.c.batch)
        )
        with self.engine.connect() as conn:
            return [(batch, int(generation)) for batch, generation in conn.execute(query)]
