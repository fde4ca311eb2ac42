"""The verl plugin entry: registration in this process, WARNING-level failure reporting, check_registration."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

import pytest

from threespo_verl import plugin


def test_entry_point_is_declared_for_verl():
    eps = {ep.name: ep.value for ep in entry_points(group="verl.plugins")}
    assert eps.get("threespo") == "threespo_verl.plugin"


def test_importing_verl_registers_everything():
    import verl  # noqa: F401  (verl loads its verl.plugins entry points on import)
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    plugin.check_registration()
    assert callable(get_adv_estimator_fn("3spo")) and callable(get_adv_estimator_fn("gigpo"))


def test_a_failing_component_is_logged_at_warning_and_reported(caplog, monkeypatch):
    def broken_register():
        raise ImportError("simulated: package half-installed")

    monkeypatch.setitem(plugin._COMPONENTS, "broken", (broken_register, lambda: ["broken thing"]))
    try:
        with caplog.at_level(logging.WARNING, logger="threespo_verl.plugin"):
            failures = plugin.register_all()
        assert "broken" in failures
        assert any(
            r.levelno == logging.WARNING and "broken" in r.getMessage() and "half-installed" in r.getMessage()
            for r in caplog.records
        )
        with pytest.raises(plugin.RegistrationError) as err:
            plugin.check_registration()
        assert "broken thing" in str(err.value) and "half-installed" in str(err.value)
    finally:
        plugin._FAILURES.pop("broken", None)


def test_registration_is_idempotent():
    assert plugin.register_all() == {}
    assert plugin.register_all() == {}
    plugin.check_registration()


def test_registration_survives_importing_our_config_before_verl():
    """Importing a module that imports verl first (our config dataclasses) must not break the plugin's load."""
    import subprocess
    import sys

    code = ("import threespo_verl.verl_glue.config\n"
            "import threespo_verl.plugin as p\n"
            "assert p._FAILURES == {}, p._FAILURES\n"
            "p.check_registration()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "registering" not in proc.stderr
