"""The threespo trainer mode and agent loop on real verl machinery (Ray, TransferQueue, AgentLoopWorkerTQ, the
replay buffer, the trainer's advantage step) on the household game; only the model is a scripted client
(``ScriptedLLMClient``). Rows, groups, step rewards and advantages are checked against hand computations."""

from __future__ import annotations

import math
import uuid
from collections import defaultdict

import numpy as np
import pytest

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")

from tests.integration import verl_harness as H  # noqa: E402
from threespo_verl.envs import make  # noqa: E402
from threespo_verl.testing import ScriptedPolicy, household_plans  # noqa: E402

pytestmark = pytest.mark.integration
EPS = 1e-6


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from threespo_verl.models import build_tiny

    root = tmp_path_factory.mktemp("verl_rollout")
    model = root / "tiny"
    build_tiny(model)
    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False, namespace=f"threespo-{uuid.uuid4().hex}",
             runtime_env={"env_vars": {"PYTHONHASHSEED": "0", "TOKENIZERS_PARALLELISM": "false"}})
    cfg = H.compose_config(model, root, [])
    tq.init(cfg.transfer_queue)
    yield model, root
    tq.close()
    ray.shutdown()


def rig(cluster, overrides, policy=None, name=None):
    model, root = cluster
    name = name or uuid.uuid4().hex[:8]
    return H.build(model, root / name, [f"algorithm.threespo.store_name=store-{name}", *overrides], policy=policy)


extras, fetch = H.extras, H.fetch


def hand_group_norm(values):
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return np.zeros_like(v)
    return (v - v.mean()) / (v.std(ddof=1) + EPS)


NOISY = ScriptedPolicy(p_malformed=0.3, low_value_weight=1.0)


def test_round_rows_follow_the_branching_decisions(cluster):
    r = rig(cluster, [], policy=NOISY)
    tr = r.trainer
    tr._refill()
    reqs = tr.frontiers.requests()
    assert len(reqs) == 2 and all(node.node_id == 0 for _, node in reqs)
    td, uids = tr._requests_td(reqs)
    tr._submit_batch_to_rollout(td)
    batch, failed = tr.replay_buffer.collect(uids)
    assert not failed
    rows = defaultdict(list)
    for key, e in zip(batch.keys, extras(batch)):
        rows[key.split("_")[0]].append(e)
    for (tree, node), uid in zip(reqs, uids):
        es = rows[uid]
        # empty store: S = 1 at every state, n(s) = ceil(8 * 1) = 8 (the budget 8 x 6 does not cap it)
        assert {e["n_branches"] for e in es} == {8} and {e["score"] for e in es} == {1.0}
        # one row per sampled reply; replies of the same action share one child (branch), its env step and reward
        assert len(es) == 8 and [e["reply"] for e in es] == list(range(8))
        children = {e["branch"]: e for e in es}
        assert sum(e["merged"] for e in children.values()) == 8
        assert len({e["action_text"] for e in children.values()}) == len(children) == es[0]["n_children"]
        for e in es:
            c = children[e["branch"]]
            assert (e["action_text"], e["step_reward"], e["child_state_key"]) == (
                c["action_text"], c["step_reward"], c["child_state_key"])
        # one group: children of this node of this tree
        assert {(e["tree_id"], e["parent_node_id"]) for e in es} == {(tree.tree_id, node.node_id)}
        for e in es:
            # Eq.2 with S = 1 everywhere and N_total(s_t) = 0 (w = 0.5): R = 0.5 novel - 0.1 invalid + 0.5 won
            novel = e["valid_action"] and e["child_state_key"] != e["state_key"]
            want = 0.5 * novel - 0.1 * (not e["valid_action"]) + 0.5 * e["won"]
            assert e["step_reward"] == pytest.approx(want)
            assert set(e) >= {"task_id", "step_index", "node_id", "parent_node_id", "state_key", "branch",
                              "r_novel", "r_score_diff", "r_success", "r_penalty", "valid_action",
                              "min_global_steps", "max_global_steps"}
    H.shutdown(r)


