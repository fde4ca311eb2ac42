"""``threespo-verl setup webshop``: checksum, missing data, idempotent re-install."""

from __future__ import annotations

import io
import tarfile

import pytest

from threespo_verl.data import ChecksumError, find_shared_data
from threespo_verl.envs.webshop import setup


def test_sha_mismatch_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with tarfile.open(src / setup.ARCHIVE, "w:gz") as tf:
        data = b"[]"
        info = tarfile.TarInfo("data/items_shuffle_1000.json")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        setup.install(source=src, dest=tmp_path / "dest")
    assert not (tmp_path / "dest" / "data").exists()  # nothing unpacked


def test_missing_archive_names_the_command(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"threespo-verl setup webshop --from"):
        setup.install(source=tmp_path, dest=tmp_path / "dest")  # folder without the archive
    with pytest.raises(FileNotFoundError, match="no such file"):
        setup.install(source=tmp_path / "nope", dest=tmp_path / "dest")
    monkeypatch.setattr(setup, "find_shared_data", lambda kind: None)  # no shared folder either
    with pytest.raises(FileNotFoundError, match=r"threespo-verl setup webshop --from"):
        setup.install(dest=tmp_path / "dest")


def test_install_from_the_archive_file_is_idempotent(tmp_path, monkeypatch):
    archive = find_shared_data("webshop") / setup.ARCHIVE
    dest = setup.install(source=archive, dest=tmp_path / "ws")
    assert dest == tmp_path / "ws" and setup.is_installed(dest)
    assert all((dest / f).is_file() for f in setup.EXPECTED_FILES)

    def boom(*a, **k):
        raise AssertionError("re-install must not re-verify or unpack")

    monkeypatch.setattr(setup, "verify_sha256", boom)
    monkeypatch.setattr(setup, "extract_tar", boom)
    assert setup.install(source=archive, dest=dest) == dest
    # a damaged install (a file gone) is installed again
    (dest / setup.EXPECTED_FILES[0]).unlink()
    assert not setup.is_installed(dest)
    monkeypatch.undo()
    setup.install(source=archive.parent, dest=dest)
    assert setup.is_installed(dest)


def test_default_source_is_the_shared_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("THREESPO_DATA", str(tmp_path / "home"))
    dest = setup.install()
    assert dest == tmp_path / "home" / "webshop" and setup.is_installed(dest)
