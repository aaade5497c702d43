"""Bad prompt tables materialized against the emulator: refused with file, line and rule, no POST.

Each class of issue 11 has cases here that go through the real asset path (``dg.materialize``
of prompts, jobs and images against the emulator over HTTP): the run fails with a message that
names where the problem is, which rule it breaks and what to do, and the emulator's counters
show that no job was created. Odd but valid tables (Parquet lists, exact integers, a price
override) are checked to be sent exactly as validated.
"""

import csv
import io
import os
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
from dagster._serdes import serialize_value

from krea_dagster import KreaResource, KreaStep, build_krea_sensors
from krea_dagster.engine.manifest import MANIFEST_COLUMNS
from krea_dagster.engine.prompts import (
    PROMPTS_TABLE_COLUMNS,
    PromptValidationError,
    prepare_batch,
)
from krea_dagster.engine.source import PromptSource, PromptSourceError, read_table
from krea_dagster.engine.table_rules import (
    RESERVED_COLUMNS,
    SEED_MAX,
    check_image_reference,
    parse_number_text,
)

from .conftest import manifest_of, materialize

# "No message longer than a few KB, however large the input."
MAX_MESSAGE_CHARS = 6_000
NANO = "google/nano-banana"  # width/height without a minimum in the schema, image_urls[]
SEEDEDIT = "bytedance/seededit"  # no price in the catalog
HUGE = 100_000


def csv_text(header: list[str], *rows: list[Any]) -> str:
    """A CSV text written by the csv module (cells quoted as needed), one line per row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_files(directory: Path, files: dict[str, Any]) -> None:
    for name, content in files.items():
        path = directory / name
        if isinstance(content, pd.DataFrame):
            content.to_parquet(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", newline="")


def posts(emulator) -> int:
    """POST requests the emulator answered (generation requests are the only POSTs)."""
    routes = emulator.stats()["requests_by_route"]
    return sum(count for route, count in routes.items() if route.startswith("POST"))


def failure_message(result: dg.ExecuteInProcessResult) -> tuple[str, str]:
    """(step key, message) of the run's first failed step."""
    failures = result.get_step_failure_events()
    assert failures, "the run failed outside any step"
    data = failures[0].step_failure_data
    message = data.user_failure_data.description if data.user_failure_data else data.error.message
    return failures[0].step_key, message


def run_refused(build, emulator, krea, instance, prompts_dir, files, batch, **build_kwargs):
    """Materialize a bad batch; assert the run fails with a short message and Krea saw no POST."""
    write_files(prompts_dir, files)
    assets = build(**build_kwargs)
    result = materialize(assets, batch, instance=instance, krea=krea)
    assert not result.success
    step, message = failure_message(result)
    assert posts(emulator) == 0
    assert emulator.stats()["jobs_created"] == 0
    assert len(message) < MAX_MESSAGE_CHARS, len(message)
    assert "Traceback" not in message and "Error:" not in message.split("\n")[0]
    return step, message, result


