"""``python -m threespo_verl.main algorithm=3spo|grpo env=household`` goes through verl's own entry point (config
composition and validation, Ray, the v1 TaskRunner, this package's trainer mode and task dataset) up to the point
where a rollout engine needs an accelerator: on this GPU-less machine verl's resource check stops it there."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


# grpo takes the same path with another algorithm group: slow
@pytest.mark.parametrize("algo", ["3spo", pytest.param("grpo", marks=pytest.mark.slow)])
def test_main_runs_up_to_the_rollout_engine(algo, tmp_path):
    from threespo_verl.models import build_tiny

    model = tmp_path / "tiny"
    build_tiny(model)
    cmd = [sys.executable, "-m", "threespo_verl.main", f"algorithm={algo}", "env=household",
           f"actor_rollout_ref.model.path={model}", "trainer.total_training_steps=2", "data.train_batch_size=2",
           "trainer.n_gpus_per_node=1", "ray_kwargs.ray_init.num_cpus=16", "actor_rollout_ref.rollout.agent.num_workers=1",
           "trainer.logger=[console]", f"trainer.default_local_dir={tmp_path / 'ckpt'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Using dataset class: TaskDataset" in out and "train dataset size: 10000" in out, out[-3000:]
    assert "'trainer_mode': 'threespo'" in out
    assert "Total available GPUs 0 is less than total desired GPUs 1" in out, out[-3000:]


def test_unknown_algorithm_fails_before_anything_starts():
    proc = subprocess.run([sys.executable, "-m", "threespo_verl.main", "algorithm=ppo3"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "unknown algorithm 'ppo3'; valid values: 3spo, gigpo, grpo, ppo, spa, spa_ppo" in proc.stderr
