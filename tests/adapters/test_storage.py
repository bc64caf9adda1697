"""FsspecStorage: the same contract on a local directory and on S3 (moto's server, over HTTP)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from kernelagent.adapters.storage import STAGING, FsspecStorage, content_key
from kernelagent.errors import KernelAgentError, NotFound
from kernelagent.services.ports import Storage

pytest_plugins = ["backends"]

BAD_KEYS = [
    "",
    "/etc/passwd",
    "../escape",
    "a/../../escape",
    "a/..",
    "nul\0byte",
    "a//b",
    "./a",
    "a/.",
    "a/",
    f"{STAGING}/x",
]

ALL_BYTES = bytes(range(256)) * 4 + b"\r\n\x00\xff"


def _conforms(storage: FsspecStorage) -> Storage:
    return storage  # type-checked: FsspecStorage implements the port


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def storage_url(request, tmp_path) -> tuple[str, str | None]:
    """(url, endpoint_url) of an empty storage root on each backend."""
    if request.param == "local":
        return (tmp_path / "root").as_uri(), None
    s3 = request.getfixturevalue("moto_s3")
    return s3.url("some/prefix"), s3.endpoint_url


@pytest.fixture
def storage(storage_url) -> FsspecStorage:
    url, endpoint_url = storage_url
    return FsspecStorage(url, endpoint_url=endpoint_url)


async def test_put_get_exists(storage):
    assert not await storage.exists("sessions/s1/files/data.csv")
    await storage.put("sessions/s1/files/data.csv", b"a,b\n1,2\n")
    assert await storage.get("sessions/s1/files/data.csv") == b"a,b\n1,2\n"
    assert await storage.exists("sessions/s1/files/data.csv")
    assert not await storage.exists("sessions/s1/files")  # a directory is not a key
    assert not await storage.exists("sessions/s1/files/data")


async def test_binary_data_intact(storage):
    big = os.urandom(3 * 1024 * 1024 + 17)
    await storage.put("bin/all", ALL_BYTES)
    await storage.put("bin/big", big)
    await storage.put("bin/empty", b"")
    assert await storage.get("bin/all") == ALL_BYTES
    assert await storage.get("bin/big") == big
    assert await storage.get("bin/empty") == b""
    assert await storage.exists("bin/empty")


async def test_overwrite_replaces_the_bytes(storage):
    await storage.put("k", b"first, and longer than the second")
    await storage.put("k", b"second")
    assert await storage.get("k") == b"second"
    assert await storage.list("") == ["k"]


async def test_missing_key_is_not_found(storage):
    with pytest.raises(NotFound, match="nope"):
        await storage.get("nope")
    with pytest.raises(NotFound):
        await storage.get("deep/missing/key")
    await storage.put("dir/file", b"x")
    with pytest.raises(NotFound):
        await storage.get("dir/other")
    with pytest.raises(NotFound):
        await storage.get("dir")  # a directory is not a key
    with pytest.raises(NotFound):
        await storage.get("dir/file/below")


async def test_list_is_recursive_sorted_relative_and_by_directory(storage):
    keys = ["b/2", "a/x/y/z", "a/1", "ab/1", "a/x/0", "top"]
    for key in keys:
        await storage.put(key, key.encode())
    assert await storage.list("") == sorted(keys)
    assert await storage.list("a") == ["a/1", "a/x/0", "a/x/y/z"]  # not ab/1
    assert await storage.list("a/") == ["a/1", "a/x/0", "a/x/y/z"]
    assert await storage.list("a/x/y") == ["a/x/y/z"]
    assert await storage.list("top") == []  # a key is not a directory
    assert await storage.list("missing") == []
    assert await storage.list("a/missing") == []


async def test_delete_prefix(storage):
    for key in ["s/1/a", "s/1/b/c", "s/10/a", "s/2/a", "other"]:
        await storage.put(key, b"x")
    await storage.delete_prefix("s/1")
    assert await storage.list("") == ["other", "s/10/a", "s/2/a"]
    assert not await storage.exists("s/1/a")
    with pytest.raises(NotFound):
        await storage.get("s/1/b/c")
    await storage.delete_prefix("s/")
    assert await storage.list("") == ["other"]
    await storage.delete_prefix("nothing/here")  # no-op
    await storage.delete_prefix("other")  # a key is not a directory: kept
    assert await storage.list("") == ["other"]
    with pytest.raises(ValueError, match="whole storage"):
        await storage.delete_prefix("")
    assert await storage.list("") == ["other"]


async def test_bad_keys_are_refused_and_nothing_is_written(storage, tmp_path):
    for key in BAD_KEYS:
        with pytest.raises(ValueError):
            await storage.put(key, b"evil")
        with pytest.raises(ValueError):
            await storage.get(key)
        with pytest.raises(ValueError):
            await storage.exists(key)
    assert await storage.list("") == []
    # nothing landed beside the root (where ``..`` would have led), nor anywhere in tmp_path
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


async def test_bad_prefixes_are_refused(storage):
    await storage.put("a/b", b"kept")
    for prefix in ["/etc", "../", "a/../..", "x\0", "a//b", STAGING]:
        with pytest.raises(ValueError):
            await storage.list(prefix)
        with pytest.raises(ValueError):
            await storage.delete_prefix(prefix)
    assert await storage.get("a/b") == b"kept"
    assert await storage.list("") == ["a/b"]


async def test_another_instance_sees_writes_and_deletes_at_once(storage_url):
    """Two replicas on the same root: no listing cache hides the other's changes."""
    url, endpoint_url = storage_url
    one = FsspecStorage(url, endpoint_url=endpoint_url)
    two = FsspecStorage(url, endpoint_url=endpoint_url)
    assert await two.list("s") == []
    assert not await two.exists("s/k")
    await one.put("s/k", b"v1")
    assert await two.list("s") == ["s/k"]
    assert await two.exists("s/k")
    await two.put("s/k", b"v2")
    assert await one.get("s/k") == b"v2"
    await two.delete_prefix("s")
    assert await one.list("") == []
    assert not await one.exists("s/k")