CASES = [
    # 1. a column named like one the package writes would replace the validated value
    pytest.param(
        {"b.csv": csv_text(["prompt", "prompt_key"], ["a cat", "deadbeef"])},
        "b",
        {},
        ["column 'prompt_key'", "krea-dagster writes itself", "rename the column"],
        id="1-reserved-prompt_key",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "estimated_usd"], ["a cat", "0"], ["a dog", "0"])},
        "b",
        {"max_usd_per_run": 0.5},
        ["column 'estimated_usd'", "(reserved)"],
        id="1-reserved-estimated_usd-under-a-cap",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "request_json"], ["a cat", '{"prompt": "a dog"}'])},
        "b",
        {},
        ["column 'request_json'", "(reserved)"],
        id="1-reserved-request_json",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "row"], ["a cat", "7"])},
        "b",
        {},
        ["column 'row'", "(reserved)"],
        id="1-reserved-row",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "status"], ["a cat", "ok"])},
        "b",
        {"carry_columns": ["status"]},
        ["column 'status'", "(reserved)"],
        id="1-reserved-even-in-carry_columns",
    ),
    pytest.param(
        {"b.csv": "prompt,width,width\na cat,512,768\n"},
        "b",
        {},
        ["b.csv", "'width' appears twice", "rename or remove one"],
        id="1-duplicate-header-name",
    ),
    # 2. a row with more or fewer fields than the header is refused, naming its line
    pytest.param(
        {"b.csv": 'prompt,width\n"a cat, with a hat",512\na dog, with a bone,512\n'},
        "b",
        {},
        ["b.csv", "line 3 has 3 field(s)", "header (line 1) has 2", "quote cells"],
        id="2-one-field-too-many",
    ),
    pytest.param(
        {"b.csv": "prompt,width\nx,a cat,512\ny,a dog,512\n"},
        "b",
        {},
        ["line 2 has 3 field(s)", "line 3 has 3 field(s)"],
        id="2-every-row-one-too-many",
    ),
    pytest.param(
        {"b.csv": "prompt,width,height\na cat,512,512\na dog,512\n"},
        "b",
        {},
        ["line 3 has 2 field(s)", "header (line 1) has 3"],
        id="2-one-field-too-few",
    ),
    pytest.param(
        {"b.csv": 'prompt,width\n"two\nlines",512\na cat,512,1\n'},
        "b",
        {},
        ["line 4 has 3 field(s)"],
        id="2-line-after-a-multiline-cell",
    ),
    # 3. errors name the file and its own line, also when a batch column splits the file
    pytest.param(
        {
            "many.csv": csv_text(
                ["prompt", "batch", "width"],
                ["a", "b1", "512"],
                ["b", "b2", "512"],
                ["c", "b1", "512"],
                ["d", "b2", "512"],
                ["e", "b1", "99999"],
            )
        },
        "b1",
        {},
        ["many.csv line 6, column 'width'", "maximum", "the header is line 1"],
        id="3-batch-column-keeps-file-lines",
    ),
    pytest.param(
        {"b.csv": "prompt,width\n\na cat,512\n\na dog,99999\n"},
        "b",
        {},
        ["b.csv line 5, column 'width'"],
        id="3-blank-lines-count",
    ),
    pytest.param(
        {"many.csv": csv_text(["prompt", "batch"], ["x", "b1"], ["y", "b2"], ["x", "b1"])},
        "b1",
        {},
        ["many.csv line 4: duplicate of many.csv line 2"],
        id="3-duplicate-names-the-first-line",
    ),
    pytest.param(
        {
            "b1.csv": csv_text(["prompt"], ["fine"]),
            "many.csv": csv_text(["prompt", "batch"], ["ok", "b2"], ["\x01\x02", "b1"]),
        },
        "b1",
        {},
        ["many.csv line 3, column 'prompt'", "no visible character"],
        id="3-two-files-one-batch",
    ),
    # 4. Parquet lists are ordinary values (a bad item is refused by its rule, no crash)
    pytest.param(
        {
            "b.parquet": pd.DataFrame(
                {
                    "prompt": ["a cat", "a dog"],
                    "image_urls": [["https://example.com/a.png"], ["/home/me/dog.png"]],
                }
            )
        },
        "b",
        {"model": NANO},
        ["b.parquet row 2, column 'image_urls[0]'", "/home/me/dog.png: no such file"],
        id="4-parquet-list-with-a-missing-local-file",
    ),
    pytest.param(
        {"b.parquet": pd.DataFrame({"prompt": ["a cat"], "width": [[512, 512]]})},
        "b",
        {},
        ["b.parquet row 1", "column 'width'", "is not of type number"],
        id="4-parquet-list-in-a-number-field",
    ),
    # 5. echoed values are shortened, whatever their size
    pytest.param(
        {"b.csv": csv_text(["prompt", "width"], ["a cat", "9x" * (HUGE // 2)])},
        "b",
        {},
        ["b.csv line 2, column 'width'", "(100000 characters)", "is not a number"],
        id="5-huge-cell-in-a-number-column",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt"], ["p" * HUGE])},
        "b",
        {},
        ["b.csv line 2", "maxLength"],
        id="5-huge-prompt",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "image_urls"], ["a cat", "u" * HUGE])},
        "b",
        {"model": NANO},
        ["b.csv line 2", "characters)", "File name too long"],
        id="5-huge-image-reference",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "width"], *[[f"p{i}", "wide"] for i in range(5_000)])},
        "b",
        {},
        ["5000 problem(s)", "b.csv line 2, column 'width'", "more (the step's 'problems'"],
        id="5-five-thousand-bad-rows",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "style_images"], ["a cat", "[" * HUGE])},
        "b",
        {},
        ["b.csv line 2, column 'style_images'", "nests deeper than 64 levels"],
        id="5-deeply-nested-json-cell",
    ),
    # 6. integers are exact and within what Krea accepts
    pytest.param(
        {"b.csv": csv_text(["prompt", "seed"], ["a cat", "12345678901234567"])},
        "b",
        {},
        ["b.csv line 2, column 'seed'", "12345678901234567 is above 4294967295"],
        id="6-seed-17-digits",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "seed"], ["a cat", "9" * 300])},
        "b",
        {},
        ["column 'seed'", "a number of 300 characters"],
        id="6-seed-300-digits",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "seed"], ["a cat", "-1"])},
        "b",
        {},
        ["column 'seed'", "-1 is below 0", "Krea's seeds"],
        id="6-seed-negative",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "seed"], ["a cat", "1.5"])},
        "b",
        {},
        ["column 'seed'", "1.5 is not a whole number"],
        id="6-seed-fraction",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "steps"], ["a cat", "1e400"])},
        "b",
        {},
        ["column 'steps'", "outside every field's range"],
        id="6-huge-exponent",
    ),
    pytest.param(
        {"b.parquet": pd.DataFrame({"prompt": ["a cat"], "seed": [1e17]})},
        "b",
        {},
        ["b.parquet row 1, column 'seed'", "float too large to hold a whole number exactly"],
        id="6-parquet-float-seed",
    ),
    pytest.param(
        {"b.parquet": pd.DataFrame({"prompt": ["a cat"], "seed": [2**40]})},
        "b",
        {},
        ["b.parquet row 1, column 'seed'", f"{2**40} is above 4294967295"],
        id="6-parquet-int-seed-out-of-range",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt"], ["a cat"])},
        "b",
        {"defaults": {"seed": -3}},
        ["column 'seed'", "in the defaults: -3 is below 0"],
        id="6-seed-in-the-defaults",
    ),
    # 7. no price means no budget
    pytest.param(
        {"b.csv": csv_text(["prompt", "image_url"], ["a cat", "https://example.com/a.png"])},
        "b",
        {"model": SEEDEDIT, "max_usd_per_run": 1.0},
        ["b.csv line 2", "no price is known for bytedance/seededit", "give price_usd="],
        id="7-unpriced-model-under-a-cap",
    ),
    # 8. values Krea refuses or cannot use
    pytest.param(
        {"b.csv": csv_text(["prompt"], ["\x01\x02\x7f"])},
        "b",
        {},
        ["b.csv line 2, column 'prompt'", "no visible character"],
        id="8-control-character-prompt",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt"], ["\u200b\u200b"])},
        "b",
        {},
        ["no visible character"],
        id="8-zero-width-space-prompt",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "width", "height"], ["a cat", "0", "512"])},
        "b",
        {"model": NANO},
        ["b.csv line 2, column 'width'", "0 is below 1", "whole number from 1 to 8192"],
        id="8-zero-width-without-a-schema-bound",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "width", "height"], ["a cat", "512", "-5"])},
        "b",
        {"model": NANO},
        ["column 'height'", "-5 is below 1"],
        id="8-negative-height-without-a-schema-bound",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "width", "height"], ["a cat", "512.5", "512"])},
        "b",
        {"model": NANO},
        ["column 'width'", "512.5 is not a whole number"],
        id="8-fractional-width",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "image_urls"], ["a cat", "s3://bucket/cat.png"])},
        "b",
        {"model": NANO},
        ["column 'image_urls[0]'", "s3://bucket/cat.png: cannot read it"],
        id="8-unreadable-s3-uri",
        marks=pytest.mark.unreachable_object_store,
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "image_urls"], ["a cat", "images/cat.png"])},
        "b",
        {"model": NANO},
        ["column 'image_urls[0]'", "images/cat.png: no such file"],
        id="8-missing-relative-path",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "image_url"], ["a cat", "C:\\images\\cat.png"])},
        "b",
        {},
        ["column 'image_url'", "cat.png: no such file"],
        id="8-windows-path-passes-format-uri",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "image_url"], ["a cat", "file:///tmp/cat.png"])},
        "b",
        {},
        ["column 'image_url'", "/tmp/cat.png: no such file"],
        id="8-missing-file-uri",
    ),
    pytest.param(
        {
            "b.csv": csv_text(
                ["prompt", "style_images"], ["a cat", '[{"url": "/tmp/s.png", "strength": 0.5}]']
            )
        },
        "b",
        {},
        ["column 'style_images[0].url'", "/tmp/s.png: no such file"],
        id="8-nested-style-image-path",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "image_urls"], ["a cat", "not-a-url"])},
        "b",
        {"model": NANO},
        ["column 'image_urls[0]'", "no such file", "an image reference is an https:// URL"],
        id="8-not-a-url",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt"], ["a cat"])},
        "b",
        {"defaults": {"image_url": "/srv/base.png"}},
        ["in the defaults", "/srv/base.png: no such file"],
        id="8-missing-file-in-the-defaults",
    ),
]


