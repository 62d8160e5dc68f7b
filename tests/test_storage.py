"""Storage helpers over fsspec, on local disk and on a real S3 endpoint (moto's server)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from oldphoto import storage
from oldphoto.images import UnreadableImage, decode_rgb


def _populate(root: str) -> None:
    for key in ["a.jpg", "b.PNG", "notes.txt", "sub/c.tif", "sub/deep er/ü.jpeg", ".hidden/x.jpg"]:
        storage.write_bytes_atomic(storage.join(root, key), b"x")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_list_images_recursively(where, tmp_path, request):
    root = str(tmp_path) if where == "local" else request.getfixturevalue("bucket") + "/photos"
    _populate(root)
    assert storage.list_images(root) == ["a.jpg", "b.PNG", "sub/c.tif", "sub/deep er/ü.jpeg"]
    assert storage.list_images(storage.join(root, "a.jpg")) == ["a.jpg"]
    # A file names itself, with the stamp its folder's listing gives it: from one listing either way.
    single, stamps, _ = storage.image_listing(storage.join(root, "sub/c.tif"))
    assert single and stamps == {"c.tif": storage.stamped_images(root)["sub/c.tif"]} and stamps["c.tif"].startswith("1:")
    assert storage.image_listing(storage.join(root, "notes.txt")) == (True, {}, ["notes.txt"])
    assert storage.image_listing(root)[0] is False
    assert storage.image_listing(root).others == ["notes.txt"], "other files are named, hidden ones are not"
    storage.write_bytes_atomic(storage.join(root, "sub2/d.jpg"), b"x")
    storage.write_bytes_atomic(storage.join(root, "e.jpg"), b"x")
    assert storage.list_images(root) == ["a.jpg", "b.PNG", "e.jpg", "sub/c.tif", "sub/deep er/ü.jpeg", "sub2/d.jpg"], \
        "a second listing sees what came since"
    with pytest.raises(FileNotFoundError, match="missing"):
        storage.list_images(storage.join(root, "missing"))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_listing_leaves_out_the_folders_it_is_told_to_skip(where, tmp_path, request):
    root = str(tmp_path) if where == "local" else request.getfixturevalue("bucket") + "/restored"
    for key in ["a.jpg", "sub/b.jpg", "_report/thumbs/t.jpg", "_manifest/m.png", "sub/_report/c.jpg"]:
        storage.write_bytes_atomic(storage.join(root, key), b"x")
    assert sorted(storage.stamped_images(root, skip={"_report", "_manifest"})) == ["a.jpg", "sub/_report/c.jpg", "sub/b.jpg"]
    assert len(storage.stamped_images(root)) == 5
    assert storage.image_listing(storage.join(root, "a.jpg"), skip={"_report"})[0] is True
    with pytest.raises(FileNotFoundError, match="missing"):
        storage.stamped_images(storage.join(root, "missing"), skip={"_report"})


def test_list_images_of_a_missing_place_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        storage.list_images(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert storage.image_listing(str(tmp_path / "empty")) == (False, {}, [])


@pytest.mark.parametrize("where", ["local", "s3"])
def test_write_then_read(where, tmp_path, request):
    root = str(tmp_path) if where == "local" else request.getfixturevalue("bucket")
    url = storage.join(root, "x/y.bin")
    storage.write_bytes_atomic(url, b"first")
    storage.write_bytes_atomic(url, b"second")
    assert storage.read_bytes(url) == b"second" and storage.exists(url)


def test_local_write_is_atomic_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    storage.write_bytes_atomic(str(target), b"old")

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr("os.replace", broken_replace)
    with pytest.raises(OSError):
        storage.write_bytes_atomic(str(target), b"new content")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_get_the_mode_the_umask_gives_as_cp_would(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        storage.write_bytes_atomic(str(tmp_path / "new.jpg"), b"photo")
        (tmp_path / "old.jpg").write_bytes(b"before")
        storage.write_bytes_atomic(str(tmp_path / "old.jpg"), b"replaced")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "new.jpg").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "old.jpg").stat().st_mode) == mode


def test_settings_reach_s3(bucket, s3_endpoint):
    fs, _ = storage.filesystem(bucket)
    assert fs.client_kwargs["endpoint_url"] == s3_endpoint


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"this is text, not a picture", "cannot decode"),
    ((Path(__file__).parents[1] / "oldphoto/samples/coffee.jpg").read_bytes()[:5000], "cannot decode"),
])
def test_unreadable_images_name_the_key_and_reason(data, reason):
    with pytest.raises(UnreadableImage, match=f"bad/key.jpg: {reason}"):
        decode_rgb(data, "bad/key.jpg")


@pytest.mark.parametrize("shape", [(40, 56, 3), (40, 56)])
def test_png_round_trip_is_lossless(shape):
    from oldphoto.images import decode_png, encode_png

    image = (np.random.default_rng(0).random(shape) * 255).astype(np.uint8)
    data = encode_png(image)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and encode_png(image) == data
    np.testing.assert_array_equal(decode_png(data), image)


def test_keep_freed_memory_applies_on_glibc():
    import platform

    from oldphoto.runtime import keep_freed_memory

    expected = platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is expected and keep_freed_memory() is expected


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="the OS does not report CPU affinity")
def test_usable_cores_follow_the_process_affinity():
    from oldphoto.runtime import usable_cores

    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})  # as `taskset -c N` would
        assert usable_cores() == 1
    finally:
        os.sched_setaffinity(0, allowed)
    assert usable_cores() == len(allowed)


def test_writes_left_to_write_back_are_whole_and_a_flush_makes_them_durable_at_once(tmp_path, bucket):
    for i in range(3):
        storage.write_bytes_atomic(str(tmp_path / f"{i}.png"), b"photo %d" % i, durable=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png", "1.png", "2.png"], "no temporaries left"
    assert (tmp_path / "2.png").read_bytes() == b"photo 2"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "2.png").stat().st_mode) == 0o666 & ~umask, "the mode cp gives"
    storage.flush(str(tmp_path))
    storage.flush(bucket)  # an object store has nothing to flush
    if sys.platform == "linux":
        assert storage._syncfs is not None, "one syncfs of the filesystem, not os.sync of them all"
        with pytest.raises(FileNotFoundError, match="missing"):
            storage.flush(str(tmp_path / "missing"))
