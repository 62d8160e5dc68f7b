"""Storage over fsspec: the same calls for local paths and URLs (s3://, gs://, memory://, ...)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import posixpath
import re
import uuid
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import fsspec
from fsspec.asyn import AsyncFileSystem
from fsspec.core import url_to_fs

from .settings import get_settings

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})

try:  # botocore's connection errors are not OSErrors; the callers' retry rules are written for OSError
    from botocore.exceptions import ConnectionError as _BotoConnectionError, HTTPClientError as _BotoHTTPClientError
    _TRANSPORT_ERRORS: tuple[type[Exception], ...] = (_BotoConnectionError, _BotoHTTPClientError)
except ImportError:
    _TRANSPORT_ERRORS = ()

# Object stores publish an object only when its upload completes, so a direct put is already atomic.
_ATOMIC_PUT_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "memory"}


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for a URL or local path, and the path inside it."""
    return url_to_fs(str(url), **get_settings().fsspec_options(str(url)))


@contextlib.contextmanager
def _unreachable_as_oserror(url: str):
    """An endpoint that does not answer is storage trouble (ConnectionError, an OSError), to be
    retried, whatever client library raised it; never mistaken for a bad input."""
    try:
        yield
    except _TRANSPORT_ERRORS as error:
        raise ConnectionError(f"{url}: storage not reachable ({type(error).__name__}: {error})") from error


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    protocol = fs.protocol
    return {protocol} if isinstance(protocol, str) else set(protocol)


def is_local(url: str) -> bool:
    return "file" in _protocols(filesystem(url)[0])


def absolute(url: str) -> str:
    """A URL as is, a local path made absolute (workers may run in another directory)."""
    return url if "://" in str(url) else str(Path(url).resolve())


def join(url: str, *parts: str) -> str:
    url = str(url)
    if "://" in url:
        return posixpath.join(url.rstrip("/"), *parts)
    return str(Path(url).joinpath(*parts))


def list_images(url: str) -> list[str]:
    """Keys (relative POSIX paths) of the image files under url, recursively, sorted.

    A url that names a single image gives that image's file name.
    """
    return sorted(stamped_images(url))


def stamped_images(url: str, skip: Collection[str] = ()) -> dict[str, str]:
    """The image keys under url (as list_images) with a stamp of each file's version, from the listing
    alone: its size and modification time, or its ETag where the store gives one (S3). A file whose
    stamp is unchanged has not been written since. skip: folders directly under url not to list."""
    return image_listing(url, skip).stamps


class Listing(NamedTuple):
    single_file: bool  # url names a file, not a folder or prefix
    stamps: dict[str, str]  # stamped_images(url, skip)
    others: list[str]  # keys of the files whose names are not an image's: left alone, and said so


def image_listing(url: str, skip: Collection[str] = ()) -> Listing:
    with _unreachable_as_oserror(url):
        return _image_listing(url, frozenset(skip))


def _stamp(info: dict) -> str:
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return f"{info.get('size')}:{str(etag).strip(chr(34))}"
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created")
    return f"{info.get('size')}:{mtime.timestamp() if hasattr(mtime, 'timestamp') else mtime}"


def _image_listing(url: str, skip: frozenset[str]) -> Listing:
    fs, root = filesystem(url)
    root = root.rstrip("/")
    # One listing answers it all: a folder's files, or the file itself. Asking first whether the path
    # exists and is a file costs a request each; on object storage, listings of their own.
    found = _find(fs, root, skip)
    if root in found:  # a file
        if not _is_image(root):
            return Listing(True, {}, [posixpath.basename(root)])
        info = found[root] or fs.info(root)  # a local file's find names it without its details
        return Listing(True, {posixpath.basename(root): _stamp(info)}, [])
    if not found and not fs.exists(root):
        raise FileNotFoundError(f"{url}: no such file, folder or prefix")
    stamps, others = {}, []
    for path, info in found.items():
        key = posixpath.relpath(path, root)
        # Hidden files are not photos; a key that climbs out ("..") is kept, to be refused with its reason.
        if any(part.startswith(".") and part != ".." for part in key.split("/")):
            continue
        if _is_image(key):
            stamps[key] = _stamp(info)
        else:
            others.append(key)
    return Listing(False, stamps, others)