# Issue 20, one class at a time. Each case fails on the code before it: a crash, a silent
# drop, or a paid request.
BIG = "9" * 400  # an integer far too large for a float
PNG_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
ISSUE_20_CASES = [
    # 2. one number rule for ints, floats and big ints, wherever they sit
    pytest.param(
        {
            "b.csv": csv_text(
                ["prompt", "style_images"],
                ["a cat", f'[{{"url": "https://example.com/s.png", "strength": {BIG}}}]'],
            )
        },
        "b",
        {},
        ["b.csv line 2, column 'style_images'", "integer of 400 digits"],
        id="20.2-big-int-in-a-style-image",
    ),
    pytest.param(
        {
            "b.csv": csv_text(
                ["prompt", "styles"], ["a cat", f'[{{"id": "s1", "strength": {BIG}}}]']
            )
        },
        "b",
        {},
        ["column 'styles'", "integer of 400 digits"],
        id="20.2-big-int-in-styles",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "styles"], ["a cat", "[" + "7" * 5_000 + "]"])},
        "b",
        {},
        ["column 'styles'", "integer of 5000 digits"],
        id="20.2-int-past-python-s-4300-digit-limit",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "styles"], ["a cat", '[{"id": "s1", "strength": 1e999}]'])},
        "b",
        {},
        ["column 'styles[0].strength'", "inf is not a finite number"],
        id="20.2-infinite-float-in-json",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "styles"], ["a cat", '[{"id": "s1", "strength": NaN}]'])},
        "b",
        {},
        ["column 'styles[0].strength'", "nan is not a finite number"],
        id="20.2-nan-in-json",
    ),
    pytest.param(
        {
            "b.parquet": pd.DataFrame(
                {"prompt": ["a cat"], "styles": [[{"id": "s1", "strength": float("inf")}]]}
            )
        },
        "b",
        {},
        ["b.parquet row 1, column 'styles[0].strength'", "inf is not a finite number"],
        id="20.2-infinite-float-in-a-parquet-list",
    ),
    # 7. what a careful validator catches
    pytest.param(
        {"b.csv": "prompt,seed\na cat,1\nprompt,seed\na dog,2\n"},
        "b",
        {},
        ["b.csv: line(s) 3 repeat the header (line 1)", "pasted together"],
        id="20.7-two-csv-files-glued",
    ),
    pytest.param(
        {"b.csv": "prompt,seed\na cat,1\nPrompt , width\na dog,512\n"},
        "b",
        {},
        ["b.csv: line(s) 3 repeat the header"],
        id="20.7-glued-files-with-different-headers",
    ),
    pytest.param(
        {
            "b.parquet": pd.DataFrame({"prompt": ["a", "b"], "batch": ["b", "c"]}).set_index(
                pd.Index(["x", "y"], name="batch")
            )
        },
        "b",
        {},
        ["b.parquet", "'batch' is both an index level and a column", "reset_index"],
        id="20.7-parquet-index-clashes-with-a-column",
    ),
    pytest.param(
        {
            "b.csv": csv_text(
                ["prompt", "aspect_ratio", "width", "height"], ["a", "16:9", "1024", "576"]
            )
        },
        "b",
        {"model": NANO},
        ["column 'aspect_ratio'", "are both set", "size the image one way"],
        id="20.7-aspect-ratio-with-width-and-height",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "aspect_ratio"], ["a cat", "16:9"])},
        "b",
        {"model": NANO, "defaults": {"width": 1024, "height": 1024}},
        ["column 'aspect_ratio'", "are both set", "(height, width from the defaults)"],
        id="20.7-aspect-ratio-against-default-sizes",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt"], ["a cat"])},
        "b",
        {"model": "openai/gpt-image-2", "defaults": {"aspect_ratio": "1:1", "height": 512}},
        ["in the defaults", "aspect_ratio '1:1' and height are both set"],
        id="20.7-size-conflict-in-the-defaults",
    ),
    pytest.param(
        {
            "b.csv": csv_text(
                ["prompt", "image_urls"], ["a cat", "data:image/png;base64,not*base64!"]
            )
        },
        "b",
        {"model": NANO},
        ["column 'image_urls[0]'", "base64 payload is invalid"],
        id="20.7-data-uri-bad-base64",
    ),
    pytest.param(
        {
            "b.csv": csv_text(
                ["prompt", "image_url"], ["a cat", "data:image/png;base64,aGVsbG8gd29ybGQ="]
            )
        },
        "b",
        {},
        ["column 'image_url'", "not a type Krea accepts", "convert it"],
        id="20.7-data-uri-that-is-not-an-image",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "image_url"], ["a cat", "data:image/png,%89PNG"])},
        "b",
        {},
        ["column 'image_url'", "not a type Krea accepts"],
        id="20.7-data-uri-without-base64",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "style_images"], ["a cat", '[{"strength": 0.5}]'])},
        "b",
        {},
        ["column 'style_images[0].url'", "names no image"],
        id="20.7-style-image-without-url",
    ),
    pytest.param(
        {
            "b.csv": csv_text(
                ["prompt", "style_images"],
                ["a cat", '[{"URL": "https://example.com/s.png", "strength": 0.5}]'],
            )
        },
        "b",
        {},
        ["column 'style_images[0].URL'", "did you mean 'url'?"],
        id="20.7-style-image-with-URL",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "styles"], ["a cat", '[{"id": "s1", "strenght": 1}]'])},
        "b",
        {},
        ["column 'styles[0].strenght'", "did you mean 'strength'?"],
        id="20.7-style-with-a-misspelt-key",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "image_url"], ["a cat", "http://127.0.0.1:8080/cat.png"])},
        "b",
        {},
        ["column 'image_url'", "a loopback address (127.0.0.1)", "cannot reach"],
        id="20.7-loopback-url",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "image_url"], ["a cat", "https://localhost/cat.png"])},
        "b",
        {},
        ["column 'image_url'", "(localhost)", "cannot reach"],
        id="20.7-localhost-url",
    ),
    pytest.param(
        {
            "b.csv": csv_text(
                ["prompt", "image_urls"],
                ["a cat", '["https://10.1.2.3/a.png", "http://[::1]/b.png"]'],
            )
        },
        "b",
        {"model": NANO},
        [
            "image_urls[0]",
            "private-network address (10.1.2.3)",
            "image_urls[1]",
            "loopback address (::1)",
        ],
        id="20.7-private-and-ipv6-loopback-urls",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "image_url"], ["a cat", "http://169.254.169.254/latest"])},
        "b",
        {},
        ["column 'image_url'", "non-routable address (169.254.169.254)"],
        id="20.7-link-local-metadata-url",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "image_url"], ["a cat", "http://fileserver/cat.png"])},
        "b",
        {},
        ["column 'image_url'", "without a domain (fileserver)"],
        id="20.7-single-label-host",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "image_url"], ["a cat", "https://nas.local/cat.png"])},
        "b",
        {},
        ["column 'image_url'", "(nas.local)"],
        id="20.7-mdns-host",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "width", "height"], ["a cat", "100000", "512"])},
        "b",
        {"model": NANO},
        ["column 'width'", "100000 is above 8192", "the largest any Krea model renders"],
        id="20.7-width-far-beyond-any-model",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "height"], ["a cat", "9000"])},
        "b",
        {"model": "openai/gpt-image-2"},
        ["column 'height'", "9000 is above 8192"],
        id="20.7-height-far-beyond-any-model",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt", "num_inference_steps"], ["a cat", "5000"])},
        "b",
        {"model": "qwen/2512"},
        ["column 'num_inference_steps'", "5000 is above 100"],
        id="20.7-steps-far-beyond-any-model",
    ),
    pytest.param(
        {"b.csv": csv_text(["prompt"], ["a cat"])},
        "b",
        {"model": NANO, "defaults": {"height": 20_000}},
        ["column 'height'", "in the defaults", "20000 is above 8192"],
        id="20.7-size-in-the-defaults",
    ),
    # 4. full-match semantics in every name check
    pytest.param(
        {"nl\n.csv": csv_text(["prompt"], ["a cat"])},
        "nl\n",
        {},
        ["is not a valid partition key", "no spaces or line breaks"],
        id="20.4-batch-name-with-a-trailing-newline",
    ),
    pytest.param(
        {"many.csv": csv_text(["prompt", "batch"], ["a cat", "ok"])},
        "ok\n",
        {},
        ["is not a valid partition key"],
        id="20.4-hand-added-partition-with-a-newline",
    ),
]


