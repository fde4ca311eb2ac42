"""``threespo-verl setup webshop``: install the 1,000-product WebShop catalog under the data home.

Sources, in order: ``--from`` (a folder holding ``webshop_small_1000.tar.gz``, or the archive itself), then the
workplace's shared data folder (``../shared/data/webshop``). Nothing is downloaded: the archive is this project's
repackaging of webshop-minimal's data (see shared/data/webshop/SOURCES.md), so without it the error names
``threespo-verl setup webshop --from ...``. The archive is checked against its sha256 before it is unpacked and the
result is checked for the expected files. A marker file makes re-running a no-op.
"""

from __future__ import annotations

import json
from pathlib import Path

from threespo_verl.data import data_dir, extract_tar, find_shared_data, verify_sha256

ARCHIVE = "webshop_small_1000.tar.gz"
SHA256 = "cfa1085f4d86653a0efbf48ac5312a963667a6c350f388f034418fbb306710a3"
#: files the environment reads (the Lucene index is unpacked too, for an optional pyserini backend)
EXPECTED_FILES = (
    "data/items_shuffle_1000.json",
    "data/items_ins_v2_1000.json",
    "data/items_human_ins.json",
    "search_engine/resources_1k/documents.jsonl",
    "search_engine/indexes/segments_2",
)
MARKER = ".threespo_installed.json"


def is_installed(dest: Path) -> bool:
    marker = Path(dest) / MARKER
    if not marker.is_file():
        return False
    try:
        ok = json.loads(marker.read_text()).get("sha256") == SHA256
    except ValueError:
        return False
    return ok and all((Path(dest) / f).is_file() for f in EXPECTED_FILES)


def _find_archive(source: Path | None) -> Path | None:
    if source is not None:
        if source.is_file():
            return source
        return source / ARCHIVE if (source / ARCHIVE).is_file() else None
    shared = find_shared_data("webshop")
    if shared is not None and (shared / ARCHIVE).is_file():
        return shared / ARCHIVE
    return None


def install(source: Path | None = None, dest: Path | None = None, name: str | None = None) -> Path:
    """Install the catalog into ``dest`` (default ``$THREESPO_DATA/webshop``); returns ``dest``.

    ``name`` is accepted for the CLI's uniform signature and ignored (there is one WebShop catalog).
    """
    dest = Path(dest) if dest is not None else data_dir("webshop")
    if is_installed(dest):
        return dest
    if source is not None and not Path(source).exists():
        raise FileNotFoundError(f"--from {source}: no such file or folder")
    archive = _find_archive(Path(source) if source is not None else None)
    if archive is None:
        where = f"in {source}" if source is not None else "in ../shared/data/webshop (or $THREESPO_SHARED_DATA)"
        raise FileNotFoundError(
            f"webshop: archive {ARCHIVE} not found {where}. Automatic download is not attempted (the archive is this "
            f"project's offline copy of the 1,000-product catalog, see shared/data/webshop/SOURCES.md). Get it and "
            f"run: threespo-verl setup webshop --from DIR_OR_ARCHIVE")
    print(f"webshop: verifying {archive.name} ...", flush=True)
    verify_sha256(archive, SHA256)
    print(f"webshop: unpacking {archive.name} into {dest} ...", flush=True)
    extract_tar(archive, dest)
    missing = [f for f in EXPECTED_FILES if not (dest / f).is_file()]
    if missing:
        raise RuntimeError(f"webshop: {', '.join(missing)} missing under {dest} after unpacking {archive}")
    (dest / MARKER).write_text(json.dumps({"archive": ARCHIVE, "sha256": SHA256}))
    return dest
