"""3SPO's post-step release rule (threespo_verl/rollout/release.py, DESIGN §2.7) on a hand-built tree: which groups
each update takes, with which rescored Eq.2 rewards; the store records of one expansion's failed siblings; the
env-step schedule; and a waiting row's old log-probs staying those of its sampling time."""

from __future__ import annotations

import math

import pytest

from threespo_verl.envs.base import Task
from threespo_verl.rollout.expand import ScoreParams, rescore_rows
from threespo_verl.rollout.release import GroupLedger, wait_rounds
from threespo_verl.rollout.tree import ChildOutcome, Frontiers, TaskTree, Trajectory, store_records
from threespo_verl.store.state_store import StateStore
from threespo_verl.verl_glue.schedule import EnvStepSchedule

TASK = Task(task_id="household/train/00001", task_type="pick", env_name="household")


def child(node_id: int, reward: float, done: bool = False, won: bool = False) -> ChildOutcome:
    return ChildOutcome(action=f"a{node_id}", action_text=f"a{node_id}", state_key=f"s{node_id}",
                        obs_text=f"o{node_id}", reward=reward, done=done, won=won)


def play_rounds():
    """The fixture tree, one expansion per round, and what each round leaves for the ledger and the store:

        round 0: expand 0 -> children 1 (R .5), 2 (R .3), both open: head 1, stack [2]
        round 1: expand 1 -> 3 (won), 4 (failed): path ends, backtrack to 2     -> group of node 1 closes now
        round 2: expand 2 -> 5 (open, R .4), 6 (failed): head 5
        round 3: expand 5 -> 7 (won), 8 (failed): stack empty, the tree is done -> groups of 0, 2 and 5 close now

    Yields (round, expanded node id, ended trajectories, prefix keys) after each expansion."""
    tree = TaskTree(TASK, budget=100, tree_id="t#0")
    plan = {0: [child(1, .5), child(2, .3)], 1: [child(3, 1, True, True), child(4, 0, True)],
            2: [child(5, .4), child(6, 0, True)], 5: [child(7, 1, True, True), child(8, 0, True)]}
    # node ids are handed out in creation order: 1, 2 | 3, 4 | 5, 6 | 7, 8 (as in the plan)
    for rnd, node_id in enumerate((0, 1, 2, 5)):
        node = tree.nodes[node_id]
        ended = tree.expand(node_id, f"s{node_id}", f"o{node_id}", plan[node_id])
        yield rnd, tree, node_id, ended, tree.path_keys(node)


@pytest.mark.parametrize("mode, want", [
    ("post_step", {0: [], 1: [1], 2: [], 3: [0, 2, 5]}),
    ("post_step_own_round", {0: [0], 1: [1], 2: [2], 3: [5]}),
    ("post_trajectory", {0: [], 1: [], 2: [], 3: [0, 1, 2, 5]}),
])
def test_release_rule_on_a_three_level_tree(mode, want):
    ledger = GroupLedger(mode)
    got, waits = {}, {}
    for rnd, tree, node_id, _ended, _prefix in play_rounds():
        ledger.add("t#0", node_id, rnd, [f"k{node_id}a", f"k{node_id}b"], [{}, {}])
        out = ledger.release(lambda tid: None if tree.done else tree.open_nodes(), rnd, batch_done=tree.done)
        got[rnd] = [g.node_id for g in out]
        waits[rnd] = wait_rounds(out, rnd)
    assert got == want
    if mode == "post_step":
        # the root's group waits for the whole tree (3 rounds), node 2's one round, leaf-level groups none
        assert waits == {0: [], 1: [0, 0], 2: [], 3: [3, 3, 1, 1, 0, 0]}
    assert len(ledger) == 0


def test_open_nodes_are_the_frontier_and_its_ancestors():
    opened = [tree.open_nodes() for _rnd, tree, _node_id, _ended, _prefix in play_rounds()]
    # after round 0: head 1, stack [2]; after 1: head 2; after 2: head 5 (parent 2, root 0); after 3: done
    assert opened[:3] == [{0, 1, 2}, {0, 2}, {0, 2, 5}] and opened[3] == set()


