"""Subprocess driver for the kill-and-resume test: runs 3SPO training steps of the threespo trainer mode on real verl
machinery (see verl_harness) with verl's own ``_save_checkpoint`` / ``_load_checkpoint`` after every step, and
writes, per step, the n(s) of every node expanded and the frontiers afterwards.

    python -m tests.integration.resume_driver --model M --workdir W --steps 3 --out A.json
    python -m tests.integration.resume_driver ... --steps 3 --kill-in-step 3        (SIGKILLs itself mid-step 3)
    python -m tests.integration.resume_driver ... --steps 3 --out C.json             (resumes from W's checkpoint)

The actor is not part of this test: ``NoActorWorkerGroup`` stands in for verl's actor worker group in the two
checkpoint calls (it writes a marker file); everything else in the checkpoint is the real thing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import uuid
from pathlib import Path


class NoActorWorkerGroup:
    """Stand-in for the actor worker group's checkpoint calls (the model is not under test here)."""

    def save_checkpoint(self, local_path, remote_path=None, global_steps=0, max_ckpt_to_keep=None):
        os.makedirs(local_path, exist_ok=True)
        Path(local_path, "NO_ACTOR_IN_THIS_TEST").write_text(str(global_steps))

    def load_checkpoint(self, local_path, del_local_after_load=False):
        assert Path(local_path, "NO_ACTOR_IN_THIS_TEST").exists(), local_path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--kill-in-step", type=int, default=0)
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    import ray
    import transfer_queue as tq

    from tests.integration import verl_harness as H

    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False, namespace=f"resume-{uuid.uuid4().hex}",
             runtime_env={"env_vars": {"PYTHONHASHSEED": "0", "TOKENIZERS_PARALLELISM": "false"}})
    from threespo_verl.envs import make
    from threespo_verl.testing import ScriptedPolicy, household_plans

    # short episodes and budgets, few tasks: trees finish, tasks recur, and the statistics move n(s) off 8
    overrides = ["trainer.save_freq=1", "trainer.resume_mode=auto", "algorithm.threespo.store_name=resume-store",
                 "data.train_batch_size=2", "data.train_max_samples=6", "env.max_steps=8",
                 "algorithm.threespo.env_step_budget=48", "algorithm.threespo.min_update_rows=2",
                 "algorithm.threespo.alpha=2.0", f"trainer.total_training_steps={a.steps}",
                 "algorithm.threespo.update_mode=post_step", "algorithm.threespo.reward_stats=update"]
    workdir = Path(a.workdir)
    tq.init(H.compose_config(Path(a.model), workdir, overrides).transfer_queue)
    policy = ScriptedPolicy(plans=household_plans(make("household").tasks("train")[:6]), plan_weight=100.0,
                            plan_move_weight=20.0)
    rig = H.build(Path(a.model), workdir, overrides, policy=policy)
    tr = rig.trainer
    tr.actor_rollout_wg = NoActorWorkerGroup()
    tr._round_old_log_probs = lambda rows, acc: None  # the actor's pass is not part of this test
    tr._load_checkpoint()  # verl's resume (tracker, data.pt) + this trainer's state and store
    start = tr.global_steps + 1
    record = {"resumed_from": tr.global_steps, "steps": {}}
    original_run_round = tr.run_round

    def run_round(reqs):
        if a.kill_in_step and tr.global_steps == a.kill_in_step:
            td, _uids = tr._requests_td(reqs)
            tr._submit_batch_to_rollout(td)  # work in flight, then the process dies
            os.kill(os.getpid(), signal.SIGKILL)
        update, m = original_run_round(reqs)
        record["steps"].setdefault(str(tr.global_steps), {"n": [], "frontiers": None})["n"].append(m["n_hist"])
        return update, m

    tr.run_round = run_round
    for step in range(start, a.steps + 1):
        tr.global_steps = step
        batch, _metrics = tr.explore()
        # the groups this update trains (post_step: some were sampled before the checkpoint and waited in it), with
        # their rows' token ids: a resumed run must train the same rows
        data = tq.kv_batch_get(keys=batch.keys, partition_id="train", select_fields=["input_ids"])
        rows = sorted((e["tree_id"], e["parent_node_id"], e["round"], e["reply"], ids.tolist())
                      for e, ids in zip(H.extras(batch), data["input_ids"].unbind()))
        record["steps"][str(step)]["trained"] = rows
        record["steps"][str(step)]["pending"] = sorted([g.tree_id, g.node_id, g.round_] for g in tr.ledger.groups)
        tq.kv_clear(keys=batch.keys, partition_id="train")
        record["steps"][str(step)]["frontiers"] = tr.frontiers.state_dict()
        record["steps"][str(step)]["store"] = ray.get(tr.store.stats.remote())
        tr._save_checkpoint()
    if a.out:
        Path(a.out).write_text(json.dumps(record))
    H.shutdown(rig)
    tq.close()
    ray.shutdown()


if __name__ == "__main__":
    main()