async def test_concurrent_writes_of_one_key_are_never_torn(storage):
    values = [bytes([i]) * (256 * 1024) for i in range(8)]
    await asyncio.gather(*(storage.put("same", v) for v in values))
    assert await storage.get("same") in values
    assert await storage.list("") == ["same"]


def test_content_key():
    sha = hashlib.sha256(b"plot").hexdigest()
    assert content_key(sha) == f"artifacts/{sha[:2]}/{sha}"
    for bad in ["", "abc", sha.upper(), sha[:-1] + "g", "../" + sha[3:]]:
        with pytest.raises(ValueError):
            content_key(bad)


# local directory


@pytest.mark.parametrize("form", ["uri", "plain", "relative"])
async def test_local_root_is_created_from_any_path_form(tmp_path, monkeypatch, form):
    root = tmp_path / "new" / "root"
    monkeypatch.chdir(tmp_path)
    url = {"uri": root.as_uri(), "plain": str(root), "relative": "new/root"}[form]
    storage = FsspecStorage(url)
    assert root.is_dir()
    await storage.put("a/b.txt", b"hello")
    assert (root / "a" / "b.txt").read_bytes() == b"hello"


async def test_local_write_is_atomic(tmp_path, monkeypatch):
    """A write that fails before the rename leaves the old bytes and no temporary file."""
    root = tmp_path / "root"
    storage = FsspecStorage(str(root))
    await storage.put("k", b"old")

    def broken_replace(src, dst):
        assert Path(src).read_bytes() == b"new"  # fully written before it is renamed
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(KernelAgentError, match="disk on fire"):
        await storage.put("k", b"new")
    monkeypatch.undo()
    assert await storage.get("k") == b"old"
    assert list((root / STAGING).iterdir()) == []
    assert await storage.list("") == ["k"]


async def test_local_endpoint_url_is_refused(tmp_path):
    with pytest.raises(ValueError, match="endpoint_url"):
        FsspecStorage(str(tmp_path), endpoint_url="http://127.0.0.1:9000")


# S3


@pytest.mark.s3
async def test_s3_objects_live_under_the_prefix(moto_s3):
    import boto3

    storage = FsspecStorage(moto_s3.url("deploy/one"), endpoint_url=moto_s3.endpoint_url)
    await storage.put(content_key("ab" * 32), b"png")
    client = boto3.client("s3", endpoint_url=moto_s3.endpoint_url)
    try:
        listed = client.list_objects_v2(Bucket=moto_s3.bucket)
    finally:
        client.close()
    assert [o["Key"] for o in listed["Contents"]] == [f"deploy/one/artifacts/ab/{'ab' * 32}"]
    root = FsspecStorage(moto_s3.url(), endpoint_url=moto_s3.endpoint_url)
    assert await root.list("") == [f"deploy/one/artifacts/ab/{'ab' * 32}"]


@pytest.mark.s3
async def test_s3_missing_bucket_is_an_error_not_a_missing_key(moto_s3):
    storage = FsspecStorage("s3://no-such-bucket-here/x", endpoint_url=moto_s3.endpoint_url)
    with pytest.raises(KernelAgentError) as caught:
        await storage.put("k", b"v")
    assert not isinstance(caught.value, NotFound)
