"""The task feeder verl's dataloader iterates (``data.custom_cls`` -> ``TaskDataset``): one row per task, no parquet.

verl builds its train and validation datasets with ``cls(data_files=..., tokenizer, processor, config=data,
max_samples)``. Here ``data_files`` names which tasks to serve:

* ``threespo://train``: the training split of the environment (``env.train_split``), in the env's canonical order
  (verl's sampler shuffles with ``data.seed``);
* ``threespo://eval``: the fixed evaluation panel (``env.eval_panel``, envs/panels.py), every task exactly once.

The environment settings come from ``data.threespo_env`` (the composed ``env`` node, interpolated by
``threespo_trainer.yaml``). Each row carries what verl needs (``raw_prompt``, ``index``, ``data_source`` =
``<env>/<task type>`` so validation metrics come out per task type), the agent loop's name, and the request of
an *episode* (``threespo_request``, JSON): validation and GRPO/GiGPO play the task start to end. The 3SPO trainer
turns training rows into node-expansion requests itself.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset

from threespo_verl.envs import make
from threespo_verl.envs.base import Task
from threespo_verl.envs.panels import panel

if TYPE_CHECKING:
    from threespo_verl.verl_glue.config import EnvConfig

AGENT_NAME = "threespo_step"
REQUEST_KEY = "threespo_request"
TRAIN_FILES = "threespo://train"
EVAL_FILES = "threespo://eval"


def env_settings(data_config: Any) -> "EnvConfig":
    """The ``env`` node, typed (from ``data.threespo_env``), with a clear error when it is missing."""
    node = data_config.get("threespo_env", None) if hasattr(data_config, "get") else None
    if node is None:
        raise ValueError("data.threespo_env is not set: compose the config with threespo_trainer (it sets "
                         "data.threespo_env: ${env}) or pass data.threespo_env.name=household|alfworld|webshop")
    from threespo_verl.verl_glue.config import resolve_env  # verl's import would register this plugin mid-import

    return resolve_env(node)


def task_to_json(task: Task) -> str:
    return json.dumps(dataclasses.asdict(task), sort_keys=True)


def task_from_json(text: str) -> Task:
    return Task(**json.loads(text))


def episode_request(task: Task) -> str:
    return json.dumps({"mode": "episode", "task": dataclasses.asdict(task)}, sort_keys=True)


class TaskDataset(Dataset):
    def __init__(self, data_files, tokenizer=None, processor=None, config=None, max_samples: int = -1, **kwargs):
        files = [data_files] if isinstance(data_files, str) else list(data_files)
        if len(files) != 1 or files[0] not in (TRAIN_FILES, EVAL_FILES):
            raise ValueError(f"TaskDataset serves data.train_files={TRAIN_FILES!r} or data.val_files={EVAL_FILES!r}; "
                             f"got {data_files!r}")
        self.env = env_settings(config)
        self.split_name = files[0]
        if files[0] == TRAIN_FILES:
            e = make(self.env.name, **self.env.make_kwargs())
            try:
                tasks = e.tasks(self.env.train_split)
            finally:
                e.close()
            self.panel_sha256 = None
        else:
            p = panel(self.env.name, self.env.eval_panel, **{k: v for k, v in self.env.make_kwargs().items()
                                                             if k != "max_steps"})
            tasks, self.panel_sha256 = list(p.tasks), p.sha256
        if max_samples is not None and max_samples > 0:
            tasks = tasks[:max_samples]
        if not tasks:
            raise ValueError(f"{self.env.name}: no tasks for {files[0]}")
        self.tasks = tasks

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> dict[str, Any]:
        task = self.tasks[i]
        return {
            "raw_prompt": [{"role": "user", "content": task.task_id}],
            "index": i,
            "data_source": f"{task.env_name}/{task.task_type}",
            "agent_name": AGENT_NAME,
            REQUEST_KEY: episode_request(task),
        }
