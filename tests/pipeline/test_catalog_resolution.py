"""Which catalog ``catalog_for`` chooses, how it caches in the ledger, and how bad documents fall back."""

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from krea_dagster.api.catalog_source import DEFAULT_MAX_OPENAPI_BYTES, document_sha256
from krea_dagster.emulator.catalog import openapi_document
from krea_dagster.engine import catalogs
from krea_dagster.engine.catalogs import CatalogSettings, catalog_changes, catalog_for
from krea_dagster.engine.ledger import Ledger
from krea_dagster.engine.ledger.schema import catalogs_table

TEST_BASE_URL = "http://krea.test"
NEW_PATH = "/generate/image/krea/krea-3"


def extended_bytes() -> bytes:
    """Krea's document with one more model (a copy of flux-1-dev's operation at a new path)."""
    document = openapi_document()
    document["paths"][NEW_PATH] = document["paths"]["/generate/image/bfl/flux-1-dev"]
    return json.dumps(document).encode()


class Backend:
    """A MockTransport answering /openapi.json from ``answer``; it counts and records requests."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)


def serving(body: bytes, etag: str = '"v1"') -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers.get("if-none-match") == etag:
            return httpx.Response(304, headers={"etag": etag})
        return httpx.Response(200, content=body, headers={"etag": etag})

    return answer


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")


def settings(**changes: Any) -> CatalogSettings:
    return CatalogSettings(base_url=TEST_BASE_URL, **changes)


def test_a_fresh_copy_is_used_without_asking_the_backend(ledger: Ledger) -> None:
    """The first resolution fetches and caches; the next ones, while fresh, ask nothing."""
    body = extended_bytes()
    backend = Backend(serving(body))
    first = catalog_for(settings(), ledger, transport=backend.transport)
    again = catalog_for(settings(), ledger, transport=backend.transport)
    assert len(backend.requests) == 1
    for models in (first, again):
        assert models.origin.is_live and models.origin.fingerprint == document_sha256(body)
        assert models.has("krea/krea-3")


def test_refresh_asks_even_when_fresh(ledger: Ledger) -> None:
    """refresh=True (``krea-dagster catalog --refresh``) sends a conditional request at once."""
    backend = Backend(serving(extended_bytes()))
    catalog_for(settings(), ledger, transport=backend.transport)
    catalog_for(settings(), ledger, refresh=True, transport=backend.transport)
    assert [r.headers.get("if-none-match") for r in backend.requests] == [None, '"v1"']


def test_the_same_bytes_under_a_new_etag_are_not_derived_again(ledger: Ledger) -> None:
    """A 200 with the document already cached keeps the cached derivation and stores the ETag."""
    body = extended_bytes()
    backend = Backend(serving(body, etag='"v1"'))
    catalog_for(settings(max_age=0), ledger, transport=backend.transport)
    derived = len(catalogs.timings["derive"])
    backend.answer = serving(body, etag='"v2"')
    models = catalog_for(settings(max_age=0), ledger, transport=backend.transport)
    assert len(catalogs.timings["derive"]) == derived
    assert models.origin.fingerprint == document_sha256(body)
    with ledger.engine.connect() as conn:
        assert conn.execute(catalogs_table.select()).mappings().one()["etag"] == '"v2"'


def test_a_copy_of_another_derivation_is_fetched_whole(ledger: Ledger) -> None:
    """A cached catalog derived by another version of the code is not trusted: no If-None-Match."""
    backend = Backend(serving(extended_bytes()))
    catalog_for(settings(), ledger, transport=backend.transport)
    with ledger.transaction() as conn:
        conn.execute(catalogs_table.update().values(derivation=0))
    catalog_for(settings(), ledger, refresh=True, transport=backend.transport)
    assert backend.requests[-1].headers.get("if-none-match") is None


def deep_document() -> bytes:
    return b'{"paths": ' + b"[" * 200 + b"]" * 200 + b"}"


def broken_schema() -> bytes:
    document = openapi_document()
    post = document["paths"]["/generate/image/bfl/flux-1-dev"]["post"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    schema["properties"]["width"]["minimum"] = "five hundred"
    return json.dumps(document).encode()


def raise_(error: Exception) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        raise error

    return answer


def endless(request: httpx.Request) -> httpx.Response:
    def body() -> Iterator[bytes]:
        while True:
            yield b" " * 65536

    return httpx.Response(200, content=body())


BAD_DOCUMENTS: dict[str, tuple[Callable[[httpx.Request], httpx.Response], str]] = {
    "unreachable": (raise_(httpx.ConnectError("connection refused")), "connection refused"),
    "slow": (raise_(httpx.ReadTimeout("timed out")), "took longer than"),
    "server-error": (lambda r: httpx.Response(502, text="bad gateway"), "answered 502"),
    "malformed": (lambda r: httpx.Response(200, content=b"<html>oops"), "not JSON"),
    "huge": (endless, f"more than {DEFAULT_MAX_OPENAPI_BYTES} bytes"),
    "deeply-nested": (lambda r: httpx.Response(200, content=deep_document()), "nests deeper"),
    "schema-does-not-compile": (
        lambda r: httpx.Response(200, content=broken_schema()),
        "/generate/image/bfl/flux-1-dev: width: 'minimum' is 'five hundred'",
    ),
}


@pytest.mark.parametrize(("answer", "cause"), BAD_DOCUMENTS.values(), ids=BAD_DOCUMENTS.keys())
def test_a_bad_document_falls_back_to_the_bundled_catalog_naming_the_cause(
    ledger: Ledger, answer: Callable[[httpx.Request], httpx.Response], cause: str
) -> None:
    """Unreachable, slow, malformed, huge, deep or uncompilable: the bundled catalog, the cause
    said once, and the failure cached so the next step does not ask again."""
    backend = Backend(answer)
    models = catalog_for(settings(), ledger, transport=backend.transport)
    assert models.origin.source == "bundled"
    assert models.origin.fallback is not None and cause in models.origin.fallback
    assert models.origin.fallback.count(cause) == 1
    assert models.has("bfl/flux-1-dev") and not models.has("krea/krea-3")
    again = catalog_for(settings(), ledger, transport=backend.transport)
    assert len(backend.requests) == 1
    assert again.origin.fallback == models.origin.fallback


def test_a_bad_document_falls_back_to_the_cached_copy(ledger: Ledger) -> None:
    """Once a document was read, a later bad one keeps the cached copy, saying why."""
    body = extended_bytes()
    backend = Backend(serving(body))
    catalog_for(settings(max_age=0), ledger, transport=backend.transport)
    backend.answer = lambda request: httpx.Response(200, content=b"not json")
    models = catalog_for(settings(max_age=0), ledger, transport=backend.transport)
    assert models.origin.is_live and models.has("krea/krea-3")
    assert models.origin.fingerprint == document_sha256(body)
    assert models.origin.fallback is not None
    assert "could not be refreshed (the document is not JSON" in models.origin.fallback


def test_the_live_catalog_off_is_the_bundled_one_without_a_request(ledger: Ledger) -> None:
    """live=False uses the bundled catalog, asks nothing and is no cause for a warning."""
    backend = Backend(serving(extended_bytes()))
    models = catalog_for(settings(live=False), ledger, transport=backend.transport)
    assert backend.requests == []
    assert (models.origin.source, models.origin.fallback, models.origin.live_off) == (
        "bundled",
        None,
        True,
    )


def test_changes_list_new_gone_and_repriced_models(ledger: Ledger) -> None:
    """catalog_changes says what the live document adds, drops and prices differently."""
    document = json.loads(extended_bytes())
    del document["paths"]["/generate/image/google/imagen-3"]
    backend = Backend(serving(json.dumps(document).encode()))
    changes = catalog_changes(catalog_for(settings(), ledger, transport=backend.transport))
    assert [spec.key for spec in changes.new] == ["image/krea/krea-3"]
    assert [spec.key for spec in changes.gone] == ["image/google/imagen-3"]
    assert changes.repriced == ()
