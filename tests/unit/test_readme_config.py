"""The README's configuration reference is the text generated from the typed configuration's field docs, and the
dataclass defaults are the composed YAML's: one default per key, documented once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from threespo_verl import config_reference as C
from threespo_verl.verl_glue.config import EnvConfig, resolve_env

README = Path(__file__).resolve().parents[2] / "README.md"


def _composed(*overrides):
    with initialize_config_module(config_module="threespo_verl.config", version_base=None):
        return OmegaConf.to_container(compose(config_name="threespo_trainer", overrides=list(overrides)), resolve=True)


def test_readme_reference_is_the_generated_table():
    assert C.readme_block(README.read_text()) == C.table(), (
        "the README's configuration reference is stale: run python -m threespo_verl.config_reference --write README.md")


def test_every_row_is_documented():
    rows = C.rows()
    assert len(rows) >= 40
    assert [k for k, _d, doc in rows if not doc] == [], "fields without a #: comment in verl_glue/config.py"


def test_dataclass_defaults_are_the_composed_yaml():
    cfg = _composed()
    for key, default, _doc in C.rows():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == yaml.safe_load(default), f"{key}: the dataclass says {default}, the composed YAML {node!r}"
    for section, cls in (("threespo", "ThreeSPOConfig"), ("gigpo", "GiGPOConfig"), ("spa", "SPAConfig")):
        keys = {k for k in cfg["algorithm"][section] if k != "_target_"}
        documented = {k.rsplit(".", 1)[1] for k, _d, _doc in C.rows() if k.startswith(f"algorithm.{section}.")}
        assert keys == documented, f"algorithm.{section} ({cls}) and its YAML have different keys"
    assert set(cfg["env"]) == {f.name for f in dataclasses.fields(EnvConfig) if not f.name.startswith("_")}


@pytest.mark.parametrize("env", ["household", "alfworld", "webshop"])
def test_each_env_group_resolves(env):
    got = resolve_env(_composed(f"env={env}")["env"])
    assert got.name == env
    if env == "alfworld":
        assert got.num_workers == "auto" and got.max_steps == 50


def test_bad_env_values_name_the_key():
    with pytest.raises(ValueError, match="env.outcome"):
        resolve_env({"outcome": "reward"})
    with pytest.raises(ValueError, match="env.num_workers"):
        resolve_env({"num_workers": -1})
    with pytest.raises(ValueError, match=r"unknown env key\(s\) \['max_step'\]"):
        resolve_env({"max_step": 5})


@pytest.mark.parametrize("stale", ["", "\n", "\n| key | default | meaning |\n|---|---|---|\n| `old` | `1` | gone |\n"])
def test_write_replaces_only_the_block_between_the_markers(stale, tmp_path):
    readme = tmp_path / "README.md"
    before, after = "# Title\n\nintro\n\n", "\n\n## Next\ntext\n"
    readme.write_text(f"{before}{C.BEGIN}{stale}{C.END}{after}")
    C.main(["--write", str(readme)])
    text = readme.read_text()
    assert text == f"{before}{C.BEGIN}\n{C.table()}\n{C.END}{after}"
    assert C.readme_block(text) == C.table()
    C.main(["--write", str(readme)])
    assert readme.read_text() == text  # idempotent


def test_write_without_markers_names_them_and_leaves_the_file(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    with pytest.raises(ValueError, match="config-reference"):
        C.main(["--write", str(readme)])
    assert readme.read_text() == "# Title\n"