@pytest.mark.parametrize(("files", "batch", "build_kwargs", "expected"), CASES + ISSUE_20_CASES)
def test_bad_table_is_refused_before_any_post(
    build, emulator, krea, instance, prompts_dir, files, batch, build_kwargs, expected
):
    """A bad table fails the prompts step with file, line, rule and fix; Krea sees no POST."""
    step, message, _ = run_refused(
        build, emulator, krea, instance, prompts_dir, files, batch, **build_kwargs
    )
    assert step.endswith("prompts"), (step, message)
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_failure_events_stay_small_for_a_huge_cell(build, emulator, krea, instance, prompts_dir):
    """A 100,000-character bad cell leaves a run whose whole event log is a few hundred KB at most."""
    _, _, result = run_refused(
        build,
        emulator,
        krea,
        instance,
        prompts_dir,
        {"b.csv": csv_text(["prompt", "seed"], *[[f"p{i}", "7" * HUGE] for i in range(50)])},
        "b",
    )
    records = instance.get_records_for_run(result.run_id).records
    dumped = "".join(serialize_value(record.event_log_entry) for record in records)
    assert len(dumped) < 300_000, len(dumped)


def test_unpriced_model_with_a_price_override_is_budgeted(
    build, emulator, krea, instance, prompts_dir
):
    """With price_usd given, the cap applies to that price: over it, the jobs step refuses, no POST."""
    files = {
        "b.csv": csv_text(
            ["prompt", "image_url"],
            ["a cat", "https://example.com/a.png"],
            ["a dog", "https://example.com/b.png"],
        )
    }
    step, message, _ = run_refused(
        build,
        emulator,
        krea,
        instance,
        prompts_dir,
        files,
        "b",
        model=SEEDEDIT,
        max_usd_per_run=0.5,
        price_usd=0.4,
    )
    assert step.endswith("jobs")
    assert "estimated at $0.8000, above max_usd_per_run $0.5000" in message


def test_price_override_lets_an_unpriced_model_run_under_its_cap(
    build, emulator, krea, instance, prompts_dir
):
    """An unpriced model with price_usd and a cap it fits under is submitted and estimated at that price."""
    write_files(
        prompts_dir,
        {"b.csv": csv_text(["prompt", "image_url"], ["a cat", "https://example.com/a.png"])},
    )
    assets = build(model=SEEDEDIT, max_usd_per_run=0.5, price_usd=0.25)
    result = materialize(assets, "b", instance=instance, krea=krea, roles=("prompts", "jobs"))
    assert result.success
    prompts = result.output_for_node(assets.prompts.node_def.name)
    assert prompts["estimated_usd"].tolist() == [0.25]
    assert emulator.stats()["jobs_created"] == 1


#: Prices and caps that are not an amount of USD (shared with the workflow tests).
BAD_PRICES = [
    pytest.param(-1.0, id="negative"),
    pytest.param(float("nan"), id="nan"),
    pytest.param(float("inf"), id="inf"),
]


@pytest.mark.parametrize("price", BAD_PRICES)
def test_price_override_must_be_a_usd_amount(build, price):
    """price_usd is refused at build time unless it is a finite amount of 0 or more."""
    with pytest.raises(ValueError, match="price_usd must be a"):
        build(price_usd=price)


def test_parquet_lists_are_sent_exactly_as_lists(build, emulator, krea, instance, prompts_dir):
    """Parquet list cells (image_urls, an empty list, a carried list) are sent and kept as lists."""
    urls = ["https://example.com/a.png", "https://example.com/b.png"]
    frame = pd.DataFrame(
        {
            "prompt": ["two references", "no reference"],
            "image_urls": [urls, []],
            "tags": [["red", "blue"], []],
        }
    )
    write_files(prompts_dir, {"b.parquet": frame})
    assets = build(model=NANO)
    result = materialize(assets, "b", instance=instance, krea=krea)
    assert result.success
    manifest = manifest_of(result, assets)
    sent = [emulator.job(job_id)["request"] for job_id in manifest["job_id"]]
    assert [body["image_urls"] for body in sent] == [urls, []]
    assert [list(tags) for tags in manifest["tags"]] == [["red", "blue"], []]


def test_integers_are_sent_exactly(build, emulator, krea, instance, prompts_dir):
    """A seed at Krea's largest and numbers written 1e3 or 0042 reach Krea as the exact integers."""
    write_files(
        prompts_dir,
        {
            "b.csv": csv_text(
                ["prompt", "seed", "width", "steps"],
                ["largest seed", str(SEED_MAX), "1e3", "0042"],
                ["smallest seed", "0", "512.0", "1"],
            )
        },
    )
    assets = build()
    result = materialize(assets, "b", instance=instance, krea=krea, roles=("prompts", "jobs"))
    assert result.success
    prompts = result.output_for_node(assets.prompts.node_def.name)
    job_ids = (
        result.asset_materializations_for_node(assets.jobs.node_def.name)[0]
        .metadata["krea/job_ids"]
        .value
    )
    sent = {
        emulator.job(job_id)["request"]["prompt"]: emulator.job(job_id)["request"]
        for job_id in job_ids
    }
    assert sent["largest seed"]["seed"] == SEED_MAX and type(sent["largest seed"]["seed"]) is int
    assert (sent["largest seed"]["width"], sent["largest seed"]["steps"]) == (1000, 42)
    assert (sent["smallest seed"]["seed"], sent["smallest seed"]["width"]) == (0, 512)
    assert '"width":1000' in prompts["request_json"].iloc[0]


