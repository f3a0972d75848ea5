"""Atomic file writes: a temporary file beside the target, flushed to disk, then renamed over it.

Readers (a resumed run, the report, another process) see the old file or the new one, never
half of one; a process killed mid-write leaves the old file. When the disk is full, the file
is over a size limit or the folder is read-only, the temporary file is removed, the previous
version stays as it was, and the error names the file and says so:

    atomic.write_json(path, metrics)                  # JSON
    atomic.write_text(path, text)                     # text
    with atomic.replacing(path) as tmp:               # any writer that takes a path (h5py)
        h5py.File(tmp, "w") ...

(Pseudo-label shards and manifests, which may live on cloud storage, are written the same way
through `tf.io.gfile` in `rethink_tf.pseudo.records`.) This module is the lowest layer's, so
every layer can use it.
"""

import contextlib
import json
import os
import uuid


class WriteError(OSError):
    """A file could not be written; the previous version (if any) is unchanged."""


def temporary_path(path):
    """A unique temporary name beside `path` (same folder, so the rename is atomic)."""
    return f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def replacing(path, what="file"):
    """Yields a temporary path; when the block ends without error, renames it over `path`.

    Args:
      path: the file to (re)write; its folder is created if missing.
      what: a few words for the error message ("metrics", "config").

    Raises:
      WriteError: writing or renaming failed with an OSError (ENOSPC, EFBIG, EROFS, EACCES,
        ...): the temporary file is removed and `path` keeps its previous contents.
    """
    path = os.fspath(path)
    tmp = temporary_path(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as e:
        kept = ("its previous version is unchanged" if os.path.exists(path)
                else "nothing was written")
        raise WriteError(e.errno, f"could not write the {what} {path!r}: "
                         f"{e.strerror or e}; {kept}") from e
    finally:
        if os.path.exists(tmp):
            try:
                os.remove(tmp)
            except OSError:
                pass


def write_text(path, text, what="file"):
    """Writes `text` to `path` atomically (see `replacing`); returns `path`."""
    with replacing(path, what) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return path


def write_json(path, data, what="file", **dump_kwargs):
    """Writes `data` as JSON to `path` atomically (see `replacing`); returns `path`.

    `dump_kwargs` go to `json.dumps` (indent, default, sort_keys). The text is made before
    the file is opened, so data that does not serialise leaves no file behind.
    """
    return write_text(path, json.dumps(data, **dump_kwargs), what)


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