def test_advantages_hand_computed_and_padding_joins_no_group(cluster):
    from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size

    r = rig(cluster, [], policy=NOISY)
    tr = r.trainer
    tr._refill()
    update, m = tr.run_round(tr.frontiers.requests())
    assert m["expanded"] == 2 and m["pruned"] == 0
    es = extras(update)
    padded = upsample_batch_to_divisible_size(update, len(update) + 3, tr.tokenizer.eos_token_id)
    n_pad = len(padded) - len(update)
    assert n_pad == 3 and sum(t.get("is_padding", False) for t in padded.tags) == 3
    tr._compute_advantage(padded, {})
    adv = [float(a[0]) if a.numel() else 0.0 for a in fetch(padded, "advantages")]
    scores = [float(s.sum()) for s in fetch(padded, "rm_scores")]
    groups = defaultdict(list)
    for i, e in enumerate(es):
        groups[(e["tree_id"], e["parent_node_id"])].append(i)
    want = np.zeros(len(update))
    for idx in groups.values():
        want[idx] = hand_group_norm([es[i]["step_reward"] for i in idx])
    np.testing.assert_allclose(adv[: len(update)], want, atol=1e-5)
    assert any(abs(a) > 0 for a in adv[: len(update)]), "scripted replies gave identical rewards everywhere"
    # each row's reward is its own step reward (verl copied the last sibling's score onto all of them)
    np.testing.assert_allclose(scores[: len(update)], [e["step_reward"] for e in es], atol=1e-6)
    # padding rows: zero reward, zero advantage, no effect on the real rows' groups (checked above)
    assert adv[len(update):] == [0.0] * n_pad and scores[len(update):] == [0.0] * n_pad
    H.shutdown(r)


def test_pruned_node_emits_nothing_and_statistics_wait_for_the_commit(cluster):
    from threespo_verl.store.state_store import key_hash, scoped_keys

    r = rig(cluster, ["data.train_batch_size=1"], policy=NOISY)
    tr = r.trainer
    task = make("household").tasks("train")[7]
    root = make("household").reset(task)[0].state_key
    # 10 failures through the root (statistics per task: the store key is (task, state)), recorded but not
    # committed: S(root) is still 1 for this round
    root = scoped_keys(task.task_id, [root])[0]
    ray.get(tr.store.record_trajectories.remote([key_hash([root])] * 10, [False] * 10))
    tr.frontiers.add([task])
    update, m = tr.run_round(tr.frontiers.requests())
    assert m["n_hist"] == [8] and len(update) >= 2
    # run_round committed: N_fail = 10 >= xi and SR = 0 -> S = 0; a new tree of the task is pruned at its root
    assert ray.get(tr.store.lookup.remote([root]))[0].tolist() == [10]
    tr.frontiers.trees.clear()
    tr.frontiers.add([task])
    tree = tr.frontiers.trees[task.task_id]
    before = len(tq.kv_list("train").get("train", {}))
    update, m = tr.run_round(tr.frontiers.requests())
    assert len(update) == 0 and m["pruned"] == 1 and m["n_hist"] == [0]
    assert len(tq.kv_list("train").get("train", {})) == before  # its marker row was cleared, nothing trained
    assert tree.done and tree.trajectories[-1].end == "pruned"
    # the pruned path was recorded by the trainer (once, under the root's state from the marker row) and became
    # visible with this round's commit
    assert ray.get(tr.store.lookup.remote([root]))[0].tolist() == [11]
    H.shutdown(r)


def test_singleton_groups_are_followed_but_not_trained_on(cluster):
    always_look = ScriptedPolicy(goal_weight=0.0, low_value_weight=1.0, p_malformed=0.0,
                                 plans=None, plan_weight=1.0)
    r = rig(cluster, ["data.train_batch_size=1", "algorithm.threespo.g_max=1"], policy=always_look)
    tr = r.trainer
    tr._refill()
    before = len(tq.kv_list("train").get("train", {}))
    update, m = tr.run_round(tr.frontiers.requests())
    # g_max = 1: n(s) = 1, a single child: followed (the tree advanced) but no update row, and nothing left in TQ
    (tree,) = tr.frontiers.trees.values()
    assert m["singleton"] == 1 and len(update) == 0 and tree.env_steps == 1 and tree.head != 0
    assert len(tq.kv_list("train").get("train", {})) == before
    H.shutdown(r)


def _episode_rig(cluster, algo, n=4):
    tasks = make("household").tasks("train")
    policy = ScriptedPolicy(plans=household_plans(tasks[:64]), plan_weight=100.0, plan_move_weight=20.0,
                            p_malformed=0.05)
    return rig(cluster, [f"algorithm={algo}", f"actor_rollout_ref.rollout.n={n}", "env.max_steps=20",
                         "data.train_batch_size=2", "data.shuffle=False", "data.train_max_samples=64"],
               policy=policy)