# -- 9. files the source does not read are reported ------------------------------------------


def test_skipped_files_are_reported_in_the_discovery_tick(build, krea, instance, prompts_dir):
    """notes.txt, a spreadsheet and a folder are named in the tick with the reason they are skipped."""
    write_files(prompts_dir, {"notes.txt": "todo", "plan.xlsx": b"PK\x03\x04"})
    (prompts_dir / "old").mkdir()
    assets = build()
    sensor = next(s for s in build_krea_sensors(assets) if s.name.endswith("batch_discovery"))
    defs = dg.Definitions(assets=assets.assets, sensors=[sensor], resources={"krea": krea})
    with dg.build_sensor_context(
        instance_ref=instance.get_ref(), definitions=defs, resources=defs.resources
    ) as context:
        result = sensor.evaluate_tick(context)
    message = result.skip_message
    assert "notes.txt: skipped, not a prompt table" in message
    assert "plan.xlsx: skipped, a spreadsheet" in message and "CSV UTF-8" in message
    assert "old: skipped, a folder" in message


def test_skipped_files_are_reported_in_the_prompts_step(
    build, emulator, krea, instance, prompts_dir
):
    """The prompts step warns about unread files and lists them in its metadata."""
    write_files(prompts_dir, {"b.csv": csv_text(["prompt"], ["a cat"]), "notes.txt": "todo"})
    assets = build()
    result = materialize(assets, "b", instance=instance, krea=krea, roles=("prompts",))
    assert result.success
    metadata = result.asset_materializations_for_node(assets.prompts.node_def.name)[0].metadata
    skipped = metadata["krea/skipped_files"].value
    assert list(skipped) == ["notes.txt"] and "not a prompt table" in skipped["notes.txt"]
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("notes.txt: skipped" in text for text in logs)
    assert posts(emulator) == 0


# -- 10. a partition added by hand follows the batch-name rule -------------------------------


#: Partition keys that break the batch-name rule (shared with the workflow tests).
BAD_BATCH_NAMES = [
    pytest.param("has space", id="space"),
    pytest.param("-dash", id="leading-symbol"),
    pytest.param("n" * 140, id="too-long"),
]


@pytest.mark.parametrize(
    ("file", "partition"),
    [pytest.param(f"{p.values[0]}.csv", p.values[0], id=p.id) for p in BAD_BATCH_NAMES],
)
def test_hand_added_partition_follows_the_batch_name_rule(
    build, emulator, krea, instance, prompts_dir, file, partition
):
    """A partition key that breaks the batch-name rule fails the prompts step, even when its file exists."""
    step, message, _ = run_refused(
        build, emulator, krea, instance, prompts_dir, {file: csv_text(["prompt"], ["a"])}, partition
    )
    assert step.endswith("prompts")
    assert "is not a valid partition key" in message and "rename the file" in message


# -- 11. a malformed API key fails when the resource is built -------------------------------

SECRET = "s3cr3t-value-9f8e7d"


@pytest.mark.parametrize(
    "key",
    [f"no-colon-{SECRET}", f"Bearer abc:{SECRET}", f"abc: {SECRET}", f":{SECRET}"],
    ids=["no-colon", "bearer-prefix", "whitespace", "empty-id"],
)
def test_malformed_api_key_fails_when_the_resource_is_built(key):
    """KreaResource refuses a token not shaped id:secret at construction, without echoing it."""
    with pytest.raises(ValueError) as raised:
        KreaResource(api_key=key)
    assert "token" in str(raised.value) and SECRET not in str(raised.value)


def test_malformed_api_key_from_envvar_fails_before_any_step(
    build, emulator, instance, prompts_dir, monkeypatch
):
    """A malformed key read from an EnvVar fails at resource init, with the id:secret rule, no request."""
    monkeypatch.setenv("KREA_BAD_KEY", f"no-colon-{SECRET}")
    write_files(prompts_dir, {"b.csv": csv_text(["prompt"], ["a cat"])})
    assets = build()
    krea = KreaResource(api_key=dg.EnvVar("KREA_BAD_KEY"), base_url=emulator.base_url)
    result = materialize(assets, "b", instance=instance, krea=krea)
    assert not result.success
    records = instance.get_records_for_run(result.run_id).records
    dumped = "".join(serialize_value(record.event_log_entry) for record in records)
    assert "id:secret" in dumped and SECRET not in dumped
    assert "no running event loop" not in dumped
    assert emulator.stats()["requests_by_route"] == {}


def test_resource_errors_never_quote_the_token():
    """Any validation error of the resource (here a bad setting) leaves the token out."""
    with pytest.raises(ValueError) as raised:
        KreaResource(api_key=f"abc:{SECRET}", max_retries=-1)
    text = str(raised.value)
    # pydantic abbreviates a quoted input in the middle: no piece of the token may show.
    assert "max_retries" in text and SECRET[:8] not in text and "input_value" not in text


def test_empty_key_and_envvar_still_build():
    """An unset key (a YAML component without its variable) and an EnvVar build; they are checked later."""
    assert KreaResource(api_key="").api_key == ""
    assert KreaResource(api_key=dg.EnvVar("KREA_API_KEY")) is not None


# -- the rules, one by one --------------------------------------------------------------------


def test_reserved_columns_cover_every_column_the_package_writes():
    """Every prompts-table, manifest and step column except prompt, variant and row_key (a
    table's own row_key column is its key) is reserved."""
    written = (
        set(PROMPTS_TABLE_COLUMNS) | set(MANIFEST_COLUMNS) | {"outputs", "step", "step_version"}
    )
    assert written - {"prompt", "variant", "row_key"} <= RESERVED_COLUMNS


def test_a_model_field_named_like_a_manifest_column_is_a_parameter():
    """width is reserved as data but, as a request field of the model, it is a parameter."""
    table = pd.DataFrame({"prompt": ["a"], "width": ["640"]})
    prepared = prepare_batch(table, batch="b", model="bfl/flux-1-dev")
    assert '"width":640' in prepared.table["request_json"].iloc[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12345678901234567", 12345678901234567),
        ("9007199254740993", 9007199254740993),  # 2**53 + 1: float() would round it
        ("-0", 0),
        ("1e3", 1000),
        ("512.0", 512),
        ("0.25", 0.25),
        ("+7", 7),
    ],
)
def test_numbers_are_parsed_exactly(text, expected):
    """Numeric text becomes the exact int (or, for a true fraction, the float) it denotes."""
    value, problem = parse_number_text(text)
    assert problem is None and value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("https://example.com/a.png", None),
        ("data:image/png;base64,iVBORw0KGgo=", None),
        ("/tmp/a.png", "local path"),
        ("~/a.png", "local path"),
        ("..\\a.png", "local path"),
        ("D:/a.png", "local path"),
        ("cat.jpeg", "local path"),
        ("gs://bucket/a.png", "gs:// location"),
        ("https://", "no host name"),
        (" https://example.com/a.png", "contains spaces"),
        ("data:text/plain;base64,AAAA", "not an image"),
        ("ftp://example.com/a.png", "not an image URL"),
    ],
)
def test_image_references_have_one_rule(value, fragment):
    """check_image_reference accepts http(s) and data:image URIs and says why it refuses the rest."""
    problem = check_image_reference(value)
    assert (problem is None) if fragment is None else (fragment in (problem or ""))


