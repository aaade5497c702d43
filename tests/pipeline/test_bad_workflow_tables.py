"""Bad workflow tables: what the prompt-file path refuses, a workflow refuses too, before any
upload or POST (issue 18).

The cases of ``test_bad_tables`` are reused, not copied: each case's files are read as the
prompt source reads them and handed, as one DataFrame with a ``batch`` column, to an upstream
``@dg.asset``; a workflow over it must find the same problems (row, column, rule) as the
prompt-file node does, fail its prompts step with a message naming them, and leave the
emulator's counters untouched (no upload, no POST, no job). Each case runs twice: as the one
step of a workflow that reads the table as a prompt file would, and as the second step of a
chain whose templates name every column, so the bad data matters to the second step only (the
first is paid; the second refuses).

The workflow-only classes follow, each with its own cases: where a table keeps its batch, its
keys and its columns, what a template may name, ``{previous}``, references a table can hold
(local photos, object-store URIs, files that change after validation), prices and budgets.
"""

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from dagster._serdes import serialize_value
from PIL import Image

from krea_dagster import KreaResource, KreaStep, build_krea_workflow
from krea_dagster.emulator import DEMO_NODE_APP_ID
from krea_dagster.engine.nodes import ROW_KEY, KreaNode
from krea_dagster.engine.prompts import PromptValidationError
from krea_dagster.engine.source import BATCH_COLUMN, PromptSource, PromptSourceError, read_table
from krea_dagster.metadata import problems_table
from krea_dagster.partitions import table_batches

from .conftest import TEST_MODEL
from .test_bad_tables import (
    BAD_BATCH_NAMES,
    BAD_PRICES,
    CASES,
    HUGE,
    MAX_MESSAGE_CHARS,
    SEEDEDIT,
    csv_text,
    failure_message,
    posts,
    write_files,
)

GPT = "openai/gpt-image-2"  # image_urls[] of local photos, quality low|medium|high|auto
APP = f"node-app/{DEMO_NODE_APP_ID}"  # Krea publishes no price for a node app
WORKFLOW = "wf"
STEP = "case"
#: What a refused step leaves at the emulator: nothing.
NOTHING = {"posts": 0, "uploads": 0, "jobs": 0}


def side_effects(emulator) -> dict[str, int]:
    """What the emulator has seen: POSTs (generation requests and uploads), uploads, jobs."""
    stats = emulator.stats()
    return {"posts": posts(emulator), "uploads": stats["uploads"], "jobs": stats["jobs_created"]}


