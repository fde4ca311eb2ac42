"""The data home and the installer toolkit: where environment data and models live (``data_dir``), the missing-data
error, and the sha256-checked download and archive extraction that ``threespo-verl setup`` is built from.

Data never goes into the repository. Everything is installed under one data home::

    $THREESPO_DATA            (default: ~/.cache/threespo_verl)
        alfworld/             json_2.1.1/{train,valid_seen,valid_unseen}/..., logic/...
        webshop/              data/*.json, search_engine/...
        models/<name>/        HF model folders

``threespo-verl setup KIND`` downloads the data from its public source (:func:`download`: sha256-checked, atomic),
or installs it from local archives: ``--from DIR_OR_ARCHIVE``, or a folder of archives named by ``--archives DIR`` /
``$THREESPO_DATA_ARCHIVES`` (:func:`archives_dir`). No folder is ever searched for implicitly.

Code that needs data and does not find it raises ``MissingDataError``, whose message names the command that
installs it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TextIO

#: a folder of data archives (``<DIR>/alfworld/*.tar.gz``, ``<DIR>/webshop/*.tar.gz``, or the archives in ``<DIR>``
#: itself) that ``threespo-verl setup`` installs from instead of downloading; ``--archives DIR`` sets it per command
ARCHIVES_ENV = "THREESPO_DATA_ARCHIVES"

class MissingDataError(FileNotFoundError):
    """Data for an environment or a model is not installed; the message names the command that installs it."""

    def __init__(self, kind: str, where: Path, detail: str = ""):
        self.kind = kind
        self.where = where
        msg = (
            f"{kind} data not found at {where}{': ' + detail if detail else ''}.\n"
            f"Install it with:  threespo-verl setup {kind}"
            f"   (downloads from the public source; offline: threespo-verl setup {kind} --from DIR_OR_ARCHIVE; "
            f"set THREESPO_DATA to use another data home)"
        )
        super().__init__(msg)


def data_home() -> Path:
    """The data home (``$THREESPO_DATA`` or ``~/.cache/threespo_verl``)."""
    return Path(os.environ.get("THREESPO_DATA") or Path.home() / ".cache" / "threespo_verl").expanduser()


def data_dir(kind: str) -> Path:
    """Folder of one kind of data (``alfworld``, ``webshop``, ``models``) under the data home."""
    return data_home() / kind


def archives_dir(kind: str, archives: str | Path | None = None) -> Path | None:
    """The folder of ``kind``'s archives named by ``archives`` (``--archives``) or ``$THREESPO_DATA_ARCHIVES``.

    ``<DIR>/<kind>`` when that folder exists, else ``<DIR>`` itself; None when neither is given. Nothing is searched
    for: without an explicit folder, ``threespo-verl setup`` downloads from the public source.
    """
    root = archives if archives is not None else os.environ.get(ARCHIVES_ENV) or None
    if root is None:
        return None
    root = Path(root).expanduser()
    if not root.is_dir():
        where = "--archives" if archives is not None else f"${ARCHIVES_ENV}"
        raise FileNotFoundError(f"{where}={root}: no such folder. Point it at the folder that holds the {kind} "
                                f"archives, or unset it to download: threespo-verl setup {kind}")
    return root / kind if (root / kind).is_dir() else root


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class ChecksumError(ValueError):
    pass


def verify_sha256(path: Path, expected: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise ChecksumError(f"sha256 mismatch for {path}: expected {expected}, got {got}. The file is corrupt or not "
                            f"the published archive; download it again.")


def download(url: str, path: Path, sha256: str, *, size: int | None = None, label: str = "download",
             fix: str = "", timeout: float = 60.0, out: TextIO | None = None) -> Path:
    """Download ``url`` to ``path`` and check its sha256 (and size, when given); returns ``path``.

    The bytes go to ``<path>.part`` first and are renamed only once the checksum matches, so a failed, interrupted or
    corrupt download never leaves a file at ``path`` (the partial file is removed). Progress goes to ``out``
    (default stdout): a line per 10% (or a rewritten line on a terminal). Network failures raise ``OSError``
    (``urllib.error.URLError``, timeouts); a wrong checksum or size raises :class:`ChecksumError`. ``fix`` is added
    to both messages (the command that installs without the network).
    """
    out = out if out is not None else sys.stdout
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    name = path.name
    tty = getattr(out, "isatty", lambda: False)()
    h = hashlib.sha256()
    got = 0
    req = urllib.request.Request(url, headers={"User-Agent": "threespo-verl"})
    print(f"{label}: downloading {url}", file=out, flush=True)
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(part, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0) or size or 0
            shown = -1
            while block := resp.read(1 << 18):
                f.write(block)
                h.update(block)
                got += len(block)
                if total:
                    pct = min(100, got * 100 // total)
                    if tty or pct // 10 > shown:
                        shown = pct // 10
                        line = f"{label}: {name} {got / 1e6:.1f} / {total / 1e6:.1f} MB ({pct}%)"
                        print(("\r" + line) if tty else line, end="" if tty else "\n", file=out, flush=True)
            if tty and total:
                print(file=out, flush=True)
        digest = h.hexdigest()
        hint = f" Nothing was installed. {fix}" if fix else " Nothing was installed."
        if size is not None and got != size:
            raise ChecksumError(f"{label}: {url} gave {got} bytes, expected {size}: the download was cut short or the "
                                f"file changed upstream.{hint}")
        if digest != sha256:
            raise ChecksumError(f"{label}: sha256 mismatch for {url}: expected {sha256}, got {digest}. The download "
                                f"is corrupt or the file changed upstream.{hint}")
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    print(f"{label}: {name}: {got} bytes in {time.monotonic() - t0:.1f}s, sha256 ok", file=out, flush=True)
    return path


def extract_tar(archive: Path, dest: Path) -> None:
    """Extract a .tar.gz into ``dest`` safely (no absolute paths, no ``..``), atomically per archive.

    The archive is unpacked into a temporary folder beside ``dest`` and its top-level entries are then moved in,
    so an interrupted extraction never leaves a half-written tree under ``dest``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.extract-") as tmp:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf.getmembers():
                name = Path(member.name)
                if name.is_absolute() or ".." in name.parts or member.issym() or member.islnk():
                    raise ValueError(f"refusing unsafe archive member {member.name!r} in {archive}")
            tf.extractall(tmp, filter="data")
        for entry in Path(tmp).iterdir():
            _merge_move(entry, dest / entry.name)


def _merge_move(src: Path, dst: Path) -> None:
    if src.is_dir() and dst.is_dir():
        for child in src.iterdir():
            _merge_move(child, dst / child.name)
    else:
        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        os.replace(src, dst)
