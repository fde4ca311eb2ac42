"""``threespo-verl setup webshop``: checksum, missing data, idempotent re-install."""

from __future__ import annotations

import io
import shutil
import tarfile
import urllib.error

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
    monkeypatch.setattr(setup, "find_shared_data", lambda kind: None)  # no shared folder either, and offline:

    def offline(url, path, timeout=30.0):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(setup, "_fetch_url", offline)
    with pytest.raises(FileNotFoundError, match=r"download .* failed .*threespo-verl setup webshop --from"):
        setup.install(dest=tmp_path / "dest")
    assert not (tmp_path / "dest" / "data").exists()


def test_upstream_download_rebuilds_the_archive_content(tmp_path, monkeypatch, webshop_data):
    # serve the upstream files from an installed copy: original files as published, the two rebuilt ones are not served
    remote = {setup.UPSTREAM_URL + r: webshop_data / rel for rel, (r, _sha) in setup.UPSTREAM_FILES.items() if r}
    fetched = []

    def fake_fetch(url, path, timeout=30.0):
        fetched.append(url)
        shutil.copyfile(remote[url], path)

    monkeypatch.setattr(setup, "find_shared_data", lambda kind: None)
    monkeypatch.setattr(setup, "_fetch_url", fake_fetch)
    dest = setup.install(dest=tmp_path / "up")
    assert setup.is_installed(dest) and sorted(fetched) == sorted(remote)
    assert len(setup.UPSTREAM_FILES) == 23  # every file of the archive
    for rel in setup.UPSTREAM_FILES:  # byte-identical to the archive's files, the rebuilt ones included
        assert (dest / rel).read_bytes() == (webshop_data / rel).read_bytes(), rel
    # a corrupt download is refused and nothing lands in dest
    monkeypatch.setattr(setup, "_fetch_url", lambda url, path, timeout=30.0: path.write_bytes(b"oops"))
    with pytest.raises(ChecksumError):
        setup.install(dest=tmp_path / "bad")
    assert not (tmp_path / "bad" / "data").exists()


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
