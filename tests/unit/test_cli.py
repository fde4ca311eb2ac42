"""The command line: setup from the shared archives, the registration check, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys

from threespo_verl.data import find_shared_data


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "threespo_verl.cli", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


def test_check_reports_registration():
    proc = _cli("check")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "all components registered" in proc.stdout


def test_setup_alfworld_from_the_shared_archives(tmp_path):
    proc = _cli("setup", "alfworld", "--from", str(find_shared_data("alfworld")), "--dest", str(tmp_path / "alf"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"alfworld: installed at {tmp_path / 'alf'}" in proc.stdout
    for split, n in (("train", 3553), ("valid_seen", 140), ("valid_unseen", 134)):
        assert sum(1 for _ in (tmp_path / "alf" / "json_2.1.1" / split).glob("*/*/game.tw-pddl")) == n


def test_setup_without_archives_names_the_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = _cli("setup", "alfworld", "--from", str(tmp_path / "empty"), "--dest", str(tmp_path / "alf"))
    assert proc.returncode == 2 and "threespo-verl setup alfworld --from" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _cli("setup", "minigrid")
    assert proc.returncode != 0 and "invalid choice: 'minigrid'" in proc.stderr
