"""Prompt tables: every bad row reported at once (row, column, rule), stable prompt keys, typed cells."""

import pandas as pd
import pytest

from krea_dagster.engine.prompts import PromptValidationError, prepare_batch, prompt_key
from krea_dagster.engine.source import PromptSource, PromptSourceError, read_table

FLUX = "bfl/flux-1-dev"


def frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as CSV reading gives them: every cell text, empty cells missing."""
    table = pd.DataFrame(rows)
    return table.astype(object).where(table.notna(), None).map(lambda v: v if v is None else str(v))


def problems(rows: list[dict], model: str = FLUX, **kwargs) -> list[str]:
    with pytest.raises(PromptValidationError) as raised:
        prepare_batch(frame(rows), batch="b", model=model, **kwargs)
    return [str(problem) for problem in raised.value.problems]


@pytest.mark.parametrize(
    ("rows", "model", "expected"),
    [
        ([{"prompt": None}], FLUX, "row 1, column 'prompt': the prompt is empty (required)"),
        (
            [{"prompt": "   "}],
            FLUX,
            "row 1, column 'prompt': the prompt is only whitespace (minLength)",
        ),
        ([{"prompt": "x" * 1801}], FLUX, "row 1, column 'prompt': prompt:"),
        ([{"prompt": "a", "width": "4000"}], FLUX, "above the maximum"),
        (
            [{"prompt": "a", "width": "wide"}],
            FLUX,
            "row 1, column 'width': 'wide' is not a number (type)",
        ),
        ([{"prompt": "a", "width": "NaN"}], FLUX, "is not a finite number"),
        ([{"prompt": "a", "steps": "2.5"}], FLUX, "is not a whole number"),
        (
            [{"prompt": "a", "quality": "ultra"}],
            "openai/gpt-image-2",
            'quality: "ultra" is not one of',
        ),
        (
            [{"prompt": "a", "style": "x"}],
            FLUX,
            "'style' is a request field of other Krea models but not of bfl/flux-1-dev",
        ),
        ([{"prompt": "a", "widht": "512"}], FLUX, "did you mean 'width'?"),
        ([{"prompt": "a", "aspect_ratio": "16:9"}], "z-image/z-image", "resolution: missing"),
        ([{"prompt": "a"}, {"prompt": "a"}], FLUX, "row 2: duplicate of row 1"),
    ],
    ids=[
        "empty-prompt",
        "whitespace-prompt",
        "prompt-too-long",
        "out-of-range",
        "not-a-number",
        "nan-literal",
        "not-an-integer",
        "bad-enum",
        "field-of-another-model",
        "misspelt-column",
        "missing-required-field",
        "duplicate-row",
    ],
)
def test_each_rule_is_reported_with_row_column_and_rule(rows, model, expected):
    """A bad cell is reported with where it is and which rule it breaks."""
    assert any(expected in problem for problem in problems(rows, model)), problems(rows, model)


def test_every_problem_of_a_batch_is_listed_at_once():
    """Five bad rows give five problems in one error, numbered from the first data row."""
    found = problems(
        [
            {"prompt": "ok", "width": "512"},
            {"prompt": None, "width": "512"},
            {"prompt": "b", "width": "9999"},
            {"prompt": "c", "width": "x"},
            {"prompt": "ok", "width": "512"},
            {"prompt": "d", "width": "100"},
        ]
    )
    assert [p.split(",")[0].split(":")[0] for p in found] == [
        "row 2",
        "row 3",
        "row 4",
        "row 5",
        "row 6",
    ]


def test_missing_prompt_column_names_the_columns_found():
    """A table without 'prompt' says which columns it has."""
    message = problems([{"text": "a fox"}])[0]
    assert "no 'prompt' column" in message and "'text'" in message


def test_defaults_are_validated_once_and_rows_override_them():
    """A bad default is one problem, not one per row; a row's own value wins over the default."""
    (only,) = problems([{"prompt": "a"}, {"prompt": "b"}], defaults={"width": 99999})
    assert only.startswith("column 'width': in the defaults:") and "maximum" in only
    prepared = prepare_batch(
        frame([{"prompt": "a", "width": "768"}]),
        batch="b",
        model=FLUX,
        defaults={"width": 512, "height": 512},
    )
    assert '"width":768' in prepared.table.loc[0, "request_json"]
    assert '"height":512' in prepared.table.loc[0, "request_json"]