def test_source_errors_name_the_line_and_stay_short(tmp_path):
    """Badly shaped rows are listed by line (ten at most), with a count of the rest."""
    rows = "".join(f"p{i},1,2\n" for i in range(500))
    (tmp_path / "b.csv").write_text("prompt,width\n" + rows)
    with pytest.raises(PromptSourceError) as raised:
        read_table(tmp_path / "b.csv")
    text = str(raised.value)
    assert "line 2 has 3 field(s)" in text and "and 490 more line(s)" in text
    assert len(text) < 2_000


def test_unnamed_empty_columns_are_dropped_and_unnamed_values_refused(tmp_path):
    """Trailing commas (an unnamed, empty column) are harmless; an unnamed column with values is not."""
    (tmp_path / "ok.csv").write_text("prompt,\na,\nb,\n")
    assert list(read_table(tmp_path / "ok.csv").columns) == ["prompt"]
    (tmp_path / "bad.csv").write_text("prompt,\na,\nb,x\n")
    with pytest.raises(PromptSourceError, match=r"column 2 has no name.*line 3"):
        read_table(tmp_path / "bad.csv")


def test_read_batch_rows_locates_every_row(tmp_path):
    """Rows of a batch split across files keep their file and line (CSV) or row (Parquet)."""
    (tmp_path / "x.csv").write_text("prompt\n\nfirst\n")
    pd.DataFrame({"prompt": ["a", "b", "c"], "batch": ["y", "x", "x"]}).to_parquet(
        tmp_path / "many.parquet"
    )
    rows = PromptSource(tmp_path).read_batch_rows("x")
    assert rows.locations == ("many.parquet row 2", "many.parquet row 3", "x.csv line 3")
    assert rows.frame["prompt"].tolist() == ["b", "c", "first"]


def test_validation_error_message_is_bounded_for_any_number_of_problems():
    """Ten thousand bad rows give an error of a few KB that still counts them all."""
    table = pd.DataFrame(
        {"prompt": [f"p{i}" for i in range(10_000)], "width": ["x" * 1000] * 10_000}
    )
    with pytest.raises(PromptValidationError) as raised:
        prepare_batch(table, batch="b", model="bfl/flux-1-dev")
    assert len(raised.value.problems) == 10_000
    assert len(str(raised.value)) < MAX_MESSAGE_CHARS and "10000 problem(s)" in str(raised.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("1.0000000000000000001", "more significant digits than a number keeps exactly"),
        ("1_000", None),
        ("0x10", None),
        ("\u0661\u0662", None),  # Arabic-Indic digits: not a number in a request
    ],
    ids=["too-many-digits", "underscore", "hex", "non-ascii-digits"],
)
def test_numbers_that_cannot_be_sent_exactly_are_not_numbers(text, fragment):
    """Text that float() or int() would bend into a number is refused or left as text."""
    value, problem = parse_number_text(text)
    assert value is None
    assert (problem is None) if fragment is None else (fragment in problem)


def test_crlf_and_bare_cr_files_count_lines_like_an_editor(tmp_path):
    """Windows (CRLF) and old Mac (CR) line endings give the same line numbers as LF."""
    for name, ending in (("crlf.csv", "\r\n"), ("cr.csv", "\r")):
        (tmp_path / name).write_bytes(ending.join(["prompt", "a", "", "b", ""]).encode())
        assert read_table(tmp_path / name).index.tolist() == [2, 4]


def test_parquet_decimal_and_struct_cells_are_plain_values(tmp_path):
    """A Parquet decimal seed is the exact integer; a list of structs is a list of objects."""
    from decimal import Decimal

    frame = pd.DataFrame(
        {
            "prompt": ["a"],
            "seed": [Decimal("4294967295")],
            "style_images": [[{"url": "https://example.com/s.png", "strength": 0.5}]],
        }
    )
    prepared = prepare_batch(frame, batch="b", model="bfl/flux-1-dev")
    request = prepared.table["request_json"].iloc[0]
    assert '"seed":4294967295' in request
    assert '"style_images":[{"strength":0.5,"url":"https://example.com/s.png"}]' in request


def test_discovery_tick_stays_short_and_names_bad_rows(build, krea, instance, prompts_dir):
    """A huge batch value and many broken files give a tick message of a few KB naming lines."""
    write_files(
        prompts_dir,
        {
            "huge.csv": csv_text(["prompt", "batch"], ["a", "b" * HUGE]),
            "shifted.csv": "prompt,width\na, with a comma,512\n",
            **{f"broken{i:03}.csv": "prompt,width\na,1,2\n" for i in range(200)},
        },
    )
    assets = build()
    sensor = next(s for s in build_krea_sensors(assets) if s.name.endswith("batch_discovery"))
    defs = dg.Definitions(assets=assets.assets, sensors=[sensor], resources={"krea": krea})
    with dg.build_sensor_context(
        instance_ref=instance.get_ref(), definitions=defs, resources=defs.resources
    ) as context:
        result = sensor.evaluate_tick(context)
    message = result.skip_message
    assert result.run_requests == []
    assert len(message) < MAX_MESSAGE_CHARS, len(message)
    assert "broken000.csv: 1 row(s) do not have as many fields as the header" in message
    assert "and 192 more" in message


# -- issue 20: files that are not read are named, and many of them make one line -------------


def _discovery(build, krea, instance):
    assets = build()
    sensor = next(s for s in build_krea_sensors(assets) if s.name.endswith("batch_discovery"))
    defs = dg.Definitions(assets=assets.assets, sensors=[sensor], resources={"krea": krea})
    with dg.build_sensor_context(
        instance_ref=instance.get_ref(), definitions=defs, resources=defs.resources
    ) as context:
        return sensor.evaluate_tick(context)


def _special_entries(prompts_dir: Path) -> None:
    """A broken symlink, a FIFO and a folder, each named like a prompt file."""
    (prompts_dir / "broken.csv").symlink_to(prompts_dir / "gone.csv")
    os.mkfifo(prompts_dir / "pipe.csv")
    (prompts_dir / "folder.csv").mkdir()


