"""The completion sensor requests a batch's images run once, whatever the interleaving (issue 19,
point 7).

Each test builds, with the engine's own submitter against the emulator, the moment a race
needs (a jobs run part way through its batch, one between two rounds, a crashed one, an images
run still collecting), then evaluates the completion tick (``build_sensor_context``, the cursor
carried from tick to tick) and counts the runs it requests.
"""

import logging
import uuid
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from krea_dagster import build_krea_sensors
from krea_dagster.engine.errors import ErrorCode
from krea_dagster.engine.ledger import Submission
from krea_dagster.engine.reconcile import reconcile
from krea_dagster.engine.run import run_coroutine
from krea_dagster.engine.submit import BatchSubmitter, PlannedPrompt

from .conftest import make_resource, materialize, prompt_rows, write_batch

PROMPTS = 4
LOG = logging.getLogger("krea_dagster.tests.completion_race")


@pytest.fixture
def persistent_instance():
    with dg.instance_for_test() as instance:
        yield instance


class Batch:
    """Batch ``b1`` of a prompt-file node, its validated prompts, and what drives it by hand."""

    def __init__(self, build, emulator, instance, prompts_dir) -> None:
        write_batch(prompts_dir, "b1", prompt_rows(PROMPTS))
        self.assets = build()
        self.emulator = emulator
        self.instance = instance
        self.krea = make_resource(emulator)
        self.pipeline = self.assets.pipeline
        self.ledger = self.pipeline.ledger
        (self.sensor,) = build_krea_sensors(self.assets, discovery=False)
        self.defs = dg.Definitions(
            assets=self.assets.assets, sensors=[self.sensor], resources={"krea": self.krea}
        )
        self.cursor: str | None = None
        validated = materialize(
            self.assets, "b1", instance=instance, krea=self.krea, roles=("prompts",)
        )
        assert validated.success
        table: pd.DataFrame = validated.output_for_node(self.assets.prompts.node_def.name)
        self.generation = self.pipeline.open_generation("b1", regeneration_id=None, run_id=None)
        self.planned = self.pipeline.plan(table, self.generation)
        assert len(self.planned) == PROMPTS

    def plan(self, run_id: str) -> None:
        """What the jobs run ``run_id`` does before its first POST."""
        keys = [prompt.prompt_key for prompt in self.planned]
        self.ledger.record_plan("krea_test", "b1", self.generation, keys, run_id=run_id)

    def send(self, prompts: list[PlannedPrompt], run_id: str) -> None:
        """POST these prompts as the jobs run does (intent, lease, send, answer)."""

        async def work() -> None:
            async with self.krea.async_client() as client:
                submitter = BatchSubmitter(
                    client,
                    self.ledger,
                    scope="krea_test",
                    batch="b1",
                    generation=self.generation,
                    model=self.pipeline.model,
                    run_id=run_id,
                    account=self.krea.account_id,
                    request_window=self.krea.request_window,
                    log=LOG,
                )
                report = await submitter.run(prompts)
                assert report.stopped_by is None

        run_coroutine(work())

    def claim(self, prompt: PlannedPrompt, run_id: str, *, lease_seconds: float) -> Submission:
        """The intent of ``prompt`` as the jobs run ``run_id`` writes it, nothing sent yet."""
        claim = self.ledger.claim(
            scope="krea_test",
            batch="b1",
            generation=self.generation,
            prompt_key=prompt.prompt_key,
            model=self.pipeline.model,
            request=prompt.request,
            request_hash=prompt.request_hash,
            submission_id=str(uuid.uuid4()),
            estimated_usd=prompt.estimated_usd,
            run_id=run_id,
            max_attempts=3,
            account=self.krea.account_id,
            lease_seconds=lease_seconds,
        )
        assert claim.row is not None
        return claim.row

    def rendered(self) -> None:
        """Every job Krea has for the batch is terminal (the emulator renders in milliseconds)."""
        for row in self.ledger.rows("krea_test", "b1", self.generation):
            if row.job_id:
                self.emulator.wait_for_job(row.job_id)

    def tick(self) -> list[dg.RunRequest]:
        """One completion tick with the previous tick's cursor; the runs it requests."""
        with dg.build_sensor_context(
            instance_ref=self.instance.get_ref(),
            definitions=self.defs,
            cursor=self.cursor,
            resources=self.defs.resources,
        ) as context:
            result = self.sensor.evaluate_tick(context)
        self.cursor = result.cursor
        return list(result.run_requests or [])


@pytest.fixture
def batch(build, emulator, persistent_instance, prompts_dir) -> Batch:
    return Batch(build, emulator, persistent_instance, prompts_dir)


def record_run(
    instance: dg.DagsterInstance,
    run_id: str,
    status: dg.DagsterRunStatus,
    tags: dict[str, str] | None = None,
) -> None:
    """The instance's record of a run (replaced: a run that moved on to ``status``)."""
    if instance.get_run_by_id(run_id) is not None:
        instance.delete_run(run_id)
    instance.add_run(
        dg.DagsterRun(job_name="__ASSET_JOB", run_id=run_id, status=status, tags=tags or {})
    )