def test_cells_are_typed_by_the_model_schema():
    """Numeric text becomes numbers; other columns (and listed carry columns) are carried as they are."""
    prepared = prepare_batch(
        frame(
            [
                {
                    "prompt": "a",
                    "width": "512.0",
                    "seed": "42",
                    "image_urls": '["https://x/a.png"]',
                    "team": "red",
                }
            ]
        ),
        batch="b",
        model=FLUX,
        carry_columns=["image_urls"],
    )
    request = prepared.table.loc[0, "request_json"]
    assert '"width":512' in request and '"seed":42' in request
    assert prepared.table.loc[0, "team"] == "red"
    assert prepared.carried_columns == ["image_urls", "team"]


def test_prompt_keys_are_stable_under_reordering_and_additions():
    """Moving or adding rows leaves other rows' keys alone; changing a parameter changes the key."""
    rows = [{"prompt": "a", "width": "512"}, {"prompt": "b", "width": "512"}]
    first = prepare_batch(frame(rows), batch="b", model=FLUX).table.set_index("prompt")[
        "prompt_key"
    ]
    again = prepare_batch(
        frame([{"prompt": "c"}, *reversed(rows)]), batch="b", model=FLUX
    ).table.set_index("prompt")["prompt_key"]
    assert first["a"] == again["a"] and first["b"] == again["b"]
    changed = prepare_batch(frame([{"prompt": "a", "width": "768"}]), batch="b", model=FLUX).table[
        "prompt_key"
    ][0]
    assert changed != first["a"]
    assert prompt_key(FLUX, {"prompt": "a"}, "v1") != prompt_key(FLUX, {"prompt": "a"}, "")
    assert prompt_key("bfl/flux-1-kontext-dev", {"prompt": "a"}, "") != prompt_key(
        FLUX, {"prompt": "a"}, ""
    )


def test_variant_makes_identical_rows_distinct():
    """Two identical rows with different variants are two prompts, not a duplicate."""
    prepared = prepare_batch(
        frame([{"prompt": "a", "variant": "1"}, {"prompt": "a", "variant": "2"}]),
        batch="b",
        model=FLUX,
    )
    assert prepared.table["prompt_key"].nunique() == 2


def test_cost_is_estimated_from_the_catalog():
    """The estimate sums the model's price per prompt (resolution-priced models included)."""
    flux = prepare_batch(frame([{"prompt": "a"}, {"prompt": "b"}]), batch="b", model=FLUX)
    assert flux.estimated_usd == pytest.approx(0.014)
    nano = prepare_batch(
        frame([{"prompt": "a cat", "resolution": "4K"}, {"prompt": "a dog"}]),
        batch="b",
        model="google/nano-banana-2",
    )
    assert nano.estimated_usd == pytest.approx(0.16 + 0.08)


def test_unreadable_files_say_what_to_do(tmp_path):
    """Not UTF-8, empty, or malformed files raise an error naming the file and the fix."""
    (tmp_path / "latin.csv").write_bytes("prompt\ncaf\xe9\n".encode("latin-1"))
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(PromptSourceError, match=r"not valid UTF-8.*save the file as UTF-8"):
        read_table(tmp_path / "latin.csv")
    with pytest.raises(PromptSourceError, match="empty"):
        read_table(tmp_path / "empty.csv")
    with pytest.raises(PromptSourceError, match=r"broken\.parquet: cannot be read"):
        read_table(tmp_path / "broken.parquet")


def test_source_reads_csv_parquet_and_batch_columns(tmp_path):
    """One batch per file, or one per value of a batch column; content hashes follow the rows."""
    pd.DataFrame({"prompt": ["a", "b"]}).to_csv(tmp_path / "one.csv", index=False)
    pd.DataFrame({"prompt": ["c", "d", "e"], "batch": ["x", "y", "x"]}).to_parquet(
        tmp_path / "many.parquet"
    )
    source = PromptSource(tmp_path)
    batches, bad = source.scan()
    assert bad == []
    assert {name: info.rows for name, info in batches.items()} == {"one": 2, "x": 2, "y": 1}
    rows, files = source.read_batch("x")
    assert rows["prompt"].tolist() == ["c", "e"] and files == ("many.parquet",)
    before = batches["one"].content_hash
    pd.DataFrame({"prompt": ["a", "b", "z"]}).to_csv(tmp_path / "one.csv", index=False)
    assert source.scan()[0]["one"].content_hash != before
    assert source.scan()[0]["x"].content_hash == batches["x"].content_hash
    with pytest.raises(PromptSourceError, match="batch 'nope' is not in"):
        source.read_batch("nope")