def photo(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> str:
    Image.new("RGB", (64, 64), color).save(path)
    return str(path)


def workflow_over(
    tmp_path: Path,
    table: Any,
    steps: Sequence[KreaStep],
    *,
    partitioned: bool = False,
    **options: Any,
) -> tuple[dg.AssetsDefinition, Any]:
    """An upstream ``products`` asset returning ``table`` and a workflow over it."""
    partitions = dg.DynamicPartitionsDefinition(name=f"{WORKFLOW}_batches")

    @dg.asset(partitions_def=partitions if partitioned else None)
    def products() -> Any:
        return table

    options.setdefault("store", tmp_path / "wf-store")
    options.setdefault("ledger", f"sqlite:///{tmp_path / 'wf-ledger.db'}")
    if partitioned:
        options["partitions_def"] = partitions
    workflow = build_krea_workflow(WORKFLOW, table=products, steps=steps, **options)
    return products, workflow


def run(
    products: dg.AssetsDefinition,
    workflow: Any,
    batch: str,
    *,
    instance: dg.DagsterInstance,
    krea: KreaResource,
    selection: Sequence[dg.AssetsDefinition] | None = None,
) -> dg.ExecuteInProcessResult:
    """Materialize the table, then ``selection`` (default: every step) for ``batch``."""
    name = workflow.partitions_def.name
    if not instance.has_dynamic_partition(name, batch):
        instance.add_dynamic_partitions(name, [batch])
    partitioned = products.partitions_def is not None
    if not partitioned:
        assert dg.materialize([products], instance=instance).success
    chosen = list(selection or workflow.assets)
    return dg.materialize(
        [products, *workflow.assets],
        selection=[products, *chosen] if partitioned else chosen,
        partition_key=batch,
        instance=instance,
        resources={"krea": krea},
        raise_on_error=False,
    )


def refused(
    result: dg.ExecuteInProcessResult,
    emulator,
    *,
    step: str = STEP,
    role: str = "prompts",
    before: dict[str, int] = NOTHING,
) -> str:
    """The message of a run refused in ``step``'s ``role`` asset, which the emulator's counters
    show left nothing behind (the same counts as ``before``)."""
    assert not result.success
    step_key, message = failure_message(result)
    assert step_key == f"{WORKFLOW}__{step}_{role}", (step_key, message)
    assert side_effects(emulator) == before, message
    assert len(message) < MAX_MESSAGE_CHARS, len(message)
    assert "Traceback" not in message and "Error:" not in message.split("\n")[0], message
    return message


def problems_found(result: dg.ExecuteInProcessResult) -> list[tuple[int, str, str]]:
    """(row, column, rule) of every problem the failed prompts step listed."""
    data = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert data is not None
    return [
        (record.data["row"], record.data["column"], record.data["rule"])
        for record in data.metadata["problems"].records
    ]


def same_problems(error: PromptValidationError) -> list[tuple[int, str, str]]:
    """(row, column, rule) of ``error``'s problems as the prompts step lists them."""
    return [
        (record.data["row"], record.data["column"], record.data["rule"])
        for record in problems_table(error).records
    ]


# -- 1. every refusal of the prompt-file path, from a table ------------------------------------

#: Cases of files the prompt source refuses before there is a table at all: rows with more or
#: fewer fields than the header, a header naming one column twice. A DataFrame has no ragged
#: rows; its analogue of a repeated header (two columns of one name) is
#: ``test_two_columns_of_one_name_are_refused``.
NOT_A_TABLE = {
    "1-duplicate-header-name",
    "2-one-field-too-many",
    "2-every-row-one-too-many",
    "2-one-field-too-few",
    "2-line-after-a-multiline-cell",
}
TABLE_CASES = [case for case in CASES if case.id not in NOT_A_TABLE]
#: The chain pays its first step for every row; a case of thousands of rows proves no more.
CHAIN_CASES = [case for case in TABLE_CASES if case.id != "5-five-thousand-bad-rows"]
#: The prompt-file message's words about file lines, and what a table's message says instead.
TABLE_HEAD = {"the header is line 1": "Rows are numbered from 1 after the header"}


def case_table(prompts_dir: Path) -> pd.DataFrame:
    """Every row of a case's files, in the order the prompt source reads them, as one table
    whose ``batch`` column names each row's batch (the file's name when its own is empty)."""
    frames = []
    for file in PromptSource(prompts_dir).files():
        frame = read_table(file)
        if BATCH_COLUMN in frame.columns:
            named = frame[BATCH_COLUMN].map(lambda v: str(v).strip() if pd.notna(v) else "")
            frame[BATCH_COLUMN] = named.where(named != "", file.stem)
        else:
            frame.insert(0, BATCH_COLUMN, file.stem)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def table_fragment(fragment: str, locations: Sequence[str]) -> str:
    """A case's expected fragment as a table's message says it: ``b.csv line 3`` is that
    row's number in the batch."""
    for number, location in sorted(enumerate(locations, 1), key=lambda item: -len(item[1])):
        fragment = fragment.replace(location, f"row {number}")
    return TABLE_HEAD.get(fragment, fragment)


def file_problems(
    build_files: Callable[..., Any], krea: KreaResource, batch: str, build_kwargs: dict[str, Any]
) -> tuple[list[tuple[int, str, str]], tuple[str, ...]]:
    """What the prompt-file node finds in the case's batch, and where each row of it is."""
    assets = build_files(**build_kwargs)
    with pytest.raises(PromptValidationError) as raised:
        assets.node.prepare(0, batch, models=assets.pipeline.model_catalog(krea))
    locations = assets.node.files.read_batch_rows(batch).locations
    return same_problems(raised.value), locations


def case_step(name: str, build_kwargs: dict[str, Any], **templates: Any) -> KreaStep:
    return KreaStep(
        name,
        model=build_kwargs.get("model", TEST_MODEL),
        defaults=build_kwargs.get("defaults", {}),
        price_usd=build_kwargs.get("price_usd"),
        **templates,
    )


def node_options(build_kwargs: dict[str, Any], prompts_dir: Path) -> dict[str, Any]:
    """The case's node-wide settings; relative paths are read where the prompt files are."""
    options = {k: v for k, v in build_kwargs.items() if k in ("max_usd_per_run", "carry_columns")}
    return {**options, "base_dir": prompts_dir}


def test_files_that_are_no_table_are_refused_by_the_source(prompts_dir):
    """Every case left out of the table parity is one the prompt source cannot read as a
    table (so no DataFrame can hold it as it is)."""
    left_out = [case for case in CASES if case.id in NOT_A_TABLE]
    assert len(left_out) == len(NOT_A_TABLE)
    for case in left_out:
        files = case.values[0]
        write_files(prompts_dir, files)
        for name in files:
            with pytest.raises(PromptSourceError):
                read_table(prompts_dir / name)
            (prompts_dir / name).unlink()


@pytest.mark.parametrize(("files", "batch", "build_kwargs", "expected"), TABLE_CASES)
def test_a_bad_table_is_refused_by_a_workflow_step_before_any_upload(
    build, emulator, krea, instance, prompts_dir, tmp_path, files, batch, build_kwargs, expected
):
    """The same rows in a table asset: the step finds the problems the prompt-file path
    finds, names them in its message, and Krea sees no upload and no POST."""
    write_files(prompts_dir, files)
    wanted, locations = file_problems(build, krea, batch, build_kwargs)
    table = case_table(prompts_dir)
    products, workflow = workflow_over(
        tmp_path,
        table,
        [case_step(STEP, build_kwargs)],
        **node_options(build_kwargs, prompts_dir),
    )
    result = run(products, workflow, batch, instance=instance, krea=krea)
    message = refused(result, emulator)
    assert problems_found(result) == wanted, message
    for fragment in expected:
        assert table_fragment(fragment, locations) in message, (fragment, message)


@pytest.mark.parametrize(("files", "batch", "build_kwargs", "expected"), CHAIN_CASES)
def test_a_bad_table_is_refused_by_the_second_step_that_reads_it(
    build, emulator, krea, instance, prompts_dir, tmp_path, files, batch, build_kwargs, expected
):
    """A chain whose second step's templates name every column of the bad table: the first
    step (a prompt of its own) is paid, the second refuses with the prompt-file path's
    problems, uploads nothing and POSTs nothing."""
    write_files(prompts_dir, files)
    wanted, locations = file_problems(build, krea, batch, build_kwargs)
    table = case_table(prompts_dir).rename(columns={"prompt": "case_prompt"})
    table["sketch_number"] = range(1, len(table) + 1)
    columns = [c for c in table.columns if c not in (BATCH_COLUMN, "case_prompt", "sketch_number")]
    steps = [
        KreaStep("sketch", model=TEST_MODEL, prompt="Sketch number {sketch_number}"),
        case_step(
            STEP,
            build_kwargs,
            prompt="{case_prompt}",
            inputs={column: "{" + column + "}" for column in columns},
        ),
    ]
    products, workflow = workflow_over(
        tmp_path, table, steps, **node_options(build_kwargs, prompts_dir)
    )
    result = run(products, workflow, batch, instance=instance, krea=krea)
    rows = len(locations)
    paid = {"posts": rows, "uploads": 0, "jobs": rows}  # the first step's jobs, no more
    message = refused(result, emulator, before=paid)
    assert problems_found(result) == wanted, message
    for fragment in expected:
        assert table_fragment(fragment, locations) in message, (fragment, message)


def test_failure_events_stay_small_for_a_huge_cell_in_a_table(emulator, krea, instance, tmp_path):
    """Fifty 100,000-character seeds in a table: the refused run's event log stays small."""
    table = pd.DataFrame(
        {"batch": "b", "prompt": [f"p{i}" for i in range(50)], "seed": ["7" * HUGE] * 50}
    )
    products, workflow = workflow_over(tmp_path, table, [KreaStep(STEP, model=TEST_MODEL)])
    result = run(products, workflow, "b", instance=instance, krea=krea)
    refused(result, emulator)
    records = instance.get_records_for_run(result.run_id).records
    dumped = "".join(serialize_value(record.event_log_entry) for record in records)
    assert len(dumped) < 300_000, len(dumped)


# -- 2. reserved columns ---------------------------------------------------------------------


def product_photos(tmp_path: Path, count: int = 2) -> list[str]:
    photos = tmp_path / "photos"
    photos.mkdir(exist_ok=True)
    colors = [(200, 30, 30), (30, 30, 200), (30, 200, 30), (200, 200, 30)]
    return [photo(photos / f"p{i}.png", colors[i]) for i in range(count)]


def edit_step(**templates: Any) -> KreaStep:
    templates.setdefault("prompt", "Studio photo of a {name}")
    templates.setdefault("inputs", {"image_urls": ["{photo}"]})
    return KreaStep(STEP, model=GPT, **templates)


def products_table(tmp_path: Path, **columns: Any) -> pd.DataFrame:
    """Two products of batch b1, each with a local photo; ``columns`` added or replaced."""
    table = pd.DataFrame(
        {
            "batch": ["b1", "b1"],
            "sku": ["A1", "B2"],
            "name": ["red sneaker", "blue boot"],
            "photo": product_photos(tmp_path),
        }
    )
    for name, values in columns.items():
        table[name] = values
    return table


@pytest.mark.parametrize("column", ["status", "prompt_key", "uri", "skip_reason", "step"])
def test_a_reserved_column_is_refused_before_row_1s_photo_is_uploaded(
    emulator, krea, instance, tmp_path, column
):
    """A column named like one krea-dagster writes: refused, naming it; no photo uploaded."""
    table = products_table(tmp_path, **{column: ["x", "y"]})
    products, workflow = workflow_over(tmp_path, table, [edit_step()])
    message = refused(run(products, workflow, "b1", instance=instance, krea=krea), emulator)
    assert f"column {column!r}" in message and "(reserved)" in message


def test_a_reserved_column_rendered_by_a_template_is_refused(emulator, krea, instance, tmp_path):
    """An input named like a reserved column is refused like the column; nothing uploaded."""
    step = edit_step(inputs={"image_urls": ["{photo}"], "status": "{name}"})
    products, workflow = workflow_over(tmp_path, products_table(tmp_path), [step])
    message = refused(run(products, workflow, "b1", instance=instance, krea=krea), emulator)
    assert "column 'status'" in message and "(reserved)" in message


def test_inputs_cannot_set_the_row_key():
    """``row_key`` is a row's identity, not a request field: refused when the step is built."""
    with pytest.raises(ValueError, match=r"inputs cannot set .row_key.*key_column"):
        KreaStep(STEP, model=GPT, inputs={ROW_KEY: "{sku}"})


# -- 3. a bad row beside a good one: nothing of the good one is uploaded ---------------------


def chain_over_sketches(**templates: Any) -> list[KreaStep]:
    """A text-to-image step, then a step editing its output (``{previous}``)."""
    templates.setdefault("prompt", "The {name} on a beach")
    templates.setdefault("inputs", {"image_urls": ["{previous}"]})
    return [
        KreaStep("sketch", model=TEST_MODEL, prompt="A sketch of a {name}"),
        KreaStep(STEP, model=GPT, **templates),
    ]


@pytest.mark.parametrize(
    ("columns", "steps"),
    [
        pytest.param({"quality": ["high", "ultra"]}, [edit_step()], id="a-column-the-step-sends"),
        pytest.param(
            {"grade": ["high", "ultra"]},
            [edit_step(inputs={"image_urls": ["{photo}"], "quality": "{grade}"})],
            id="a-template-input",
        ),
        pytest.param(
            {"quality": ["high", "ultra"]},
            [edit_step(inputs={"image_urls": ["{photo}"], "quality": "{quality}"})],
            id="a-template-reading-its-own-column",
        ),
        pytest.param(
            {"quality": ["high", "ultra"]},
            chain_over_sketches(inputs={"image_urls": ["{previous}"], "quality": "{quality}"}),
            id="the-second-step-of-a-chain",
        ),
    ],
)
def test_a_bad_quality_in_row_2_uploads_nothing_of_row_1(
    emulator, krea, instance, tmp_path, columns, steps
):
    """Row 1 has a photo (or a previous output) to upload, row 2 a quality Krea refuses: the
    step is refused naming row 2, and row 1's file is not uploaded."""
    products, workflow = workflow_over(tmp_path, products_table(tmp_path, **columns), steps)
    before = NOTHING if len(steps) == 1 else {"posts": 2, "uploads": 0, "jobs": 2}
    result = run(products, workflow, "b1", instance=instance, krea=krea)
    message = refused(result, emulator, before=before)
    assert "row 2, column 'quality'" in message and '"ultra" is not one of' in message


def bad_references(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """Row 2's photo, each a kind of file a request cannot take, and what the refusal says."""
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("not an image", encoding="utf-8")
    (folder / "clip.png").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)  # an MP4
    good = Path(photo(folder / "good.png"))
    (folder / "truncated.png").write_bytes(good.read_bytes()[:40])
    with open(folder / "huge.png", "wb") as handle:
        handle.truncate(76 * 1024 * 1024)  # sparse: no disk used
    (folder / "a-folder.png").mkdir()
    return {
        "missing": (str(folder / "gone.png"), "gone.png: no such file"),
        "a-folder": (str(folder / "a-folder.png"), "not a regular file"),
        "empty": (str(folder / "empty.png"), "the file is empty"),
        "not-an-image": (str(folder / "notes.png"), "not a type Krea accepts"),
        "truncated": (str(folder / "truncated.png"), "Pillow cannot read it"),
        "over-75-MB": (str(folder / "huge.png"), "over Krea's 75 MB limit"),
        "a-video-for-an-image": (
            str(folder / "clip.png"),
            "the file is video/mp4, but image_urls[0] takes an image file",
        ),
        "relative-to-no-such-place": ("photos/gone.png", "photos/gone.png: no such file"),
        "a-data-uri-that-is-not-base64": ("data:image/png;base64,%%%", "base64"),
        "an-unknown-scheme": ("foo://bucket/cat.png", "fsspec knows no foo:// protocol"),
    }


BAD_REFERENCE_KINDS = [
    "missing",
    "a-folder",
    "empty",
    "not-an-image",
    "truncated",
    "over-75-MB",
    "a-video-for-an-image",
    "relative-to-no-such-place",
    "a-data-uri-that-is-not-base64",
    "an-unknown-scheme",
]


@pytest.mark.parametrize("kind", BAD_REFERENCE_KINDS)
def test_a_bad_photo_in_row_2_uploads_nothing_of_row_1(emulator, krea, instance, tmp_path, kind):
    """Row 1's photo is fine, row 2's cannot be sent: refused naming row 2 and the file, no
    upload."""
    reference, fragment = bad_references(tmp_path)[kind]
    table = products_table(tmp_path)
    table.loc[1, "photo"] = reference
    products, workflow = workflow_over(tmp_path, table, [edit_step()])
    message = refused(run(products, workflow, "b1", instance=instance, krea=krea), emulator)
    assert "row 2, column 'image_urls[0]'" in message and fragment in message, message


def test_an_empty_photo_cell_in_row_2_is_refused(emulator, krea, instance, tmp_path):
    """A template's cell that is empty in row 2 is refused naming the row and the column."""
    table = products_table(tmp_path)
    table.loc[1, "photo"] = None
    products, workflow = workflow_over(tmp_path, table, [edit_step()])
    message = refused(run(products, workflow, "b1", instance=instance, krea=krea), emulator)
    assert "row 2, column 'photo': the cell is empty" in message


def without_s3_filesystem(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if ``krea-dagster[s3]`` were not installed: fsspec cannot import its s3 filesystem."""
    registry = sys.modules["fsspec.registry"]._registry  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "s3fs", None)
    for protocol in ("s3", "s3a"):
        if protocol in registry:
            monkeypatch.delitem(registry, protocol)


def test_s3_photos_without_the_s3_extra_name_the_install(
    emulator, krea, instance, tmp_path, monkeypatch
):
    """An s3:// photo with no s3 filesystem installed: a message naming pip install
    'krea-dagster[s3]', not an ImportError; row 1's local photo is not uploaded."""
    without_s3_filesystem(monkeypatch)
    table = products_table(tmp_path)
    table.loc[1, "photo"] = "s3://catalog-photos/b2.png"
    products, workflow = workflow_over(tmp_path, table, [edit_step()])
    message = refused(run(products, workflow, "b1", instance=instance, krea=krea), emulator)
    assert "row 2, column 'image_urls[0]'" in message
    assert "pip install 'krea-dagster[s3]'" in message and "ImportError" not in message


def test_a_photo_changed_after_validation_is_refused_before_any_upload(
    emulator, krea, instance, tmp_path
):
    """Row 2's photo changes between the prompts step and the jobs step: the jobs step
    refuses naming it before row 1's photo is uploaded, and says to validate again."""
    table = products_table(tmp_path)
    products, workflow = workflow_over(tmp_path, table, [edit_step()])
    step = workflow.step(STEP)
    validated = run(
        products, workflow, "b1", instance=instance, krea=krea, selection=[step.prompts]
    )
    assert validated.success
    photo(Path(table.loc[1, "photo"]), (0, 0, 0))
    result = run(products, workflow, "b1", instance=instance, krea=krea, selection=[step.jobs])
    message = refused(result, emulator, role="jobs")
    assert "p1.png: the file changed after the batch was validated" in message
    assert "Materialize the step's prompts again" in message and "p0.png" not in message


@pytest.mark.parametrize(
    ("step", "fragments"),
    [
        pytest.param(
            KreaStep(
                STEP,
                model="openai/gpt-image-3",
                prompt="A {name}",
                inputs={"image_urls": ["{photo}"]},
            ),
            ["openai/gpt-image-3", "gpt-image-2"],
            id="a-misspelt-model",
        ),
        pytest.param(
            KreaStep(
                STEP,
                model=APP,
                inputs={"product_image": "{photo}", "product": "{name}", "colour": "{name}"},
                price_usd=0.25,
            ),
            ["column 'colour'"],
            id="a-node-app-input-it-does-not-take",
        ),
        pytest.param(
            KreaStep(STEP, model=APP, inputs={"product_image": "{photo}"}, price_usd=0.25),
            ["product"],
            id="a-node-app-without-a-required-input",
        ),
    ],
)
def test_a_step_its_model_refuses_uploads_nothing(
    emulator, krea, instance, tmp_path, step, fragments
):
    """A model Krea does not have, or a node app's input schema broken by the step: refused
    in the prompts step before any photo is uploaded."""
    products, workflow = workflow_over(tmp_path, products_table(tmp_path), [step])
    message = refused(run(products, workflow, "b1", instance=instance, krea=krea), emulator)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# -- 4. budgets and prices ------------------------------------------------------------------


def test_a_batch_over_the_budget_cap_is_refused_before_any_upload(
    emulator, krea, instance, tmp_path
):
    """Two edits at $0.2336 under a $0.30 cap: the jobs step refuses before any upload."""
    products, workflow = workflow_over(
        tmp_path, products_table(tmp_path), [edit_step()], max_usd_per_run=0.3
    )
    result = run(products, workflow, "b1", instance=instance, krea=krea)
    message = refused(result, emulator, role="jobs")
    assert "above max_usd_per_run $0.3000" in message and "nothing was submitted" in message


def test_the_second_step_over_the_cap_uploads_no_output_of_the_first(
    emulator, krea, instance, tmp_path
):
    """The cap holds per step: the sketches fit, the edits do not; the edit step's jobs
    refuse before the sketches (its references) are uploaded."""
    products, workflow = workflow_over(
        tmp_path, products_table(tmp_path), chain_over_sketches(), max_usd_per_run=0.3
    )
    result = run(products, workflow, "b1", instance=instance, krea=krea)
    message = refused(result, emulator, role="jobs", before={"posts": 2, "uploads": 0, "jobs": 2})
    assert "above max_usd_per_run $0.3000" in message


def test_a_price_override_is_budgeted(emulator, krea, instance, tmp_path):
    """An unpriced model with the step's price_usd: the cap applies to that price (two rows at
    $0.40 over $0.50: the jobs step refuses, nothing uploaded)."""
    step = KreaStep(
        STEP,
        model=SEEDEDIT,
        prompt="Edit the {name}",
        inputs={"image_url": "{photo}"},
        price_usd=0.4,
    )
    products, workflow = workflow_over(
        tmp_path, products_table(tmp_path), [step], max_usd_per_run=0.5
    )
    result = run(products, workflow, "b1", instance=instance, krea=krea)
    message = refused(result, emulator, role="jobs")
    assert "estimated at $0.8000, above max_usd_per_run $0.5000" in message


@pytest.mark.parametrize(
    "step",
    [
        pytest.param(
            KreaStep(
                STEP, model=SEEDEDIT, prompt="Edit the {name}", inputs={"image_url": "{photo}"}
            ),
            id="a-model-with-no-price",
        ),
        pytest.param(
            KreaStep(STEP, model=APP, inputs={"product_image": "{photo}", "product": "{name}"}),
            id="a-node-app",
        ),
    ],
)
def test_an_unpriced_step_under_a_cap_is_refused_before_any_upload(
    emulator, krea, instance, tmp_path, step
):
    """No price, no budget: refused in the prompts step, naming how to give the step's
    price; nothing uploaded."""
    products, workflow = workflow_over(
        tmp_path, products_table(tmp_path), [step], max_usd_per_run=3
    )
    message = refused(run(products, workflow, "b1", instance=instance, krea=krea), emulator)
    assert "no price is known for" in message and "KreaStep(price_usd=...)" in message


@pytest.mark.parametrize(
    "cap", [*BAD_PRICES, pytest.param("5", id="text"), pytest.param(True, id="bool")]
)
def test_max_usd_per_run_is_refused_when_the_node_is_built(tmp_path, cap):
    """A cap that is no amount of USD (nan, inf, negative, text, a bool) fails the build."""
    with pytest.raises(ValueError, match="max_usd_per_run must be a"):
        workflow_over(tmp_path, pd.DataFrame(), [edit_step()], max_usd_per_run=cap)


@pytest.mark.parametrize("price", BAD_PRICES)
def test_a_step_price_is_refused_when_the_step_is_built(price):
    """KreaStep(price_usd=-1), nan or inf: refused at once, naming the step."""
    with pytest.raises(ValueError, match=r"step 'case': price_usd must be a"):
        KreaStep(STEP, model=SEEDEDIT, price_usd=price)


@pytest.mark.parametrize(
    "amount", [np.float64(0.5), np.int64(2), np.float32(0.25)], ids=["float64", "int64", "float32"]
)
def test_numpy_amounts_are_amounts(tmp_path, amount):
    """A cap or a price read from a table or a config as a NumPy number is an amount."""
    step = KreaStep(STEP, model=SEEDEDIT, price_usd=amount)
    _, workflow = workflow_over(tmp_path, pd.DataFrame(), [step], max_usd_per_run=amount)
    assert workflow.pipeline.max_usd_per_run == pytest.approx(float(amount))
    assert workflow.pipeline.price_usd == pytest.approx(float(amount))


# -- 5. where a table keeps its batch -------------------------------------------------------

TWO_BATCHES = {
    "batch": ["b1", "b2", "b1"],
    "sku": ["A1", "C3", "B2"],
    "name": ["red sneaker", "green hat", "blue boot"],
}


def indexed(levels: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(TWO_BATCHES).set_index(list(levels))


@pytest.mark.parametrize(
    ("levels", "key_column"),
    [
        pytest.param(["batch"], "sku", id="index"),
        pytest.param(["batch", "sku"], "sku", id="multiindex-batch-first"),
        pytest.param(["sku", "batch"], "sku", id="multiindex-batch-last"),
        pytest.param(["batch", "sku"], None, id="multiindex-no-key-column"),
    ],
)
def test_a_batch_in_an_index_level_pays_only_that_batchs_rows(
    emulator, krea, instance, tmp_path, levels, key_column
):
    """The batch in an index level (and the key in another): batch b1 sends b1's rows only,
    keyed by the index's sku when it is the key; b2's row is never paid under b1."""
    step = KreaStep(STEP, model=TEST_MODEL, prompt="A {name}")
    products, workflow = workflow_over(tmp_path, indexed(levels), [step], key_column=key_column)
    result = run(products, workflow, "b1", instance=instance, krea=krea)
    assert result.success
    manifest = result.output_for_node(workflow.images.node_def.name)
    sent = sorted(emulator.job(job)["request"]["prompt"] for job in manifest["job_id"])
    assert sent == ["A blue boot", "A red sneaker"]
    if key_column:
        assert sorted(manifest[ROW_KEY]) == ["A1", "B2"]
    assert side_effects(emulator) == {"posts": 2, "uploads": 0, "jobs": 2}


def test_a_table_partitioned_like_the_node_is_its_batch(emulator, krea, instance, tmp_path):
    """A table asset partitioned by the node's batches, with no batch column: its partition
    is the batch's rows."""
    table = pd.DataFrame({"sku": ["A1"], "name": ["red sneaker"]})
    step = KreaStep(STEP, model=TEST_MODEL, prompt="A {name}")
    products, workflow = workflow_over(tmp_path, table, [step], partitioned=True, key_column="sku")
    result = run(products, workflow, "b1", instance=instance, krea=krea)
    assert result.success
    assert list(result.output_for_node(workflow.images.node_def.name)[ROW_KEY]) == ["A1"]


@pytest.mark.parametrize(
    ("table", "fragments"),
    [
        pytest.param(
            pd.DataFrame(TWO_BATCHES).drop(columns=["batch"]),
            ["no 'batch' column", "batch_column=...", "partition the table asset"],
            id="no-batch-column",
        ),
        pytest.param(
            pd.DataFrame(TWO_BATCHES).set_index(pd.Index(["b2", "b1", "b1"], name="batch")),
            ["'batch' is both an index level and a column", "drop one"],
            id="an-index-level-and-a-column",
        ),
        pytest.param(
            pd.DataFrame({**TWO_BATCHES, "batch": ["b1", None, "b1"]}),
            [
                "1 row(s) of the table have no batch in 'batch'",
                "table rows 2",
                "never be generated",
            ],
            id="a-row-without-a-batch",
        ),
        pytest.param(
            pd.DataFrame({**TWO_BATCHES, "batch": ["b2", "b2", " "]}),
            ["table rows 3", "have no batch"],
            id="a-blank-batch",
        ),
        pytest.param(
            pd.DataFrame({**TWO_BATCHES, "batch": ["b2", "b3", "b2"]}),
            ["no row of the table has batch='b1'", "its batches: b2, b3"],
            id="no-row-of-the-batch",
        ),
        pytest.param(
            [{"batch": "b1", "name": "x"}],
            ["the upstream table is a list, not a pandas DataFrame"],
            id="not-a-dataframe",
        ),
        pytest.param(
            pd.DataFrame([["b1", "x", "y"]], columns=["batch", "name", "name"]),
            ["the table has 2 columns named 'name' (positions 2, 3)", "rename or remove"],
            id="two-columns-of-one-name",
        ),
        pytest.param(
            pd.DataFrame([["b1", "x", "y"]], columns=["batch", 0, "0"]),
            ["the table has 2 columns named '0'"],
            id="two-columns-of-one-name-once-read-as-text",
        ),
        pytest.param(
            pd.DataFrame(
                [["b1", "x"]], columns=pd.MultiIndex.from_tuples([("batch", ""), ("name", "")])
            ),
            ["the table's columns have 2 levels"],
            id="multiindex-columns",
        ),
    ],
)
def test_a_table_that_does_not_say_which_rows_are_the_batch_is_refused(
    emulator, krea, instance, tmp_path, table, fragments
):
    """Refused in the prompts step with what to fix; nothing sent."""
    step = KreaStep(STEP, model=TEST_MODEL, prompt="A {name}")
    products, workflow = workflow_over(tmp_path, table, [step])
    message = refused(run(products, workflow, "b1", instance=instance, krea=krea), emulator)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_two_columns_of_one_name_are_refused(emulator, krea, instance, tmp_path):
    """A DataFrame with two ``quality`` columns (the analogue of a repeated CSV header): one
    would be silently dropped, so the table is refused before row 1's photo is sent."""
    qualities = pd.DataFrame([["high", "low"]] * 2, columns=["quality", "quality"])
    table = pd.concat([products_table(tmp_path), qualities], axis=1)
    products, workflow = workflow_over(tmp_path, table, [edit_step()])
    message = refused(run(products, workflow, "b1", instance=instance, krea=krea), emulator)
    assert "the table has 2 columns named 'quality'" in message


@pytest.mark.parametrize(
    "batch", [*BAD_BATCH_NAMES, pytest.param("../../escape", id="parent-folders")]
)
def test_a_batch_name_follows_the_batch_name_rule(emulator, krea, instance, tmp_path, batch):
    """A batch whose name breaks the prompt files' rule (it names folders of the store) is
    refused before anything is written or sent."""
    table = pd.DataFrame({"batch": [batch], "name": ["red sneaker"]})
    step = KreaStep(STEP, model=TEST_MODEL, prompt="A {name}")
    products, workflow = workflow_over(tmp_path, table, [step])
    message = refused(run(products, workflow, batch, instance=instance, krea=krea), emulator)
    assert "is not a valid partition key" in message and "rename the batch" in message
    written = [p.name for p in tmp_path.iterdir()]
    assert "escape" not in written and not (tmp_path / "wf-store" / "escape").exists()


def engine_node(
    tmp_path: Path, key_column: str | None = None, steps: Sequence[KreaStep] = ()
) -> KreaNode:
    """The engine node of a workflow over a table, to read what a step would send (no
    Dagster, nothing sent)."""
    steps = tuple(steps) or (KreaStep(STEP, model=TEST_MODEL, prompt="A {name}"),)
    _, workflow = workflow_over(tmp_path, pd.DataFrame(), steps, key_column=key_column)
    return workflow.node


@pytest.mark.parametrize(
    ("values", "batch", "expected"),
    [
        pytest.param([1.0, 2.0, 1.0], "1", ["A red sneaker", "A blue boot"], id="whole-floats"),
        pytest.param([1, 2, 1], "1", ["A red sneaker", "A blue boot"], id="integers"),
        pytest.param([" b1", "b2", "b1 "], "b1", ["A red sneaker", "A blue boot"], id="spaces"),
    ],
)
def test_batch_values_name_their_batch_as_text(tmp_path, values, batch, expected):
    """A numeric batch column (floats, as pandas reads integers with a gap) selects the
    partition of the integer's text; spaces around a name do not count."""
    table = pd.DataFrame({**TWO_BATCHES, "batch": values})
    prepared = engine_node(tmp_path).prepare(0, batch, table=table)
    assert list(prepared.table["prompt"]) == expected


def test_registration_reads_a_table_as_a_step_does(tmp_path):
    """register-batches and discovery read batches as the step does: an index level, numeric
    names, and a row without a batch reported (never a batch called 'nan')."""
    table = pd.DataFrame({**TWO_BATCHES, "batch": [1.0, math.nan, 2.0]}).set_index("batch")
    _, workflow = workflow_over(
        tmp_path, table, [KreaStep(STEP, model=TEST_MODEL, prompt="A {name}")]
    )
    hashes, problems = table_batches(workflow, table)
    assert sorted(hashes) == ["1", "2"]
    assert problems == [
        "batch: 1 row(s) have no batch; fill it, or leave those rows out of the table asset"
    ]


# -- 6. keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "key_column", "fragments"),
    [
        pytest.param(
            {"sku": ["A1", "A1"]},
            "sku",
            ["row 2, column 'sku': the key 'A1' repeats row 1"],
            id="repeated-key",
        ),
        pytest.param(
            {"sku": ["A1", None]},
            "sku",
            ["row 2, column 'sku': the row's key is empty"],
            id="empty-key",
        ),
        pytest.param(
            {"row_key": ["k", "k"]},
            None,
            ["row 2, column 'row_key': the key 'k' repeats row 1"],
            id="the-tables-own-row-key-repeated",
        ),
        pytest.param(
            {"row_key": ["k1", "k2"]},
            "sku",
            ["column 'row_key'", "a row has one key"],
            id="a-row-key-column-and-a-key-column",
        ),
        pytest.param(
            {},
            "product_id",
            ["the key column 'product_id' is not in the table"],
            id="no-such-key-column",
        ),
    ],
)
def test_bad_keys_are_refused_before_any_upload(
    emulator, krea, instance, tmp_path, columns, key_column, fragments
):
    """A key links a row's outputs from step to step: a repeated or empty one (or two keys)
    would give a row another row's output; refused, nothing uploaded."""
    products, workflow = workflow_over(
        tmp_path, products_table(tmp_path, **columns), [edit_step()], key_column=key_column
    )
    message = refused(run(products, workflow, "b1", instance=instance, krea=krea), emulator)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_a_key_in_an_index_level_is_the_key(tmp_path):
    """key_column may name an index level (a table indexed by sku)."""
    table = pd.DataFrame(TWO_BATCHES).set_index("sku")
    prepared = engine_node(tmp_path, "sku").prepare(0, "b1", table=table)
    assert list(prepared.table[ROW_KEY]) == ["A1", "B2"]


# -- 7. templates ----------------------------------------------------------------------------


def test_a_template_naming_a_missing_column_is_refused_once(emulator, krea, instance, tmp_path):
    """``{title}`` when the table has no such column: one problem naming it and the table's
    own columns (not the node's internals), before any upload."""
    step = edit_step(prompt="Studio photo of a {title}")
    products, workflow = workflow_over(tmp_path, products_table(tmp_path), [step])
    message = refused(run(products, workflow, "b1", instance=instance, krea=krea), emulator)
    assert "1 problem(s)" in message
    assert "the step's templates name {title} but the table has no column 'title'" in message
    assert "(its columns: sku, name, photo)" in message


@pytest.mark.parametrize(
    ("columns", "template", "expected"),
    [
        pytest.param({"a.b": ["x"]}, "Photo of {a.b}", "Photo of x", id="a-dotted-column"),
        pytest.param({0: ["x"]}, "Photo of {0}", "Photo of x", id="a-column-named-0"),
        pytest.param({"name": ["x"]}, "{name} for {batch}", "x for b1", id="the-batch-column"),
        pytest.param({"name": ["x"]}, "{name} ({row_key})", "x (K1)", id="the-row-key"),
    ],
)
def test_a_template_names_columns_by_their_whole_name(tmp_path, columns, template, expected):
    """A placeholder is a column's whole name, never an attribute or a position; the batch
    column gives the batch's name."""
    table = pd.DataFrame({"batch": ["b1"], "sku": ["K1"], **columns})
    step = KreaStep(STEP, model=TEST_MODEL, prompt=template)
    prepared = engine_node(tmp_path, "sku", [step]).prepare(0, "b1", table=table)
    assert list(prepared.table["prompt"]) == [expected]


def test_a_dotted_column_renders_through_dagster(emulator, krea, instance, tmp_path):
    """A column named ``a.b`` in a template: sent, not a crashed step."""
    table = pd.DataFrame({"batch": ["b1"], "size.cm": ["42"]})
    step = KreaStep(STEP, model=TEST_MODEL, prompt="A box of {size.cm} cm")
    products, workflow = workflow_over(tmp_path, table, [step])
    result = run(products, workflow, "b1", instance=instance, krea=krea)
    assert result.success
    job = result.output_for_node(workflow.images.node_def.name)["job_id"].iloc[0]
    assert emulator.job(job)["request"]["prompt"] == "A box of 42 cm"


@pytest.mark.parametrize(
    ("prompt", "fragment"),
    [("A {name", "malformed"), ("A {name:>9}", "format specs"), ("A {name!r}", "conversions")],
    ids=["unclosed", "format-spec", "conversion"],
)
def test_a_malformed_template_is_refused_when_the_step_is_built(prompt, fragment):
    """A template str.format would read otherwise is refused at once, naming the step."""
    with pytest.raises(ValueError, match=rf"step 'case': prompt: .*{fragment}"):
        KreaStep(STEP, model=TEST_MODEL, prompt=prompt)


def test_path_objects_in_a_table_are_paths(emulator, krea, instance, tmp_path):
    """A table of ``pathlib.Path`` photos is read like one of path texts: checked, uploaded
    once, sent."""
    table = products_table(tmp_path)
    table["photo"] = [Path(p) for p in table["photo"]]
    products, workflow = workflow_over(tmp_path, table, [edit_step()])
    result = run(products, workflow, "b1", instance=instance, krea=krea)
    assert result.success
    assert side_effects(emulator)["uploads"] == 2


def test_a_carried_column_the_manifest_cannot_store_is_refused(emulator, krea, instance, tmp_path):
    """A data column mixing numbers and text (Parquet takes one type per column) would fail
    the manifest after Krea was paid: refused in the prompts step, nothing uploaded."""
    table = products_table(tmp_path, size=[42, "XL"])
    products, workflow = workflow_over(tmp_path, table, [edit_step()])
    message = refused(run(products, workflow, "b1", instance=instance, krea=krea), emulator)
    assert "column 'size'" in message and "cannot be stored in the manifest" in message
    assert "astype(str)" in message


# -- 8. {previous} -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "templates",
    [
        pytest.param({"inputs": {"image_urls": ["{previous}"]}}, id="in-a-list"),
        pytest.param({"inputs": {"image_url": "{previous}"}}, id="a-whole-input"),
        pytest.param(
            {"inputs": {"style_images": [{"url": "{previous}", "strength": 0.5}]}},
            id="nested",
        ),
    ],
)
def test_previous_in_the_first_step_is_refused_when_the_node_is_built(tmp_path, templates):
    """The first step has no previous step: refused when the node is built, not at run time."""
    step = KreaStep(STEP, model=TEST_MODEL, prompt="A {name}", **templates)
    with pytest.raises(ValueError, match=r"is the first step, so it has no \{previous\}"):
        workflow_over(tmp_path, pd.DataFrame(), [step])


@pytest.mark.parametrize(
    ("templates", "fragment"),
    [
        pytest.param(
            {"prompt": "Like {previous}"}, "the prompt names {previous}", id="in-the-prompt"
        ),
        pytest.param(
            {"prompt": "x", "inputs": {"image_url": "see {previous}"}},
            "must be a whole value",
            id="inside-a-text",
        ),
    ],
)
def test_previous_is_a_file_never_text(templates, fragment):
    """``{previous}`` (a file in the store) never becomes prompt or field text: refused when
    the step is built."""
    with pytest.raises(ValueError, match=fragment.replace("{", r"\{").replace("}", r"\}")):
        KreaStep(STEP, model=GPT, **templates)


def test_previous_in_a_field_that_takes_no_file_is_refused(emulator, krea, instance, tmp_path):
    """A node app's text input given ``{previous}`` (the store's path would be sent as the
    product's name): refused in the step's prompts, naming the input and the app's file
    inputs; the sketches are not uploaded."""
    steps = [
        KreaStep("sketch", model=TEST_MODEL, prompt="A sketch of a {name}"),
        KreaStep(
            STEP,
            model=APP,
            inputs={"product_image": "{previous}", "product": "{previous}"},
            price_usd=0.25,
        ),
    ]
    products, workflow = workflow_over(tmp_path, products_table(tmp_path), steps)
    result = run(products, workflow, "b1", instance=instance, krea=krea)
    message = refused(result, emulator, before={"posts": 2, "uploads": 0, "jobs": 2})
    assert "inputs['product'] is {previous}" in message
    assert "its file inputs: product_image" in message


# -- 9. a rendered field and a column of the same name ----------------------------------------


@pytest.mark.parametrize(
    ("steps", "carry"),
    [
        pytest.param(
            [edit_step(inputs={"image_urls": ["{photo}"], "quality": "high"})], [], id="first"
        ),
        pytest.param(
            [edit_step(inputs={"image_urls": ["{photo}"], "quality": "high"})],
            ["quality"],
            id="first-with-the-column-carried",
        ),
        pytest.param(
            chain_over_sketches(inputs={"image_urls": ["{previous}"], "quality": "high"}),
            ["quality"],
            id="second",
        ),
    ],
)
def test_a_step_rendering_a_field_the_table_has_is_refused(
    emulator, krea, instance, tmp_path, steps, carry
):
    """The step renders ``quality`` and the table has a ``quality`` column it does not read:
    which one is meant? Refused, naming the ways out; nothing of the step uploaded. (The second
    step's constant used to be dropped: the column was carried as data in its place.)"""
    table = products_table(tmp_path, quality=["low", "low"])
    products, workflow = workflow_over(tmp_path, table, steps, carry_columns=carry)
    before = NOTHING if len(steps) == 1 else {"posts": 2, "uploads": 0, "jobs": 2}
    result = run(products, workflow, "b1", instance=instance, krea=krea)
    message = refused(result, emulator, before=before)
    assert "the table has a column 'quality' and the step renders 'quality'" in message


@pytest.mark.parametrize("carry", [(), ("quality",)], ids=["", "also-in-carry_columns"])
def test_a_field_rendered_from_its_own_column_is_sent(emulator, krea, instance, tmp_path, carry):
    """``quality: "{quality}"`` reads the column and sends the field (it used to be carried
    as data and silently left out of the request)."""
    step = edit_step(inputs={"image_urls": ["{photo}"], "quality": "{quality}"})
    table = products_table(tmp_path, quality=["low", "high"])
    products, workflow = workflow_over(tmp_path, table, [step], carry_columns=list(carry))
    result = run(products, workflow, "b1", instance=instance, krea=krea)
    assert result.success
    manifest = result.output_for_node(workflow.images.node_def.name)
    assert [emulator.job(job)["request"]["quality"] for job in manifest["job_id"]] == [
        "low",
        "high",
    ]


@pytest.mark.parametrize(
    ("column", "values", "template"),
    [
        pytest.param("image_url", ["https://example.com/a.png"] * 2, "{image_url}", id="image_url"),
        pytest.param("width", ["2048", "1536"], "{width}", id="a-column-named-like-the-manifests"),
    ],
)
def test_a_column_a_later_step_names_is_data_for_the_first(
    emulator, krea, instance, tmp_path, column, values, template
):
    """A column the second step's template reads is not sent by the first step, whose model
    has a field of that name too (and one named like a manifest column is not carried into
    the first step's manifest, where it would collide)."""
    inputs = (
        {"image_urls": ["{previous}", template]} if column == "image_url" else {column: template}
    )
    steps = [
        KreaStep("sketch", model=TEST_MODEL, prompt="A sketch of a {name}"),
        KreaStep(STEP, model=GPT, prompt="x", inputs={"image_urls": ["{previous}"], **inputs}),
    ]
    table = products_table(tmp_path, **{column: values})
    products, workflow = workflow_over(tmp_path, table, steps)
    sketch = workflow.step("sketch")
    result = run(products, workflow, "b1", instance=instance, krea=krea, selection=sketch.assets)
    assert result.success
    manifest = result.output_for_node(sketch.images.node_def.name)
    requests = [emulator.job(job)["request"] for job in manifest["job_id"]]
    assert all(column not in request for request in requests), requests
    if column == "image_url":
        assert list(manifest[column]) == values  # kept as data
    else:
        assert list(manifest[column]) == [1024, 1024]  # the output's own width


def test_a_model_field_kept_as_data_is_refused_like_a_reserved_column(
    build, emulator, krea, instance, prompts_dir, tmp_path
):
    """carry_columns=['width'] would put the table's width beside the manifest's own width (the
    outputs step crashed after Krea was paid): refused in the prompts step, in a prompt file
    and in a workflow alike."""
    write_files(prompts_dir, {"b.csv": csv_text(["prompt", "width"], ["a cat", "640"])})
    assets = build(carry_columns=["width"])
    with pytest.raises(PromptValidationError, match=r"column 'width'.*\(reserved\)"):
        assets.node.prepare(0, "b")
    table = pd.DataFrame({"batch": ["b"], "prompt": ["a cat"], "width": ["640"]})
    step = KreaStep(STEP, model=TEST_MODEL)
    products, workflow = workflow_over(tmp_path, table, [step], carry_columns=["width"])
    message = refused(run(products, workflow, "b", instance=instance, krea=krea), emulator)
    assert "column 'width'" in message and "(reserved)" in message


def test_a_parquet_list_cell_renders_as_a_list(tmp_path):
    """A Parquet list cell (a NumPy array) in a whole-value template is the list it holds."""
    table = pd.DataFrame(
        {"batch": ["b1"], "name": ["x"], "refs": [np.array(["https://example.com/a.png"])]}
    )
    step = KreaStep(STEP, model=GPT, prompt="A {name}", inputs={"image_urls": "{refs}"})
    prepared = engine_node(tmp_path, steps=[step]).prepare(0, "b1", table=table)
    assert '"image_urls":["https://example.com/a.png"]' in prepared.table["request_json"].iloc[0]
