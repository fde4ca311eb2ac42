"""threespo-verl setup alfworld: checksum, missing data, idempotence, counts."""

from __future__ import annotations

import shutil

import pytest

from threespo_verl.data import ChecksumError, find_shared_data, verify_sha256
from threespo_verl.envs import alfworld_setup


def test_install_is_idempotent_and_counts_games(alfworld_data, capsys):
    assert alfworld_setup.count_games(alfworld_data, "valid_seen") == 140
    assert (alfworld_data / "logic" / "alfred.twl2").is_file()
    again = alfworld_setup.install(source=find_shared_data("alfworld"), dest=alfworld_data,
                                   splits=("valid_seen", "valid_unseen"))
    assert again == alfworld_data
    assert "unpacking" not in capsys.readouterr().out  # nothing redone


def test_checksum_mismatch_is_refused(tmp_path):
    name = "alfworld_json_2.1.1_valid_seen_unseen.tar.gz"
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(find_shared_data("alfworld") / name, src / name)
    with open(src / name, "r+b") as f:
        f.seek(1000)
        f.write(b"corrupted")
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        alfworld_setup.install(source=src, dest=tmp_path / "dest", splits=("valid_seen",))
    assert not (tmp_path / "dest" / "json_2.1.1").exists()


def test_missing_archive_names_the_command(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="threespo-verl setup alfworld --from"):
        alfworld_setup.install(source=tmp_path / "empty", dest=tmp_path / "dest", splits=("valid_unseen",))
    with pytest.raises(ValueError, match="unknown ALFWorld split"):
        alfworld_setup.install(source=tmp_path / "empty", dest=tmp_path / "dest", splits=("test",))


def test_logic_files_come_from_the_alfworld_package_when_no_eval_archive(tmp_path):
    alfworld_setup._ensure_logic(tmp_path)  # e.g. only the train archive was installed
    for fname, sha in alfworld_setup.LOGIC_SHA256.items():
        assert (tmp_path / "logic" / fname).is_file()
        verify_sha256(tmp_path / "logic" / fname, sha)


def test_offline_without_archives_explains_and_names_from(tmp_path, monkeypatch):
    monkeypatch.setattr(alfworld_setup, "find_shared_data", lambda kind: None)
    with pytest.raises(FileNotFoundError) as err:
        alfworld_setup.install(dest=tmp_path / "dest", splits=("valid_seen",))
    assert "--from" in str(err.value) and "releases/download" in str(err.value)