def _episodes(batch):
    es = extras(batch)
    by_session = defaultdict(list)
    for i, (key, e) in enumerate(zip(batch.keys, es)):
        uid, session, idx = key.rsplit("_", 2)
        by_session[(uid, int(session))].append((int(idx), i))
    return es, {s: [i for _, i in sorted(v)] for s, v in by_session.items()}


def test_grpo_rows_and_advantages(cluster):
    r = _episode_rig(cluster, "grpo")
    tr = r.trainer
    tr.prepare_step()
    batch, _ = tr.replay_buffer.sample(global_steps=1, partition_id="train", batch_size=2)
    es, sessions = _episodes(batch)
    assert len(sessions) == 8  # 2 tasks x rollout.n = 4 episodes
    for rows in sessions.values():
        assert [es[i]["step_index"] for i in rows] == list(range(len(rows)))  # one row per env step
        assert es[rows[-1]]["done"] and not any(es[i]["done"] for i in rows[:-1])
    tr._compute_advantage(batch, {})
    adv = [float(a[0]) for a in fetch(batch, "advantages")]
    scores = [float(s.sum()) for s in fetch(batch, "rm_scores")]
    # step rewards: the outcome (won) on the last step, -0.1 on every invalid step (env.invalid_action_penalty)
    for rows in sessions.values():
        for i in rows:
            want = -0.1 * (not es[i]["valid_action"]) + float(es[i]["won"]) * (i == rows[-1])
            assert es[i]["step_reward"] == pytest.approx(want)
    returns = {s: sum(es[i]["step_reward"] for i in rows) for s, rows in sessions.items()}
    assert len(set(returns.values())) > 1, "the scripted policy should win some episodes and lose others"
    assert any(not e["valid_action"] for e in es), "some invalid steps should carry the penalty"
    for uid in {s[0] for s in sessions}:
        ss = sorted(s for s in sessions if s[0] == uid)
        a_ep = hand_group_norm([returns[s] for s in ss])
        for s, a in zip(ss, a_ep):
            for i in sessions[s]:
                assert adv[i] == pytest.approx(a, abs=1e-5)  # episode advantage broadcast to every step
            # verl's GRPO reads the final row only: it carries the episode's return
            assert scores[sessions[s][-1]] == pytest.approx(returns[s], abs=1e-6)
            assert [scores[i] for i in sessions[s][:-1]] == [0.0] * (len(sessions[s]) - 1)
    H.shutdown(r)


def test_gigpo_rows_and_advantages(cluster):
    r = _episode_rig(cluster, "gigpo")
    tr = r.trainer
    gamma = float(r.config.algorithm.gigpo.gamma)
    tr.prepare_step()
    batch, _ = tr.replay_buffer.sample(global_steps=1, partition_id="train", batch_size=2)
    es, sessions = _episodes(batch)
    tr._compute_advantage(batch, {})
    adv = np.array([float(a[0]) for a in fetch(batch, "advantages")])
    rew = np.array([e["step_reward"] for e in es])  # outcome on the last step, -0.1 on invalid steps
    want = np.zeros(len(es))
    # episode part: the return (sum of step rewards) normalised over the task's rollout.n episodes, on every step
    for uid in {s[0] for s in sessions}:
        ss = sorted(s for s in sessions if s[0] == uid)
        for s, a in zip(ss, hand_group_norm([rew[sessions[s]].sum() for s in ss])):
            want[sessions[s]] += a
    # step part: G_t = sum_k gamma^k r_{t+k} among the rows of the same task acting from the same anchor state
    anchor = defaultdict(list)
    g = np.zeros(len(es))
    for s, rows in sessions.items():
        acc = 0.0
        for i in reversed(rows):
            acc = rew[i] + gamma * acc
            g[i] = acc
        for i in rows:
            anchor[(s[0], es[i]["state_key"])].append(i)
    for idx in anchor.values():
        want[idx] += hand_group_norm(g[idx])
    np.testing.assert_allclose(adv, want, atol=1e-5)
    assert np.abs(want).max() > 0
    H.shutdown(r)


