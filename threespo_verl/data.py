"""Where environment data and models live, and the pieces ``threespo-verl setup`` is built from.

Data never goes into the repository. Everything is installed under one data home::

    $THREESPO_DATA            (default: ~/.cache/threespo_verl)
        alfworld/             json_2.1.1/{train,valid_seen,valid_unseen}/..., logic/...
        webshop/              data/*.json, search_engine/...
        models/<name>/        HF model folders

Anything that needs data calls ``require_data(kind)`` which either returns the folder or raises
``MissingDataError`` naming the one command that installs it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

#: the archives of this workplace's shared data folder (see shared/data/*/SOURCES.md), looked up in this order
SHARED_DATA_CANDIDATES = ("../shared/data", "../../shared/data")


class MissingDataError(FileNotFoundError):
    """Data for an environment or a model is not installed; the message names the command that installs it."""

    def __init__(self, kind: str, where: Path, detail: str = ""):
        self.kind = kind
        self.where = where
        msg = (
            f"{kind} data not found at {where}{': ' + detail if detail else ''}.\n"
            f"Install it with:  threespo-verl setup {kind}"
            f"   (offline: threespo-verl setup {kind} --from DIR_OR_ARCHIVE; "
            f"set THREESPO_DATA to use another data home)"
        )
        super().__init__(msg)


def data_home() -> Path:
    """The data home (``$THREESPO_DATA`` or ``~/.cache/threespo_verl``)."""
    return Path(os.environ.get("THREESPO_DATA") or Path.home() / ".cache" / "threespo_verl").expanduser()


def data_dir(kind: str) -> Path:
    """Folder of one kind of data (``alfworld``, ``webshop``, ``models``) under the data home."""
    return data_home() / kind


def find_shared_data(kind: str) -> Path | None:
    """The workplace's shared archive folder for ``kind`` (``../shared/data/<kind>``), if there is one.

    Looked up relative to the current directory and to the package checkout, so both a clone and CI find it.
    ``THREESPO_SHARED_DATA`` overrides the search.
    """
    env = os.environ.get("THREESPO_SHARED_DATA")
    roots = [Path(env)] if env else []
    here = Path(__file__).resolve().parent.parent
    for base in (Path.cwd(), here):
        roots += [(base / c).resolve() for c in SHARED_DATA_CANDIDATES]
    for root in roots:
        if (root / kind).is_dir():
            return root / kind
    return None


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
