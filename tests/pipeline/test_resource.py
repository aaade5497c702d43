"""KreaResource: the token stays out of reprs, run config, the event log and failure messages."""

import dagster as dg
import pytest
from dagster._serdes import serialize_value

from krea_dagster import KreaResource
from krea_dagster.api import DEFAULT_BASE_URL

from .conftest import materialize, prompt_rows, write_batch

SECRET = "tok-9f8e7d6c5b4a"


def test_repr_and_str_leave_the_token_out():
    """Printing the resource (or a list holding it) never shows the token."""
    resource = KreaResource(api_key=f"11111111-2222-4333-8444-555555555555:{SECRET}")
    assert (
        SECRET not in repr(resource)
        and SECRET not in str(resource)
        and SECRET not in repr([resource])
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("poll_interval", 0.0),
        ("max_concurrent_submits", -1),
        ("submit_lanes", 0),
        ("submit_lanes", 17),
    ],
)
def test_settings_out_of_range_are_rejected_with_the_field_name(field, value):
    """A setting out of its range fails at definition time, naming the field."""
    with pytest.raises(ValueError, match=field):
        KreaResource(api_key="a:b", **{field: value})


def test_token_from_envvar_never_reaches_the_event_log(
    build, emulator, instance, prompts_dir, monkeypatch
):
    """With dg.EnvVar, a whole run's events and run config hold the variable name, never its value."""
    token = emulator.add_account(token=f"22222222-3333-4444-8555-666666666666:{SECRET}")["token"]
    monkeypatch.setenv("KREA_API_KEY", token)
    write_batch(prompts_dir, "b1", prompt_rows(2))
    assets = build()
    krea = KreaResource(
        api_key=dg.EnvVar("KREA_API_KEY"), base_url=emulator.base_url, poll_interval=0.05
    )
    result = materialize(assets, "b1", instance=instance, krea=krea)
    assert result.success
    records = instance.get_records_for_run(result.run_id).records
    dumped = "".join(serialize_value(record.event_log_entry) for record in records)
    dumped += serialize_value(instance.get_run_by_id(result.run_id))
    assert len(records) > 20  # a whole run was logged: steps, outputs, materializations
    assert SECRET not in dumped


def test_authentication_failure_message_names_the_fix_not_the_token(
    build, emulator, instance, prompts_dir
):
    """A wrong token fails the jobs step with a message about the token's shape, without echoing it."""
    write_batch(prompts_dir, "b1", prompt_rows(1))
    assets = build()
    krea = KreaResource(
        api_key=f"33333333-4444-4555-8666-777777777777:{SECRET}", base_url=emulator.base_url
    )
    result = materialize(assets, "b1", instance=instance, krea=krea)
    assert not result.success
    description = result.get_step_failure_events()[
        0
    ].step_failure_data.user_failure_data.description
    assert "401" in description and "id:secret" in description
    assert SECRET not in description
    events = "".join(
        serialize_value(r.event_log_entry)
        for r in instance.get_records_for_run(result.run_id).records
    )
    assert SECRET not in events


def test_default_resource_calls_the_backend_named_by_krea_base_url(
    build, emulator, instance, prompts_dir, monkeypatch
):
    """KreaResource() with KREA_BASE_URL and KREA_API_KEY set sends the batch there, not to Krea."""
    monkeypatch.setenv("KREA_BASE_URL", emulator.base_url)
    monkeypatch.setenv("KREA_API_KEY", emulator.token)
    write_batch(prompts_dir, "b1", prompt_rows(2))
    krea = KreaResource(poll_interval=0.05)
    assert repr(krea) == f"KreaResource(base_url={emulator.base_url!r})"
    result = materialize(build(), "b1", instance=instance, krea=krea)
    assert result.success
    assert emulator.stats()["jobs_created"] == 2


def test_explicit_base_url_wins_over_krea_base_url(monkeypatch):
    """base_url passed to the resource is used even when KREA_BASE_URL names another backend."""
    monkeypatch.setenv("KREA_BASE_URL", "http://127.0.0.1:9")
    assert KreaResource(base_url="http://127.0.0.1:8").effective_base_url == "http://127.0.0.1:8"
    monkeypatch.delenv("KREA_BASE_URL")
    assert KreaResource().effective_base_url == DEFAULT_BASE_URL