def test_validation_plays_the_fixed_panel_without_branching_or_statistics(cluster):
    import types

    r = rig(cluster, ["env.max_steps=4"], policy=NOISY)
    tr = r.trainer
    tr.config.trainer.log_val_generations = 0
    tr.reward_loop_manager = types.SimpleNamespace(reward_loop_worker_handles=[])  # rewards come from the env
    metrics = tr._validate()
    panel_size = len(make("household").tasks("test"))
    assert metrics["val-aux/household/episodes"] == panel_size  # every panel task exactly once (val_kwargs.n = 1)
    types_seen = {k.split("/")[-1] for k in metrics if k.startswith("val-core/household/success/")}
    assert types_seen == {"pick", "clean", "heat", "cool", "look", "pick2"}
    assert 0.0 <= metrics["val-core/household/success"] <= 1.0
    stats = ray.get(tr.store.stats.remote())
    assert stats["states"] == 0 and stats["pending_trajectories"] == 0  # validation never touches the statistics
    H.shutdown(r)


def test_math_constants_of_the_fixture():
    # the hand formulas above use torch-style unbiased std and eps = 1e-6, as verl's GRPO
    assert math.isclose(hand_group_norm([0.0, 1.0])[1], 0.5 / (math.sqrt(0.5) + EPS))


def test_spa_rows_rewards_and_advantages(cluster):
    model, root = cluster
    pe = H.constant_progress_estimator(model, root / "pe-const", 0.25)
    alpha, beta = 2.0, 0.5
    r = rig(cluster, ["algorithm=spa", "actor_rollout_ref.rollout.n=4", "env.max_steps=20", "data.train_batch_size=2",
                      "data.shuffle=False", "data.train_max_samples=64", f"algorithm.spa.estimator_path={pe}",
                      f"algorithm.spa.alpha_p={alpha}", f"algorithm.spa.beta={beta}",
                      f"algorithm.spa.worker_name=pe-{uuid.uuid4().hex[:6]}"],
            policy=ScriptedPolicy(plans=household_plans(make("household").tasks("train")[:64]), plan_weight=100.0,
                                  plan_move_weight=20.0, p_malformed=0.2))
    tr = r.trainer
    tr.prepare_step()
    batch, _ = tr.replay_buffer.sample(global_steps=1, partition_id="train", batch_size=2)
    es, sessions = _episodes(batch)
    assert len(sessions) == 8
    # per step: alpha * c_t (c_t = 0.25: one readout per step) + beta * g'_t, with the default guard (normalized)
    # g'_t = 1{admissible and state changed} / T, T the episode's length
    length = {i: len(rows) for rows in sessions.values() for i in rows}
    for i, e in enumerate(es):
        assert e["r_progress"] == pytest.approx(alpha * 0.25, abs=1e-5)
        g = float(e["valid_action"] and e["child_state_key"] != e["state_key"]) / length[i]
        assert e["r_grounding"] == pytest.approx(beta * g)
        penalty = 0.1 * (not e["valid_action"])  # env.invalid_action_penalty, as for every algorithm
        assert e["r_penalty"] == pytest.approx(penalty)
        assert e["step_reward"] == pytest.approx(alpha * 0.25 + beta * g - penalty, abs=1e-5)
    assert any(e["r_grounding"] == 0 for e in es) and any(e["r_grounding"] > 0 for e in es)
    tr._compute_advantage(batch, {})
    adv = np.array([float(a[0]) for a in fetch(batch, "advantages")])
    rm_rows = fetch(batch, "rm_scores")
    scores = np.array([float(s.sum()) for s in rm_rows])
    np.testing.assert_allclose(scores, [e["step_reward"] for e in es], atol=1e-6)  # one reward per row
    assert all(float(s[:-1].abs().sum()) == 0.0 for s in rm_rows)  # ... at its last response token
    # A_t = G_t - mean over the task's sessions that reached step t of G_t (0 when only one reached it)
    to_go = np.zeros(len(es))
    for rows in sessions.values():
        acc = 0.0
        for i in reversed(rows):
            acc += es[i]["step_reward"]
            to_go[i] = acc
    want = np.zeros(len(es))
    by_step = defaultdict(list)
    for s, rows in sessions.items():
        for t, i in enumerate(rows):
            by_step[(s[0], t)].append(i)
    for idx in by_step.values():
        if len(idx) > 1:
            want[idx] = to_go[idx] - to_go[idx].mean()
    np.testing.assert_allclose(adv, want, atol=1e-5)
    assert np.abs(want).max() > 0
    H.shutdown(r)


def test_spa_without_an_estimator_names_the_commands(cluster):
    with pytest.raises(FileNotFoundError, match="threespo-verl spa collect"):
        rig(cluster, ["algorithm=spa", "actor_rollout_ref.rollout.n=2", "algorithm.spa.estimator_path=/nonexistent"])


