"""The one derivation of a catalog from an OpenAPI document, its prices, and its bounds."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from krea_dagster.api import ModelCatalog
from krea_dagster.api.catalog import CatalogOrigin, bundled_catalog
from krea_dagster.api.catalog_source import (
    DERIVATION_VERSION,
    CatalogDocumentError,
    derive_catalog,
    fetch_openapi,
    read_document,
)
from krea_dagster.emulator.catalog import openapi_document

TEST_BASE_URL = "http://krea.test"
NEW_PATH = "/generate/image/krea/krea-3"


def operation(**changes: Any) -> dict[str, Any]:
    """A POST /generate operation like Krea's newer ones; ``changes`` replace top-level keys."""
    base: dict[str, Any] = {
        "summary": "Krea 3",
        "description": "New model.",
        "requestBody": {
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "prompt": {"type": "string", "minLength": 1},
                            "resolution": {"type": "string", "enum": ["1K", "2K"]},
                            "quality": {"type": "string", "enum": ["low", "high"]},
                        },
                        "required": ["prompt"],
                        "additionalProperties": False,
                    }
                }
            }
        },
    }
    base.update(changes)
    return base


def document(op: dict[str, Any] | None = None, path: str = NEW_PATH) -> dict[str, Any]:
    return {"openapi": "3.1.0", "info": {"title": "Krea API"}, "paths": {path: {"post": op}}}


def live(data: dict[str, Any]) -> ModelCatalog:
    return ModelCatalog.from_data(data, CatalogOrigin("live", "f" * 64, TEST_BASE_URL))


# -- prices the document gives -------------------------------------------------------------------


def test_x_krea_pricing_prices_each_point_by_its_dimensions() -> None:
    """x-krea-pricing points price the request whose resolution and quality match them."""
    pricing = {
        "type": "fixed",
        "currency": "USD",
        "unit": "request",
        "price_points": [
            {"amount": "0.03", "dimensions": {"resolution": "1K", "quality": "low"}},
            {"amount": "0.05", "dimensions": {"resolution": "1K", "quality": "high"}},
            {"amount": 0.09, "dimensions": {"resolution": "2K", "quality": "high"}},
        ],
    }
    models = live(derive_catalog(document(operation(**{"x-krea-pricing": pricing}))))
    spec = models.get("krea/krea-3")
    assert spec.price is not None and spec.price.source == "openapi"
    assert models.estimate_cost("krea/krea-3", {"resolution": "1K", "quality": "low"}) == 0.03
    assert models.estimate_cost("krea/krea-3", {"resolution": "2K", "quality": "high"}) == 0.09
    # Not determined by the request (no quality given, no default): the highest that may apply.
    assert models.estimate_cost("krea/krea-3", {"resolution": "1K"}) == 0.05


def test_a_dimension_the_estimate_cannot_read_errs_on_the_safe_side() -> None:
    """A price dimension no request field determines (k2BillingTier) takes the highest point."""
    pricing = {
        "type": "fixed",
        "currency": "USD",
        "price_points": [
            {"amount": "0.03", "dimensions": {"k2BillingTier": "text-to-image"}},
            {"amount": "0.05", "dimensions": {"k2BillingTier": "image-to-image"}},
        ],
    }
    models = live(derive_catalog(document(operation(**{"x-krea-pricing": pricing}))))
    assert models.estimate_cost("krea/krea-3", {"prompt": "a"}) == 0.05


def test_a_usd_column_of_the_description_table_is_a_price() -> None:
    """A description table with a price column prices each row's conditions."""
    description = "Model.\n| Resolution | Price (USD) |\n|---|---|\n| 1K | $0.08 |\n| 2K | $0.12 |"
    models = live(derive_catalog(document(operation(description=description))))
    assert models.get("krea/krea-3").price.source == "openapi"  # type: ignore[union-attr]
    assert models.estimate_cost("krea/krea-3", {"resolution": "2K"}) == 0.12
    assert models.estimate_cost("krea/krea-3", {"resolution": "1K"}) == 0.08


def test_a_price_in_another_currency_or_unit_is_not_taken_as_usd() -> None:
    """x-krea-pricing in EUR, or per second, gives no USD price (unknown, not a wrong one)."""
    for pricing in (
        {"currency": "EUR", "price_points": [{"amount": 1}]},
        {"unit": "second", "price_points": [{"amount": 1}]},
    ):
        models = live(derive_catalog(document(operation(**{"x-krea-pricing": pricing}))))
        assert models.estimate_cost("krea/krea-3", {"prompt": "a"}) is None


