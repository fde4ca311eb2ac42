"""``threespo-verl setup alfworld``: install ALFWorld's text-game data (json_2.1.1 + logic) under the data home.

Sources, in order: ``--from`` (a folder holding the archives, or one archive), the workplace's shared data folder
(``../shared/data/alfworld``), then the upstream release (not downloaded automatically: the message names the release
and ``--from``). Every archive is checked against its published sha256 before it is unpacked, and the
result is checked for the expected layout and game counts. A marker file makes re-running a no-op.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from threespo_verl.data import data_dir, extract_tar, find_shared_data, verify_sha256

ARCHIVES = {
    "alfworld_json_2.1.1_valid_seen_unseen.tar.gz":
        ("7a8ec8b11d127a0b7e4efb90fed70456aeb4ad5949e2788125d1b81112603eb1", ("valid_seen", "valid_unseen")),
    "alfworld_json_2.1.1_train.tar.gz":
        ("257f8da16e75bf717f39ccbe40be5ef080b1f436f18eca1885b109833fce93b2", ("train",)),
    "alfworld_json_2.1.1_valid_train.tar.gz":
        ("16e31cb03952c3acae965a42296a2b297cb351f2f61efbe20ff78526c9420ca0", ("valid_train",)),
}
GAME_COUNTS = {"train": 3553, "valid_seen": 140, "valid_unseen": 134, "valid_train": 200}
DEFAULT_SPLITS = ("train", "valid_seen", "valid_unseen")
#: what ``alfworld-download`` fetches: the ALFRED trajectory jsons and the TextWorld game files (a later json_2.1.2 cut)
UPSTREAM = ("https://github.com/alfworld/alfworld/releases/download/0.2.2/json_2.1.1_json.zip",
            "https://github.com/alfworld/alfworld/releases/download/0.4.0/json_2.1.2_tw-pddl.zip")
#: logic files (also shipped inside the alfworld wheel as alfworld/data/*), sha256 from SOURCES.md
LOGIC_SHA256 = {
    "alfred.pddl": "f1473041ed01da514de1f87adfd7ef0804862361f83ccf63c75e43633b0eb280",
    "alfred.twl2": "c5b22f0f73309a7fd7c8e5b71de42ad4803b60766ab4a51cc2feb34162be036b",
}
MARKER = ".threespo_installed.json"


def count_games(root: Path, split: str) -> int:
    return sum(1 for _ in (root / "json_2.1.1" / split).glob("*/*/game.tw-pddl"))


def _installed(dest: Path) -> set[str]:
    marker = dest / MARKER
    if not marker.exists():
        return set()
    try:
        return set(json.loads(marker.read_text())["splits"])
    except (ValueError, KeyError):
        return set()


def _find_archive(source: Path | None, name: str) -> Path | None:
    if source is not None:
        if source.is_file():
            return source if source.name == name else None
        return source / name if (source / name).is_file() else None
    shared = find_shared_data("alfworld")
    if shared is not None and (shared / name).is_file():
        return shared / name
    return None


def install(source: Path | None = None, dest: Path | None = None, name: str | None = None,
            splits: Iterable[str] | None = None) -> Path:
    """Install the requested splits (default train, valid_seen, valid_unseen) into ``dest``; returns ``dest``."""
    dest = Path(dest) if dest is not None else data_dir("alfworld")
    want = tuple(splits) if splits is not None else DEFAULT_SPLITS
    unknown = [s for s in want if s not in GAME_COUNTS]
    if unknown:
        raise ValueError(f"unknown ALFWorld split(s) {unknown}; valid: {', '.join(GAME_COUNTS)}")
    done = _installed(dest)
    todo = [a for a, (_sha, sp) in ARCHIVES.items() if set(sp) & (set(want) - done)]
    if not todo:
        return dest
    if source is not None and not Path(source).exists():
        raise FileNotFoundError(f"--from {source}: no such file or folder")
    for archive_name in todo:
        sha, archive_splits = ARCHIVES[archive_name]
        archive = _find_archive(Path(source) if source else None, archive_name)
        if archive is None:
            _upstream_failure(archive_name, source)
        print(f"alfworld: verifying {archive.name} ...", flush=True)
        verify_sha256(archive, sha)
        print(f"alfworld: unpacking {archive.name} into {dest} ...", flush=True)
        extract_tar(archive, dest)
        for split in archive_splits:
            n = count_games(dest, split)
            if n != GAME_COUNTS[split]:
                raise RuntimeError(f"alfworld {split}: found {n} games after unpacking, expected {GAME_COUNTS[split]}")
        done |= set(archive_splits)
    _ensure_logic(dest)
    (dest / MARKER).write_text(json.dumps({"splits": sorted(done)}))
    return dest


def _ensure_logic(dest: Path) -> None:
    """logic/ comes with the eval archive; when only train was installed, take the copies in the alfworld wheel."""
    for fname, sha in LOGIC_SHA256.items():
        target = dest / "logic" / fname
        if target.is_file():
            continue
        try:
            import alfworld

            packaged = Path(alfworld.__file__).parent / "data" / fname
        except ImportError:
            packaged = None
        if packaged is None or not packaged.is_file():
            raise RuntimeError(f"alfworld: {target} missing after unpacking (and no alfworld package copy)")
        verify_sha256(packaged, sha)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(packaged.read_bytes())


def _upstream_failure(archive_name: str, source: Path | None) -> None:
    where = f"in {source}" if source else "in ../shared/data/alfworld (or $THREESPO_SHARED_DATA)"
    raise FileNotFoundError(
        f"alfworld: archive {archive_name} not found {where}. Automatic download is not attempted: this project "
        f"installs only sha256-pinned archives, and ALFWorld's release assets ({', '.join(UPSTREAM)}) are "
        f"packaged differently and not pinned. "
        f"Get the archives (see shared/data/alfworld/SOURCES.md) and run: "
        f"threespo-verl setup alfworld --from DIR_WITH_ARCHIVES"
    )