def test_post_step_release_through_the_trainer(cluster):
    """update_mode=post_step through verl's agent loop and TransferQueue: each update holds exactly the groups whose
    subtree closed in the round before it (or whose tree finished), every group is trained once, a group's rows had
    their old-log-prob pass in the round that sampled them (the actor is not part of this test: the pass is recorded,
    the actor's numbers are checked by the e2e tests), and the waiting rows stay in TransferQueue until released."""
    tasks = make("household").tasks("train")
    policy = ScriptedPolicy(plans=household_plans(tasks[:64]), plan_weight=30.0, plan_move_weight=6.0,
                            p_malformed=0.1)
    r = rig(cluster, ["algorithm.threespo.update_mode=post_step", "algorithm.threespo.reward_stats=update",
                      "env.max_steps=4", "algorithm.threespo.env_step_budget=24", "data.train_max_samples=64"],
            policy=policy)
    tr = r.trainer
    sampled_in: dict[str, int] = {}  # row key -> round of its old-log-prob pass
    tr._round_old_log_probs = lambda rows, acc: sampled_in.update({k: tr.round - 1 for k in rows.keys})
    original = tr.run_round
    added: list = []  # (tree_id, node_id, round, keys) of every group, as run_round hands them to the ledger

    def run_round(reqs):
        update, m = original(reqs)
        added.extend((t, n, tr.round - 1, list(k)) for t, n, k, _tags in m["groups"])
        return update, m

    tr.run_round = run_round
    trained: list[tuple[str, int]] = []
    for _update in range(6):
        batch, m = tr.explore()
        last = tr.round - 1
        groups = {(t, n): (rnd, keys) for t, n, rnd, keys in added}
        released = {(e["tree_id"], e["parent_node_id"]) for e in extras(batch)}
        # exactly the groups that are not pending any more; each closed (its tree retired or its node not open)
        pending = {(g.tree_id, g.node_id) for g in tr.ledger.groups}
        assert released == set(groups) - pending - set(trained), (released, pending)
        for tree_id, node_id in released:
            tree = tr.frontiers.by_tree_id(tree_id)
            assert tree is None or node_id not in tree.open_nodes()
            rnd, keys = groups[(tree_id, node_id)]
            assert {sampled_in[k] for k in keys} == {rnd}  # the pass ran when the rows were sampled
        for tree_id, node_id in pending:
            assert node_id in tr.frontiers.by_tree_id(tree_id).open_nodes()
        assert sorted(batch.keys) == sorted(k for g in released for k in groups[g][1])
        waits = [last - groups[g][0] for g in released for _ in groups[g][1]]
        assert m["explore/row_wait_rounds"] == pytest.approx(np.mean(waits))
        trained.extend(released)
        assert len(trained) == len(set(trained))  # every group once
        # the waiting rows are still in TransferQueue; the trained ones go (as verl's fit clears them)
        left = set(tq.kv_list("train").get("train", {}))
        assert {k for g in tr.ledger.groups for k in g.keys} <= left
        tq.kv_clear(keys=batch.keys, partition_id="train")
    assert any(groups[g][0] < last for g in trained if groups[g][0] is not None)  # some group waited
    H.shutdown(r)


def test_a_repeated_small_task_pool_keeps_training(cluster):
    """8 tasks served again and again, a policy that rarely wins and episodes that time out: the statistics may
    truncate roots (Eq.1), but the trainer skips and counts such tasks instead of raising, and every update still
    trains (DESIGN §2.6: an expansion's failed siblings count once above it)."""
    tasks = make("household").tasks("train")
    policy = ScriptedPolicy(plans=household_plans(tasks[:8]), plan_weight=3.0, p_malformed=0.1)
    r = rig(cluster, ["algorithm.threespo.update_mode=post_step", "data.train_max_samples=8", "env.max_steps=3",
                      "algorithm.threespo.env_step_budget=24", "data.train_batch_size=4"], policy=policy)
    tr = r.trainer
    tr._round_old_log_probs = lambda rows, acc: None  # the actor is not part of this test
    skipped = 0
    for _update in range(12):
        batch, m = tr.explore()
        assert len(batch) > 0
        skipped += m["explore/skipped_truncated_roots"]
        tq.kv_clear(keys=batch.keys, partition_id="train")
    assert tr.counters["trees_finished"] >= 8  # the pool came round again
    print(f"skipped truncated roots over 12 updates: {skipped}")
    H.shutdown(r)