def test_the_live_derivation_keeps_a_price_the_bundled_catalog_knows() -> None:
    """A model whose document gives no price keeps the bundled catalog's published one."""
    bundled = bundled_catalog()
    previous = {
        key: {"price": {"usd": s.price.usd, "points": [], "source": s.price.source}}
        for key, s in bundled.specs.items()
        if s.price is not None
    }
    data = derive_catalog(openapi_document(), previous=previous, request_schemas=False)
    flux = live(data).get("bfl/flux-1-dev")
    assert flux.price is not None and flux.price.usd == 0.007 and flux.price.source == "doc"
    assert "request_schema" not in data["models"]["image/bfl/flux-1-dev"]
    assert data["source"]["derivation"] == DERIVATION_VERSION


def test_compute_units_are_priced_at_the_given_rate_when_nothing_else_prices_them() -> None:
    """With no price and a compute-unit table, the rate given prices it (source compute-units)."""
    op = operation(description="X.\n| Compute Units |\n|---|\n| 20 |")
    spec = live(derive_catalog(document(op), usd_per_compute_unit=0.002)).get("krea/krea-3")
    assert spec.price is not None
    assert (spec.price.usd, spec.price.source) == (0.04, "compute-units")


def test_a_model_with_no_price_anywhere_estimates_unknown() -> None:
    """No x-krea-pricing, no price table, no compute units: the estimate is None, never 0."""
    models = live(derive_catalog(document(operation())))
    assert models.get("krea/krea-3").price is None
    assert models.estimate_cost("krea/krea-3", {"prompt": "a"}) is None


# -- documents that cannot be used ---------------------------------------------------------------