def test_released_groups_are_rescored_from_the_statistics_committed_at_release():
    """Eq.2 (alpha = 1 for graded scores, omega_k 0.1) from the store committed after the release round."""
    params = ScoreParams(alpha=1.0)
    store = StateStore()
    ledger = GroupLedger("post_step")
    rows_of = {0: [1, 2], 1: [3, 4], 2: [5, 6], 5: [7, 8]}
    rewards = {}
    for rnd, tree, node_id, ended, prefix in play_rounds():
        for keys, won in store_records(ended, prefix):
            store.record_trajectory(list(keys), won)
        store.commit()
        ledger.add("t#0", node_id, rnd, [str(c) for c in rows_of[node_id]], [{}, {}])
        for g in ledger.release(lambda tid: None if tree.done else tree.open_nodes(), rnd):
            rows = [{"task_id": "x", "state_key": f"s{g.node_id}", "child_state_key": f"s{c}",
                     "valid_action": True, "won": tree.nodes[c].won, "done": tree.nodes[c].terminal}
                    for c in rows_of[g.node_id]]
            lookup = lambda keys: (*store.lookup(keys), store.t)  # noqa: E731
            rewards[g.node_id] = (rnd, rescore_rows(rows, ScoreParams(alpha=1.0, state_scope="global"), lookup).total)
    del params
    # released in round 1: 2 trajectories committed (t = 3); s1: 2 through it, 1 won; s3 won once, s4 failed once.
    # S_u(s) = exp(-log(3) SR): S(s1) = 3^-0.5, S(s3) = 3^-1, S(s4) = 1; w = 0.5 e^-0.2 (N_total(s1) = 2)
    w1 = 0.5 * math.exp(-0.2)
    rnd, r = rewards[1]
    assert rnd == 1
    assert r[0] == pytest.approx(w1 + (0.5 - w1) * (3 ** -0.5 - 1 / 3) + 0.5, abs=1e-5)  # 3 won
    assert r[1] == pytest.approx(w1 + (0.5 - w1) * (3 ** -0.5 - 1.0), abs=1e-5)  # 4 failed
    # the root's group, released in round 3 with the whole tree's 5 trajectories (t = 6): s0 5 through it, 2 won;
    # s1 2/1 won, s2 3/1 (6 failed, then 7 won and 8 failed under 5): w = 0.5 e^-0.5
    w0 = 0.5 * math.exp(-0.5)
    rnd, r = rewards[0]
    assert rnd == 3
    assert r[0] == pytest.approx(w0 + (0.5 - w0) * (6 ** -0.4 - 6 ** -0.5), abs=1e-5)
    assert r[1] == pytest.approx(w0 + (0.5 - w0) * (6 ** -0.4 - 6 ** (-1 / 3)), abs=1e-5)
    assert r[0] > r[1]  # the child whose subtree succeeded more often is credited over its sibling


def test_failed_siblings_of_one_expansion_count_once_above_it():
    """Eight time-outs of one leaf expansion: one failure on the path above, one on each child's own state."""
    fails = [Trajectory("t", ("s0", "s1", f"c{i}"), False, "failed", 2) for i in range(8)]
    won = Trajectory("t", ("s0", "s1", "w"), True, "won", 2)
    recs = store_records([*fails[:3], won, *fails[3:]], ("s0", "s1"))
    assert len(recs) == 9  # every ended trajectory stays one record (t counts them all)
    store = StateStore()
    for keys, ok in recs:
        store.record_trajectory(list(keys), ok)
    store.commit()
    n_total, n_success = store.lookup(["s0", "s1", "c0", "c5", "w"])
    assert n_total.tolist() == [2, 2, 1, 1, 1] and n_success.tolist() == [1, 1, 0, 0, 1]
    assert store.t == 10


def test_repeated_leaf_timeouts_no_longer_truncate_the_root():
    """With every sibling counted (the old rule), two leaf expansions whose 8 children all time out add 16
    failures at the root: N_fail >= xi = 10 with SR = 0 truncates it (S = 0). Counted once per expansion, the root
    keeps S > 0 after as many as 9 such expansions."""
    from threespo_verl.algos.threespo import state_score

    store = StateStore()
    for e in range(9):
        ended = [Trajectory("t", ("root", f"n{e}", f"c{e}.{i}"), False, "failed", 2) for i in range(8)]
        for keys, ok in store_records(ended, ("root", f"n{e}")):
            store.record_trajectory(list(keys), ok)
    store.commit()
    n_total, n_success = store.lookup(["root"])
    assert n_total.tolist() == [9]
    assert state_score(n_total, n_success, store.t)[0] > 0
    old = StateStore()
    for e in range(2):
        for i in range(8):
            old.record_trajectory(["root", f"n{e}", f"c{e}.{i}"], False)
    old.commit()
    assert state_score(*old.lookup(["root"]), old.t)[0] == 0


def test_ledger_and_frontiers_lookup_survive_a_state_dict():
    ledger = GroupLedger("post_step")
    ledger.add("t#3", 4, 7, ["a", "b"], [{"x": 1}, {"x": 2}])
    again = GroupLedger.from_state_dict(ledger.state_dict())
    assert again.state_dict() == ledger.state_dict() and again.rows == 2
    f = Frontiers(10)
    f.add([TASK])
    tree = f.trees[TASK.task_id]
    assert f.by_tree_id(tree.tree_id) is tree and f.by_tree_id(f"{TASK.task_id}#99") is None
    with pytest.raises(ValueError, match="update_mode"):
        GroupLedger("post_round")


def test_env_step_schedule_validates_at_checkpoints_and_stops_at_the_budget():
    s = EnvStepSchedule(total=500, val_every=100)
    assert s.checkpoints() == [100, 200, 300, 400, 500]
    # updates of uneven size: 60 (nothing), 130 (crossed 100), 390 (crossed 200 and 300: one validation), 400
    # (crossed 400), 520 (budget: validate and stop)
    assert [s.decide(e) for e in (60, 130, 390, 400, 450, 520)] == [
        (False, False), (True, False), (True, False), (True, False), (False, False), (True, True)]
    assert s.stopped and EnvStepSchedule.from_state_dict(s.state_dict()) == s
    assert EnvStepSchedule(total=250, val_every=100).checkpoints() == [100, 200, 250]
    no_val = EnvStepSchedule(total=50)
    assert no_val.decide(10) == (False, False) and no_val.decide(50) == (False, True)