@pytest.mark.timeout(120)  # a FIFO opened for reading would block forever
def test_special_entries_are_named_in_the_discovery_tick(build, krea, instance, prompts_dir):
    """A broken symlink, a FIFO and a folder named *.csv are named with why, never opened."""
    _special_entries(prompts_dir)
    result = _discovery(build, krea, instance)
    assert result.run_requests == [] and result.dynamic_partitions_requests == []
    text = result.skip_message or ""
    assert "broken.csv: skipped, a broken symbolic link" in text and "gone.csv" in text
    assert "pipe.csv: skipped, a named pipe (FIFO)" in text
    assert "folder.csv: skipped, a folder" in text


@pytest.mark.timeout(120)
def test_special_entries_are_named_in_the_prompts_step(
    build, emulator, krea, instance, prompts_dir
):
    """The prompts step reads its batch, lists the special entries in krea/skipped_files, and
    names each reason in one warning."""
    write_files(prompts_dir, {"b.csv": csv_text(["prompt"], ["a cat"])})
    _special_entries(prompts_dir)
    assets = build()
    result = materialize(assets, "b", instance=instance, krea=krea, roles=("prompts",))
    assert result.success
    metadata = result.asset_materializations_for_node(assets.prompts.node_def.name)[0].metadata
    skipped = metadata["krea/skipped_files"].value
    assert sorted(skipped) == ["broken.csv", "folder.csv", "pipe.csv"]
    assert "broken symbolic link" in skipped["broken.csv"]
    assert "named pipe" in skipped["pipe.csv"] and "a folder" in skipped["folder.csv"]
    warnings = [
        entry.user_message
        for entry in instance.all_logs(result.run_id)
        if "prompt source" in entry.user_message
    ]
    assert len(warnings) == 1 and "pipe.csv" in warnings[0]


@pytest.mark.timeout(120)
def test_a_batch_whose_file_is_a_fifo_fails_naming_it(build, emulator, krea, instance, prompts_dir):
    """A partition whose own file is a FIFO fails with that reason, not 'not in the folder'."""
    os.mkfifo(prompts_dir / "pipe.csv")
    step, message, _ = run_refused(build, emulator, krea, instance, prompts_dir, {}, "pipe")
    assert step.endswith("prompts")
    assert "pipe.csv: skipped, a named pipe (FIFO)" in message


def test_thousands_of_skipped_files_make_one_short_warning(
    build, emulator, krea, instance, prompts_dir
):
    """3,000 photos in the prompt folder: one warning line by reason, in the tick and the step."""
    for index in range(3_000):
        (prompts_dir / f"IMG_{index:04}.jpg").write_bytes(b"\xff\xd8\xff")
    tick = _discovery(build, krea, instance)
    write_files(prompts_dir, {"b.csv": csv_text(["prompt"], ["a cat"])})
    assets = build()
    result = materialize(assets, "b", instance=instance, krea=krea, roles=("prompts",))
    assert result.success
    lines = [
        entry.user_message
        for entry in instance.all_logs(result.run_id)
        if "prompt source" in entry.user_message
    ]
    assert len(lines) == 1 and len(lines[0]) < 1_000, lines
    assert "3000 entries skipped" in lines[0] and "'IMG_0000.jpg'" in lines[0]
    assert "and 2997 more" in lines[0]
    message = tick.skip_message or ""
    assert len(message) < 2_000 and "3000 entries skipped" in message


# A file that nobody may read, root included: Linux's write-only sysctl files. As another
# user, an ordinary file with mode 000 is one too.
WRITE_ONLY = Path("/proc/sys/vm/drop_caches")


def _unreadable_file(path: Path, kind: str) -> None:
    if kind == "write-only":
        if not WRITE_ONLY.exists():
            pytest.skip(f"{WRITE_ONLY} is Linux's")
        path.symlink_to(WRITE_ONLY)
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads a file of mode 000")
        path.write_text("prompt\na secret dog\n")
        path.chmod(0o000)


@pytest.mark.parametrize("kind", ["write-only", "mode-000"])
def test_an_unreadable_file_is_named_in_the_tick_and_the_step(
    build, emulator, krea, instance, prompts_dir, kind
):
    """A prompt file that cannot be read is named with the reason in the discovery tick and the
    prompts step; other batches go on, and its own batch fails naming it."""
    _unreadable_file(prompts_dir / "locked.csv", kind)
    tick = _discovery(build, krea, instance)
    assert "locked.csv: skipped, cannot be read (Permission denied)" in (tick.skip_message or "")
    write_files(prompts_dir, {"other.csv": csv_text(["prompt"], ["a cat"])})
    assets = build()
    result = materialize(assets, "other", instance=instance, krea=krea, roles=("prompts",))
    assert result.success
    skipped = (
        result.asset_materializations_for_node(assets.prompts.node_def.name)[0]
        .metadata["krea/skipped_files"]
        .value
    )
    assert "cannot be read (Permission denied)" in skipped["locked.csv"]
    step, message, _ = run_refused(build, emulator, krea, instance, prompts_dir, {}, "locked")
    assert step.endswith("prompts")
    assert "locked.csv: skipped, cannot be read (Permission denied)" in message


def test_a_parquet_batch_index_splits_the_file(build, emulator, krea, instance, prompts_dir):
    """A Parquet file saved with its batch as the index is split by it, not read as one batch."""
    frame = pd.DataFrame({"prompt": ["a cat", "a dog", "a fox"], "batch": ["b1", "b2", "b1"]})
    write_files(prompts_dir, {"many.parquet": frame.set_index("batch")})
    assets = build()
    result = materialize(assets, "b1", instance=instance, krea=krea, roles=("prompts",))
    assert result.success
    prompts = result.output_for_node(assets.prompts.node_def.name)
    assert prompts["prompt"].tolist() == ["a cat", "a fox"]
    assert set(PromptSource(prompts_dir).scan()[0]) == {"b1", "b2"}


def test_a_valid_data_uri_image_is_sent_as_given(build, emulator, krea, instance, prompts_dir):
    """A data:image/png;base64 URI of a real PNG passes every rule and reaches Krea unchanged."""
    uri = f"data:image/png;base64,{PNG_BASE64}"
    write_files(prompts_dir, {"b.csv": csv_text(["prompt", "image_url"], ["a cat", uri])})
    assets = build()
    result = materialize(assets, "b", instance=instance, krea=krea, roles=("prompts", "jobs"))
    assert result.success
    job_id = (
        result.asset_materializations_for_node(assets.jobs.node_def.name)[0]
        .metadata["krea/job_ids"]
        .value[0]
    )
    assert emulator.job(job_id)["request"]["image_url"] == uri


# -- issue 20: names are checked whole --------------------------------------------------------


@pytest.mark.parametrize(
    "prefix",
    ["posters\n", "pöster", "poster²", "a b"],
    ids=["newline", "umlaut", "superscript", "space"],
)
def test_name_prefix_is_checked_whole_and_ascii(build, prefix):
    """A prefix with a trailing newline or a non-ASCII letter is refused when the assets are built."""
    with pytest.raises(ValueError, match="ASCII letters, digits and '_'"):
        build(prefix)


