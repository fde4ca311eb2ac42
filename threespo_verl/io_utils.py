"""File and seed helpers shared by every module that writes run files: JSONL reading that survives a line cut by a
kill, atomic file writes, and seeds derived from text.

* ``read_jsonl(path)``: the records of a JSONL file. A last line cut by a kill (no newline, or not JSON) is skipped
  with a warning; a damaged line elsewhere raises ``ValueError`` naming ``path:line`` (or, with
  ``damaged="skip"``, is skipped with a warning). ``repair_jsonl_tail(path)`` cuts such a last line off before a
  writer appends to the file again.
* ``atomic_write(path, mode)``: a context manager that yields an open file; on success the bytes are flushed,
  fsynced and renamed over ``path`` (then the folder is fsynced), on error the temporary file is removed: a crash at
  any point leaves the previous ``path`` as it was. The temporary file is ``.<name>.<pid>.tmp`` next to ``path``.
* ``stable_seed(*parts)``: an integer seed from the text of ``parts`` (sha256), the same in every process and run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def read_jsonl(path: str | os.PathLike, *, damaged: str = "raise") -> list[Any]:
    """The JSON values of ``path``'s lines ([] if the file does not exist); see the module docstring."""
    if damaged not in ("raise", "skip"):
        raise ValueError(f"damaged must be 'raise' or 'skip', got {damaged!r}")
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    # the text after the last newline is a line still being written or cut by a kill ("" when the file ends well)
    tail = lines.pop()
    if tail.strip():
        warnings.warn(f"{path}: the last line is incomplete (cut by a kill?); it is skipped", stacklevel=2)
    out = []
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError as exc:
            if i == last and not tail.strip():
                warnings.warn(f"{path}:{i + 1}: the last line is not JSON (cut by a kill?); it is skipped",
                              stacklevel=2)
            elif damaged == "skip":
                warnings.warn(f"{path}:{i + 1} is not a JSON line ({exc}); it is skipped", stacklevel=2)
            else:
                raise ValueError(f"{path}:{i + 1} is not a JSON line ({exc}); the file is damaged") from None
    return out


def repair_jsonl_tail(path: str | os.PathLike) -> int:
    """Cut a torn last line (no newline, or not valid JSON) off ``path``; returns the bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1  # everything after the last newline is torn
    # a newline-terminated last line that is not valid JSON is cut too (e.g. a file truncated by another tool)
    while keep > 0:
        start = data.rfind(b"\n", 0, keep - 1) + 1
        try:
            json.loads(data[start:keep])
            break
        except ValueError:
            keep = start
    if keep < len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
    return len(data) - keep


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str = "utf-8") -> Iterator[IO]:
    """``with atomic_write(path) as f: ...``: write ``path`` all at once or not at all (see the module docstring)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, encoding=None if mode == "wb" else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def stable_seed(*parts: Any, sep: str = "\x1f", bits: int = 64) -> int:
    """The low ``bits`` bits of sha256 over the text of ``parts`` joined by ``sep`` (little-endian, first 8 bytes):
    a seed that is the same in every process and run (Python's ``hash`` of a string is not)."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in 1..64, got {bits}")
    digest = hashlib.sha256(sep.join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << bits) - 1)