def _schema(op: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = op["requestBody"]["content"]["application/json"]["schema"]
    return schema


def _broken(change: Any) -> dict[str, Any]:
    op = operation()
    change(op, _schema(op))
    return document(op)


BROKEN_SCHEMAS = {
    "type-not-a-string": lambda op, s: s["properties"]["prompt"].update(type=5),
    "enum-not-a-list": lambda op, s: s["properties"]["resolution"].update(enum="1K"),
    "minimum-not-a-number": lambda op, s: s["properties"]["prompt"].update(minLength="one"),
    "properties-not-an-object": lambda op, s: s.update(properties=["prompt"]),
    "required-not-names": lambda op, s: s.update(required=[1, 2]),
    "items-not-a-schema": lambda op, s: s["properties"].update(urls={"type": "array", "items": 5}),
    "ref-to-nothing": lambda op, s: s["properties"].update(x={"$ref": "#/components/none"}),
    "ref-remote": lambda op, s: s["properties"].update(x={"$ref": "https://evil.test/s.json"}),
    "alias-date": lambda op, s: op.update(
        {"x-krea-deprecated-field-aliases": [{"from": "a", "to": "b", "sunset_date": "soon"}]}
    ),
    "no-request-schema": lambda op, s: op.pop("requestBody"),
    "request-body-not-an-object": lambda op, s: op.update(requestBody=[]),
}


@pytest.mark.parametrize("change", BROKEN_SCHEMAS.values(), ids=BROKEN_SCHEMAS.keys())
def test_a_schema_that_does_not_compile_names_its_path(change: Any) -> None:
    """A request schema the validator cannot read fails the document, naming the path and why."""
    with pytest.raises(CatalogDocumentError) as caught:
        derive_catalog(_broken(change))
    assert NEW_PATH in caught.value.cause


def test_a_ref_cycle_ends_at_the_depth_cap() -> None:
    """A schema referring to itself is refused, not expanded forever."""
    doc = document(operation())
    doc["components"] = {"schemas": {"Loop": {"type": "object", "properties": {}}}}
    doc["components"]["schemas"]["Loop"]["properties"]["again"] = {
        "$ref": "#/components/schemas/Loop"
    }
    _schema(doc["paths"][NEW_PATH]["post"])["properties"]["loop"] = {
        "$ref": "#/components/schemas/Loop"
    }
    with pytest.raises(CatalogDocumentError, match="nest too deep"):
        derive_catalog(doc)


@pytest.mark.parametrize(
    ("raw", "cause"),
    [
        pytest.param(b"<html>Bad gateway</html>", "not JSON", id="html"),
        pytest.param(b"[1, 2]", "not a JSON object", id="array"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "nests deeper", id="deep-for-the-parser"),
        pytest.param(
            json.dumps({"paths": {}, "x": json.loads("[" * 70 + "]" * 70)}).encode(),
            "nests deeper",
            id="deeper-than-the-cap",
        ),
        pytest.param(b"{" + b" " * 2_000 + b"}", "more than 1000 bytes", id="huge"),
    ],
)
def test_read_document_refuses_what_it_cannot_hold(raw: bytes, cause: str) -> None:
    """Not JSON, not an object, too deep or too big: refused with the cause."""
    with pytest.raises(CatalogDocumentError, match=cause):
        read_document(raw, max_bytes=1000 if cause.startswith("more") else 10_000_000)


def test_a_document_without_generation_paths_is_refused() -> None:
    """A document with no POST /generate operation (an error page in JSON) is not a catalog."""
    with pytest.raises(CatalogDocumentError, match="no POST /generate"):
        derive_catalog({"paths": {"/jobs": {"get": {}}}})


# -- fetching within bounds -------------------------------------------------------------------


class FakeClock:
    """A monotonic clock that only moves when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_slow_drip_is_abandoned_at_the_deadline() -> None:
    """A server sending a byte now and then is cut off once the deadline passes."""
    clock = FakeClock()
    sent: list[int] = []

    def drip() -> Iterator[bytes]:
        while True:
            clock.now += 1.0  # each chunk takes a second
            sent.append(1)
            yield b" "

    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=drip()))
    with pytest.raises(CatalogDocumentError, match="took longer than 5 s"):
        fetch_openapi(TEST_BASE_URL, deadline=5.0, transport=transport, clock=clock)
    assert len(sent) <= 6


def test_a_stream_past_the_byte_cap_is_abandoned() -> None:
    """A body without Content-Length that never ends is cut off at the byte cap."""
    sent: list[int] = []

    def endless() -> Iterator[bytes]:
        while True:
            sent.append(1)
            yield b" " * 1024

    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=endless()))
    with pytest.raises(CatalogDocumentError, match="more than 10240 bytes"):
        fetch_openapi(TEST_BASE_URL, max_bytes=10 * 1024, transport=transport)
    assert len(sent) <= 11


def test_a_declared_huge_body_is_refused_before_reading() -> None:
    """A Content-Length above the cap is refused from the headers."""
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, headers={"content-length": "999999999"}, content=b"{}")
    )
    with pytest.raises(CatalogDocumentError, match="more than"):
        fetch_openapi(TEST_BASE_URL, transport=transport)


@pytest.mark.parametrize(
    ("answer", "cause"),
    [
        pytest.param(httpx.ConnectError("refused"), "failed: refused", id="unreachable"),
        pytest.param(httpx.InvalidURL("bad host"), "failed: bad host", id="invalid-url"),
        pytest.param(OSError("no route"), "failed: no route", id="os-error"),
        pytest.param(httpx.ReadTimeout("slow"), "took longer than", id="read-timeout"),
        pytest.param(httpx.Response(503), "answered 503", id="5xx"),
        pytest.param(httpx.Response(404), "answered 404", id="404"),
    ],
)
def test_fetch_failures_name_their_cause(answer: Any, cause: str) -> None:
    """Unreachable, too slow or a status other than 200: the cause is in the error."""

    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(answer, Exception):
            raise answer
        return copy.copy(answer)

    with pytest.raises(CatalogDocumentError, match=cause):
        fetch_openapi(TEST_BASE_URL, transport=httpx.MockTransport(handler))


def test_a_conditional_request_sends_the_etag_and_reads_304() -> None:
    """With an ETag the request says If-None-Match, and a 304 is 'not modified', no body."""
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("if-none-match"))
        assert "authorization" not in request.headers  # the document is public: no token
        return httpx.Response(304, headers={"etag": '"abc"'})

    fetched = fetch_openapi(TEST_BASE_URL, etag='"abc"', transport=httpx.MockTransport(handler))
    assert fetched.not_modified and seen == ['"abc"']
