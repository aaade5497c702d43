"""Discovery reads a prompt file only when its cheap fingerprint (size + mtime, or ETag) moves."""

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest
from upath import UPath

import krea_dagster.engine.source as source_module
from krea_dagster import build_krea_sensors
from krea_dagster.engine.source import FileScan, PromptSource, remote_fingerprint
from krea_dagster.sensors import DiscoveryCursor

from .conftest import prompt_rows, write_batch

HOUR = 3600 * 10**9


@pytest.fixture
def persistent_instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the prompt files the source opens, in order (a wrapper on its read function)."""
    opened: list[str] = []
    real = source_module.read_table

    def counting(file):
        opened.append(Path(str(file)).name)
        return real(file)

    monkeypatch.setattr(source_module, "read_table", counting)
    return opened


def age(path: Path, nanoseconds_ago: int) -> None:
    """Set a file's mtime into the past (a file just written is re-read until it settles)."""
    stamp = time.time_ns() - nanoseconds_ago
    os.utime(path, ns=(stamp, stamp))


def discovery(build, krea):
    assets = build()
    (sensor,) = build_krea_sensors(assets, completion=False)
    defs = dg.Definitions(assets=assets.assets, sensors=[sensor], resources={"krea": krea})
    return assets, sensor, defs


def tick(sensor, instance, defs, cursor=None):
    with dg.build_sensor_context(
        instance_ref=instance.get_ref(), definitions=defs, cursor=cursor, resources=defs.resources
    ) as context:
        result = sensor.evaluate_tick(context)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def test_an_unchanged_file_is_not_read_on_the_next_tick(
    build, krea, persistent_instance, prompts_dir, reads
):
    """The second tick over unchanged files opens none of them and launches nothing."""
    for name in ("alpha", "beta"):
        age(write_batch(prompts_dir, name, prompt_rows(3)), HOUR)
    _, sensor, defs = discovery(build, krea)
    first = tick(sensor, persistent_instance, defs)
    assert sorted(reads) == ["alpha.csv", "beta.csv"]
    assert [r.partition_key for r in first.run_requests] == ["alpha", "beta"]
    second = tick(sensor, persistent_instance, defs, first.cursor)
    third = tick(sensor, persistent_instance, defs, second.cursor)
    assert sorted(reads) == ["alpha.csv", "beta.csv"]  # still only the first tick's reads
    assert second.run_requests == [] and third.run_requests == []
    assert "no new or changed" in third.skip_message


def test_a_touched_file_with_the_same_rows_is_read_once_and_launches_nothing(
    build, krea, persistent_instance, prompts_dir, reads
):
    """A new mtime with the same content costs one read, no run; then it is cached again."""
    alpha = write_batch(prompts_dir, "alpha", prompt_rows(3))
    age(alpha, 2 * HOUR)
    _, sensor, defs = discovery(build, krea)
    first = tick(sensor, persistent_instance, defs)
    age(alpha, HOUR)  # touched: new fingerprint, same bytes
    second = tick(sensor, persistent_instance, defs, first.cursor)
    assert reads == ["alpha.csv", "alpha.csv"]
    assert second.run_requests == []
    assert json.loads(second.cursor)["hashes"] == json.loads(first.cursor)["hashes"]
    third = tick(sensor, persistent_instance, defs, second.cursor)
    assert reads == ["alpha.csv", "alpha.csv"] and third.run_requests == []


def test_a_changed_file_runs_its_batch_and_a_gone_file_leaves_the_cursor(
    build, krea, persistent_instance, prompts_dir, reads
):
    """Changed rows (new size and mtime) are read and run under a new key; a removed file's entry is dropped."""
    alpha = write_batch(prompts_dir, "alpha", prompt_rows(2))
    beta = write_batch(prompts_dir, "beta", prompt_rows(2))
    for path in (alpha, beta):
        age(path, 2 * HOUR)
    _, sensor, defs = discovery(build, krea)
    first = tick(sensor, persistent_instance, defs)
    age(write_batch(prompts_dir, "alpha", prompt_rows(5)), HOUR)
    beta.unlink()
    second = tick(sensor, persistent_instance, defs, first.cursor)
    assert reads == ["alpha.csv", "beta.csv", "alpha.csv"]
    (request,) = second.run_requests
    assert request.partition_key == "alpha"
    assert request.run_key != first.run_requests[0].run_key
    assert set(json.loads(second.cursor)["files"]) == {"alpha.csv"}


def test_a_cursor_from_before_fingerprints_still_parses_and_launches_nothing_new(
    build, krea, persistent_instance, prompts_dir, reads
):
    """An old cursor (hashes only) reads every file once, matches the hashes, and runs nothing."""
    age(write_batch(prompts_dir, "alpha", prompt_rows(2)), HOUR)
    _, sensor, defs = discovery(build, krea)
    first = tick(sensor, persistent_instance, defs)
    old_format = json.dumps({"version": 1, "hashes": json.loads(first.cursor)["hashes"]})
    assert DiscoveryCursor.parse(old_format).files == {}
    second = tick(sensor, persistent_instance, defs, old_format)
    assert second.run_requests == []
    assert reads == ["alpha.csv", "alpha.csv"]
    third = tick(sensor, persistent_instance, defs, second.cursor)
    assert reads == ["alpha.csv", "alpha.csv"] and third.run_requests == []