@pytest.mark.parametrize(
    "name", ["edit\n", "édit", "two words"], ids=["newline", "accent", "space"]
)
def test_workflow_step_name_is_checked_whole_and_ascii(name):
    """A workflow step name is held to the same full-match rule as a prefix."""
    with pytest.raises(ValueError, match="ASCII letters, digits and '_'"):
        KreaStep(name, model="bfl/flux-1-dev", prompt="{text}")


def test_a_newline_batch_file_never_becomes_a_partition(build, krea, instance, prompts_dir):
    """Discovery reports nl\\n.csv as unusable instead of adding a partition for it."""
    write_files(prompts_dir, {"nl\n.csv": csv_text(["prompt"], ["a cat"])})
    result = _discovery(build, krea, instance)
    assert result.run_requests == [] and result.dynamic_partitions_requests == []
    assert "is not a valid partition key" in (result.skip_message or "")


@pytest.mark.parametrize(
    ("defaults", "fragment"),
    [
        ({"width": int(BIG)}, "width: an integer of 400 digits"),
        ({"seed": 10**5000}, "seed: an integer of 5001 digits"),
        ({"styles": [{"id": "s1", "strength": 10**60}]}, "styles[0].strength: an integer of 61"),
        ({"steps": float("inf")}, "steps: inf is not a finite number"),
        ({"style_images": [{"url": "https://example.com/s.png", "strength": float("nan")}]}, "nan"),
    ],
    ids=["big-width", "past-the-str-limit", "nested", "inf", "nested-nan"],
)
def test_a_number_no_field_takes_in_the_defaults_fails_when_the_node_is_built(
    build, defaults, fragment
):
    """defaults holding NaN, inf or an integer of hundreds of digits fail the build (dg check
    defs) naming the field, instead of OverflowError or int-to-str errors later."""
    with pytest.raises(ValueError, match="defaults: ") as raised:
        build(defaults=defaults)
    assert fragment in str(raised.value) and len(str(raised.value)) < 500


# -- issue 20: a quoted API key -----------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        f"'abc:{SECRET}'",
        f'"abc:{SECRET}"',
        f' "abc:{SECRET}"\n',
        f"'abc:{SECRET}'\n",
        f"\u201cabc:{SECRET}\u201d",
        f"`abc:{SECRET}`",
        f"abc:{SECRET}'",
    ],
    ids=[
        "single",
        "double",
        "double-in-whitespace",
        "single-newline",
        "smart",
        "backtick",
        "one-end",
    ],
)
def test_a_quoted_api_key_fails_when_the_resource_is_built(key):
    """A token pasted with its shell quotes is refused at construction, saying to remove them."""
    with pytest.raises(ValueError) as raised:
        KreaResource(api_key=key)
    text = str(raised.value)
    assert "remove the quotes" in text and SECRET not in text and SECRET[:8] not in text


def test_a_quoted_api_key_from_the_environment_fails_before_any_request(
    build, emulator, instance, prompts_dir, monkeypatch
):
    """export KREA_API_KEY="'id:secret'" fails the run at resource init: no request, no echo."""
    monkeypatch.setenv("KREA_QUOTED_KEY", f"'{emulator.token}'")
    write_files(prompts_dir, {"b.csv": csv_text(["prompt"], ["a cat"])})
    krea = KreaResource(api_key=dg.EnvVar("KREA_QUOTED_KEY"), base_url=emulator.base_url)
    result = materialize(build(), "b", instance=instance, krea=krea)
    assert not result.success
    records = instance.get_records_for_run(result.run_id).records
    dumped = "".join(serialize_value(record.event_log_entry) for record in records)
    secret = emulator.token.split(":", 1)[1]
    assert "remove the quotes" in dumped and secret not in dumped
    assert emulator.stats()["requests_by_route"] == {}


# -- issue 20: what reaches metadata is shortened ----------------------------------------------


def _event_log_size(instance: dg.DagsterInstance, run_id: str) -> int:
    records = instance.get_records_for_run(run_id, limit=10_000).records
    return max(len(serialize_value(record.event_log_entry)) for record in records)


def test_a_huge_column_name_and_variant_stay_out_of_the_event_log(
    build, emulator, krea, instance, prompts_dir
):
    """A 1 MB carried column name and a 1 MB variant cell make no event of more than 64 KB."""
    name, variant = "c" * 1_000_000, "v" * 1_000_000
    write_files(
        prompts_dir, {"b.csv": csv_text(["prompt", "variant", name], ["a cat", variant, "x"])}
    )
    assets = build()
    result = materialize(assets, "b", instance=instance, krea=krea)
    assert result.success
    assert _event_log_size(instance, result.run_id) < 64_000
    prompts_meta = result.asset_materializations_for_node(assets.prompts.node_def.name)[0].metadata
    columns = prompts_meta["dagster/column_schema"].value.columns
    assert max(len(column.name) for column in columns) <= 200
    assert "(1000000 characters)" in prompts_meta["krea/preview"].value


def test_a_table_of_thousands_of_columns_lists_a_bounded_schema(
    build, emulator, krea, instance, prompts_dir
):
    """5,000 carried columns: the schema lists 200 of them and counts the rest."""
    header = ["prompt", *(f"extra_{index}" for index in range(5_000))]
    write_files(prompts_dir, {"b.csv": csv_text(header, ["a cat", *(["x"] * 5_000)])})
    assets = build()
    result = materialize(assets, "b", instance=instance, krea=krea, roles=("prompts",))
    assert result.success
    columns = (
        result.asset_materializations_for_node(assets.prompts.node_def.name)[0]
        .metadata["dagster/column_schema"]
        .value.columns
    )
    table = result.output_for_node(assets.prompts.node_def.name)
    assert len(table.columns) > 5_000  # every carried column is in the table
    assert len(columns) == 201
    assert columns[-1].name == f"... {len(table.columns) - 200} more column(s)"


def test_a_huge_krea_failure_is_shortened_everywhere(build, emulator, krea, instance, prompts_dir):
    """A job failure with a 1 MB code and message: the failures table, logs and manifest stay small."""
    emulator.configure(job_failure_rate=1.0, job_failures=[["E" * 100_000, "m" * 1_000_000]])
    write_files(prompts_dir, {"b.csv": csv_text(["prompt"], ["a cat"])})
    assets = build(max_failed_fraction=1.0)
    result = materialize(assets, "b", instance=instance, krea=krea)
    assert result.success
    assert _event_log_size(instance, result.run_id) < 64_000
    manifest = manifest_of(result, assets)
    assert len(manifest["error_code"].iloc[0]) <= 100
    assert len(manifest["error_message"].iloc[0]) <= 2_000
    failures = (
        result.asset_materializations_for_node(assets.images.node_def.name)[0]
        .metadata["krea/failures"]
        .value.records
    )
    assert all(len(str(value)) <= 500 for value in failures[0].data.values())
