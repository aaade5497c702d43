"""Estimates tell the truth: a model without a published price is 'unknown', never $0."""

import pandas as pd
import pytest

from krea_dagster.api import UnknownModelError
from krea_dagster.api.catalog import bundled_catalog
from krea_dagster.engine.prompts import VALIDATION_COLUMN, prepare_batch

UNPRICED_MODEL = "enhance/topaz/standard-enhance"
ENHANCE_ROW = {
    "prompt": "",
    "image_url": "https://example.com/a.png",
    "model": "Standard V2",
    "width": 2048,
    "height": 2048,
}


def test_a_model_without_a_price_is_estimated_unknown_with_a_warning_naming_it() -> None:
    """Krea publishes no price for the Topaz upscaler: the estimate says unknown and why."""
    prepared = prepare_batch(pd.DataFrame([ENHANCE_ROW]), batch="b", model=UNPRICED_MODEL)
    assert prepared.unpriced_rows == 1
    assert prepared.estimate_text == "unknown"
    assert prepared.price_warning is not None
    assert UNPRICED_MODEL in prepared.price_warning and "not $0" in prepared.price_warning


def test_price_usd_prices_what_the_catalog_cannot() -> None:
    """The user's price_usd counts the prompts: no unknown, no warning."""
    prepared = prepare_batch(
        pd.DataFrame([ENHANCE_ROW]), batch="b", model=UNPRICED_MODEL, price_usd=0.05
    )
    assert (prepared.estimate_text, prepared.price_warning) == ("$0.0500", None)


def test_a_priced_model_has_no_warning() -> None:
    """A model with a published price is estimated in dollars, with no warning."""
    prepared = prepare_batch(pd.DataFrame([{"prompt": "a cat"}]), batch="b", model="bfl/flux-1-dev")
    assert (prepared.estimate_text, prepared.price_warning) == ("$0.0070", None)


def test_the_catalog_given_validates_the_batch() -> None:
    """prepare_batch validates against the catalog it is given: unvalidated models included."""
    table = pd.DataFrame([{"prompt": "a cat", "aspect_ratio": "1:1", "seed": "7", "team": "x"}])
    with pytest.raises(UnknownModelError, match="unvalidated_models"):
        prepare_batch(table, batch="b", model="krea/krea-3")
    opted_in = bundled_catalog().with_unvalidated(["krea/krea-3"])
    prepared = prepare_batch(table, batch="b", model="krea/krea-3", catalog=opted_in)
    row = prepared.table.iloc[0]
    assert row[VALIDATION_COLUMN] == "unvalidated"
    # Known request field names are sent, typed; other columns are carried as data.
    assert row["request_json"] == '{"aspect_ratio":"1:1","prompt":"a cat","seed":7}'
    assert row["team"] == "x"