def _find(fs: fsspec.AbstractFileSystem, root: str, skip: frozenset[str]) -> dict[str, dict]:
    """fs.find(root, detail=True) without the folders named in skip directly under root. An object
    store lists a prefix in pages of 1,000 keys, each asked for when the one before has come: there,
    the root's own level is listed first (its files and subfolders), then each subfolder by a request
    stream of its own, side by side."""
    asynchronous = isinstance(fs, AsyncFileSystem)
    if not asynchronous and not skip:
        return fs.find(root, detail=True)
    if asynchronous:
        fs.invalidate_cache(root)  # the level listing is cached by the filesystem; files may have come since
    try:
        level = fs.ls(root, detail=True)
    except FileNotFoundError:
        return {}
    found = {entry["name"]: entry for entry in level if entry["type"] != "directory"}
    folders = [entry["name"] for entry in level
               if entry["type"] == "directory" and posixpath.basename(entry["name"].rstrip("/")) not in skip]
    if folders:
        with ThreadPoolExecutor(min(16, len(folders))) as pool:
            for part in pool.map(lambda folder: fs.find(folder, detail=True), folders):
                found.update(part)
    return found


def suffix(key: str) -> str:
    return posixpath.splitext(key)[1].lower()


def _is_image(key: str) -> bool:
    return suffix(key) in IMAGE_SUFFIXES


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    with _unreachable_as_oserror(url):
        return fs.cat_file(path)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    with _unreachable_as_oserror(url):
        return fs.exists(path)


def write_bytes_atomic(url: str, data: bytes, durable: bool = True) -> None:
    """Write data so that url holds either its old content or all of data, never a part of it.
    durable=False leaves a local file's data to the system's write-back, as cp does: call flush()
    before recording that the file was written."""
    with _unreachable_as_oserror(url):
        _write_bytes_atomic(url, data, durable)


def _write_bytes_atomic(url: str, data: bytes, durable: bool) -> None:
    fs, path = filesystem(url)
    if "file" in _protocols(fs):
        _write_local_atomic(Path(path), data, durable)
    elif _protocols(fs) & _ATOMIC_PUT_PROTOCOLS:
        fs.pipe_file(path, data)
    else:
        temporary = f"{path}.tmp-{uuid.uuid4().hex}"
        fs.pipe_file(temporary, data)
        fs.mv(temporary, path)


TEMPORARY = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")  # the name of a local write in progress


def remove_leftovers(url: str, folders: set[str] = frozenset({""})) -> int:
    """Remove the temporary files that local writes killed midway left in url's folders (relative
    paths; "" is url itself); the number removed. Call it when no write into them is under way:
    object stores publish whole objects, so there is nothing to remove there."""
    if not is_local(url):
        return 0
    root = Path(filesystem(url)[1])
    removed = 0
    for folder in folders:
        for leftover in (root / folder).glob(".*.tmp"):
            if TEMPORARY.fullmatch(leftover.name):
                leftover.unlink(missing_ok=True)
                removed += 1
    return removed


def _write_local_atomic(path: Path, data: bytes, durable: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created as cp creates files: mode 0666 less the umask (0644 under the usual 022), not
    # mkstemp's 0600, which would hide the outputs from everyone else on a shared archive volume.
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def flush(url: str) -> None:
    """Make what was written under a local url durable: one syncfs of its filesystem on Linux, os.sync
    elsewhere. A fsync per file costs a journal commit each: 6000 small files took 3.1-4.1 s with
    one each, 0.7-1.3 s without and 0.15 s for one syncfs after them (ext4). Object stores have
    nothing to flush."""
    fs, path = filesystem(url)
    if "file" not in _protocols(fs):
        return
    if _syncfs is None:
        os.sync()
        return
    folder = os.open(path, os.O_RDONLY)
    try:
        if _syncfs(folder) != 0:  # a write-back error: what was written may be lost
            error = ctypes.get_errno()
            raise OSError(error, f"flushing {url}: {os.strerror(error)}")
    finally:
        os.close(folder)


def _libc_syncfs():
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # not Linux
        return None


_syncfs = _libc_syncfs()