def test_a_file_modified_just_now_is_read_again_until_its_mtime_settles(tmp_path, reads):
    """A file written within RACY_SECONDS gets no fingerprint, so a same-size rewrite cannot hide."""
    path = write_batch(tmp_path, "fresh", prompt_rows(2))
    source = PromptSource(tmp_path)
    first = source.scan_files()
    assert first["fresh.csv"].fingerprint is None
    source.scan_files(first)
    assert reads == ["fresh.csv", "fresh.csv"]
    age(path, HOUR)
    settled = source.scan_files(source.scan_files(first))
    assert settled["fresh.csv"].fingerprint is not None
    assert reads == ["fresh.csv"] * 3


def test_an_unusable_file_is_reported_every_tick_but_read_once(tmp_path, reads):
    """A broken file's problem is kept with its fingerprint: reported again without reopening it."""
    broken = tmp_path / "latin.csv"
    broken.write_bytes("prompt\ncaf\xe9\n".encode("latin-1"))
    age(broken, HOUR)
    source = PromptSource(tmp_path)
    first = source.scan_files()
    again = source.scan_files(first)
    assert reads == ["latin.csv"]
    _, problems = source.batches_from(again)
    assert [p.file for p in problems] == ["latin.csv"] and "UTF-8" in problems[0].message


def test_object_store_fingerprints_prefer_the_etag_and_distrust_fresh_mtimes():
    """An ETag (S3) fingerprints a file at once; a bare mtime only once it is RACY_SECONDS old."""
    s3 = {"name": "b/p/a.csv", "size": 10, "ETag": '"abc"', "LastModified": time.time()}
    assert remote_fingerprint(s3) == "10:etag:abc"
    assert remote_fingerprint({**s3, "ETag": '"abd"'}) != remote_fingerprint(s3)
    assert remote_fingerprint({"size": 10, "mtime": time.time()}) is None
    old = time.time() - 60
    assert remote_fingerprint({"size": 10, "mtime": old}) == f"10:mtime:{old!r}"
    assert remote_fingerprint({"size": 10}) is None


def test_a_remote_source_reads_only_files_whose_store_metadata_moved(monkeypatch, reads):
    """Through fsspec (memory://), the listing's metadata decides; only the rewritten file is read again."""
    monkeypatch.setattr(source_module, "RACY_SECONDS", 0.0)
    root = UPath(f"memory:///fingerprint-{time.time_ns()}")
    root.mkdir(parents=True)
    (root / "a.csv").write_text("prompt\none\n")
    (root / "b.csv").write_text("prompt\ntwo\n")
    source = PromptSource(str(root))
    first = source.scan_files()
    assert {name: scan.fingerprint is not None for name, scan in first.items()} == {
        "a.csv": True,
        "b.csv": True,
    }
    second = source.scan_files(first)
    assert sorted(reads) == ["a.csv", "b.csv"] and second == first
    time.sleep(0.01)
    (root / "b.csv").write_text("prompt\ntwo\nthree\n")
    third = source.scan_files(second)
    assert sorted(reads) == ["a.csv", "b.csv", "b.csv"]
    batches, _ = source.batches_from(third)
    assert batches["b"].rows == 2 and batches["a"].rows == 1


def test_file_scans_round_trip_and_bad_entries_are_read_again():
    """A FileScan survives the cursor's JSON; an entry of the wrong shape parses to None."""
    scan = FileScan("10:123", (("a", "d" * 64, 3),), ("a problem",))
    assert FileScan.from_json(json.loads(json.dumps(scan.to_json()))) == scan
    assert FileScan.from_json({"fingerprint": 5, "parts": [], "problems": []}) is None
    assert FileScan.from_json("garbage") is None
    cursor = DiscoveryCursor(files={"a.csv": scan.to_json(), "b.csv": {"parts": 1}})
    assert DiscoveryCursor.parse(cursor.serialize()).file_scans() == {"a.csv": scan}


@pytest.mark.system
def test_an_s3_source_is_fingerprinted_by_etag_and_sees_new_objects(s3_prefix, use_s3_env, reads):
    """On S3 (moto), the listing's ETags decide: unchanged objects are not read, a rewritten or new one is."""
    s3fs = pytest.importorskip("s3fs")
    s3_path = UPath(s3_prefix)
    (s3_path / "a.csv").write_text("prompt\none\n")
    (s3_path / "b.csv").write_text("prompt\ntwo\n")
    source = PromptSource(s3_prefix)
    first = source.scan_files()
    assert all(":etag:" in (scan.fingerprint or "") for scan in first.values())
    second = source.scan_files(first)
    assert sorted(reads) == ["a.csv", "b.csv"] and second == first
    # Another writer (its own filesystem object): the source's listing cache must not hide it.
    other = s3fs.S3FileSystem(skip_instance_cache=True)
    other.pipe(f"{s3_path.path}/b.csv", b"prompt\nthree\n")  # same size, new ETag
    other.pipe(f"{s3_path.path}/c.csv", b"prompt\nfour\n")
    third = source.scan_files(second)
    assert sorted(reads) == ["a.csv", "b.csv", "b.csv", "c.csv"]
    assert set(third) == {"a.csv", "b.csv", "c.csv"}
    assert third["b.csv"].parts != first["b.csv"].parts