def test_a_batch_part_way_through_its_jobs_run_gets_no_images_run_until_every_prompt_is_sent(
    batch: Batch,
):
    """A jobs run that planned 4 prompts and has sent 2, both terminal, leaves the batch
    undone: no images run; once all 4 are sent and terminal, exactly one, and no second."""
    run_id = str(uuid.uuid4())
    record_run(batch.instance, run_id, dg.DagsterRunStatus.STARTED)
    batch.plan(run_id)
    batch.send(batch.planned[:2], run_id)
    batch.rendered()
    assert batch.tick() == []
    assert batch.tick() == []  # the tick that saw them finish, then a quiet one
    batch.send(batch.planned[2:], run_id)
    batch.rendered()
    requests = batch.tick() + batch.tick()
    assert [request.partition_key for request in requests] == ["b1"]
    assert batch.tick() == []


def test_a_crashed_jobs_run_whose_row_is_reconciled_leaves_the_batch_to_its_retry(
    batch: Batch,
):
    """The jobs run planned 4 prompts and died after one POST left Krea (its row unresolved):
    no images run while the row is unresolved, none once it is reconciled with the other 3
    still unsent, and exactly one after the retry sent them and all are terminal."""
    crashed, retry = str(uuid.uuid4()), str(uuid.uuid4())
    record_run(batch.instance, crashed, dg.DagsterRunStatus.STARTED)
    batch.plan(crashed)
    first = batch.planned[0]
    row = batch.claim(
        first, crashed, lease_seconds=0.0
    )  # the worker is gone: its lease is expired at once
    assert batch.tick() == []  # unresolved
    record_run(batch.instance, crashed, dg.DagsterRunStatus.FAILURE)  # run monitoring

    async def settle() -> Any:
        async with batch.krea.async_client() as client:
            return await reconcile(
                client, batch.ledger, row, request_window=batch.krea.request_window, log=LOG
            )

    run_coroutine(settle())  # the retry's first step: never sent, so not created
    assert batch.ledger.get(row.submission_id).error_code == ErrorCode.RECONCILED_NOT_CREATED
    assert batch.tick() == []  # reconciled, and 4 prompts Krea has not taken
    record_run(batch.instance, retry, dg.DagsterRunStatus.STARTED)
    batch.plan(retry)
    batch.send(batch.planned[:1], retry)
    batch.rendered()
    assert batch.tick() == []  # 1 of 4 taken
    batch.send(batch.planned[1:], retry)
    batch.rendered()
    requests = batch.tick() + batch.tick()
    assert [request.partition_key for request in requests] == ["b1"]
    assert batch.tick() == []


def test_a_prompt_a_jobs_run_will_send_again_keeps_the_batch_undone_until_that_run_ends(
    batch: Batch,
):
    """Every prompt has a terminal row, but one was proven never created and the jobs run
    re-sends it in its next round: no images run before that round; one after it. A run that
    succeeded with such a prompt left (its rounds ran out) gets its images run."""
    run_id = str(uuid.uuid4())
    record_run(batch.instance, run_id, dg.DagsterRunStatus.STARTED)
    batch.plan(run_id)
    batch.send(batch.planned[1:], run_id)
    last = batch.planned[0]
    row = batch.claim(last, run_id, lease_seconds=60.0)
    batch.ledger.mark_not_created(
        row.submission_id,
        code=ErrorCode.RECONCILED_NOT_CREATED,
        message="no job was created in the request's window",
    )
    batch.rendered()
    assert batch.tick() + batch.tick() == []  # the run's next round sends it again

    record_run(batch.instance, run_id, dg.DagsterRunStatus.SUCCESS)  # its rounds ran out
    requests = batch.tick()
    assert [request.partition_key for request in requests] == ["b1"]
    assert batch.tick() == []


def test_no_second_images_run_while_the_first_still_collects_the_batch(batch: Batch):
    """The images run requested for a finished batch re-sends a transient failure and waits
    for it; the tick that sees the new job end requests no second run while the first is
    still going."""
    run_id = str(uuid.uuid4())
    record_run(batch.instance, run_id, dg.DagsterRunStatus.STARTED)
    batch.plan(run_id)
    batch.send(batch.planned[1:], run_id)
    batch.emulator.configure(
        job_failure_rate=1.0, job_failures=[["internal_error", "The provider failed."]]
    )
    batch.send(batch.planned[:1], run_id)
    batch.emulator.configure(job_failure_rate=0.0)
    batch.rendered()
    record_run(batch.instance, run_id, dg.DagsterRunStatus.SUCCESS)
    (first,) = batch.tick() + batch.tick()
    # The images run starts (the daemon launches the request), and its collection re-sends
    # the transient failure.
    record_run(batch.instance, str(uuid.uuid4()), dg.DagsterRunStatus.STARTED, tags=first.tags)
    batch.send(batch.planned[:1], run_id)
    batch.rendered()
    assert batch.tick() == []  # the tick sees the re-sent job complete: the run collects it
    assert batch.tick() == []
