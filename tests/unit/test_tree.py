"""3SPO exploration tree (DESIGN §2.5-2.6): ranked best-first backtracking DFS, memo, budget, persistence."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threespo_verl.envs.base import Task
from threespo_verl.rollout.tree import ChildOutcome, Frontiers, TaskTree, trajectory_keys

TASK = Task("household/train/00001", "pick", "household")


def child(action, key, reward, done=False, won=False):
    return ChildOutcome(action=action, action_text=action or "(bad)", state_key=key, obs_text=f"obs {key}",
                        reward=reward, done=done, won=won)


def test_expansion_ranks_children_and_pushes_backtrack_points():
    tree = TaskTree(TASK, budget=100)
    assert tree.current().node_id == 0
    ended = tree.expand(0, "s0", "start", [child("a", "s1", 0.2), child("b", "s2", 0.5), child("c", "s3", 0.4),
                                           child("d", "s4", 0.9, done=True, won=True)])
    # the terminal child ends one (successful) trajectory over root and child states
    assert [(t.path_keys, t.success, t.end, t.length) for t in ended] == [(("s0", "s4"), True, "won", 1)]
    # best non-terminal child (b, R=0.5) is the new head; the stack holds c (0.4) on top of a (0.2)
    ids = {n.action_text: n.node_id for n in tree.nodes.values()}
    assert tree.head == ids["b"]
    assert tree.stack == [ids["a"], ids["c"]]
    assert tree.env_steps == 4 and tree.expansions == 1
    # history and prefixes of the head
    head = tree.current()
    assert head.actions == ("b",) and tree.history(head) == [("start", "b")]
    assert tree.path_keys(head) == ("s0", "s2")


def test_ties_keep_sampling_order_and_all_terminal_backtracks():
    tree = TaskTree(TASK, budget=100)
    tree.expand(0, "s0", "o", [child("x", "s1", 0.5), child("y", "s2", 0.5)])
    x, y = (n.node_id for n in tree.nodes.values() if n.parent_id == 0)
    assert tree.head == x and tree.stack == [y]
    # every child of x is terminal (a failure and a time-out): the path ends, y is popped
    ended = tree.expand(x, "s1", "o1", [child("p", "s5", -0.1, done=True), child("q", "s6", 0.0, done=True)])
    assert [(t.path_keys, t.success, t.end) for t in ended] == [(("s0", "s1", "s5"), False, "failed"),
                                                               (("s0", "s1", "s6"), False, "failed")]
    assert tree.head == y and tree.stack == []


def test_prune_ends_a_trajectory_and_backtracks():
    tree = TaskTree(TASK, budget=100)
    tree.expand(0, "s0", "o", [child("x", "s1", 0.5), child("y", "s2", 0.1)])
    x = tree.head
    traj = tree.prune(x)
    assert (traj.path_keys, traj.success, traj.end, traj.length) == (("s0", "s1"), False, "pruned", 1)
    assert tree.pruned_nodes == 1 and tree.nodes[tree.head].action_text == "y"
    # pruning the last open node finishes the tree
    tree.prune(tree.head)
    assert tree.done and tree.current() is None and len(tree.trajectories) == 2


def test_pruned_root_records_its_own_state():
    tree = TaskTree(TASK, budget=10)
    traj = tree.prune(0, "root", "obs")
    assert traj.path_keys == ("root",) and tree.done


def test_memo_keeps_repeated_state_action_off_the_stack():
    tree = TaskTree(TASK, budget=100)
    # from s0, 'look' stays in s0 (a no-op): the child repeats the parent's state
    tree.expand(0, "s0", "o", [child("go", "s1", 0.5), child("look", "s0", 0.0)])
    look = next(n for n in tree.nodes.values() if n.action_text == "look")
    assert tree.stack == [look.node_id]
    # back in s0 through another path, trying 'look' again: already explored from s0 -> no backtrack point
    go = tree.head
    tree.expand(go, "s1", "o1", [child("back", "s0", 0.3)])
    back = tree.head
    tree.expand(back, "s0", "o", [child("look", "s0", 0.0), child("go", "s1", 0.0)])
    assert tree.head == look.node_id and tree.stack == []  # both repeats skipped; the old backtrack point is next


def test_budget_and_trajectory_cap_finish_the_tree():
    tree = TaskTree(TASK, budget=5)
    tree.expand(0, "s0", "o", [child("a", "s1", 0.1), child("b", "s2", 0.0), child("c", "s3", 0.0)])
    assert tree.remaining_budget == 2 and not tree.done
    tree.expand(tree.head, "s1", "o", [child("d", "s4", 0.1), child("e", "s5", 0.0)])
    assert tree.done and tree.current() is None
    with pytest.raises(ValueError, match="not the node to expand"):
        tree.expand(tree.head, "s4", "o", [child("f", "s6", 0.0)])
    capped = TaskTree(TASK, budget=100, max_trajectories=2)
    capped.expand(0, "s0", "o", [child("a", "s1", 1.0, done=True, won=True), child("b", "s2", 0.0, done=True),
                                 child("c", "s3", 0.0)])
    assert capped.done and capped.solved


def test_results_must_come_back_for_the_requested_node():
    tree = TaskTree(TASK, budget=100)
    with pytest.raises(ValueError):
        tree.expand(7, "s", "o", [child("a", "s1", 0.0)])
    with pytest.raises(ValueError, match="at least one child"):
        tree.expand(0, "s", "o", [])


def test_trajectory_keys_dedupes_in_order():
    assert trajectory_keys(["a", "b", None, "a"], "c", "b") == ("a", "b", "c")


def test_frontiers_retire_and_persist():
    f = Frontiers(budget=3, max_trajectories=8)
    tasks = [Task(f"t/{i}", "pick", "household") for i in range(3)]
    f.add(tasks)
    with pytest.raises(ValueError, match="already being explored"):
        f.add(tasks[:1])
    reqs = f.requests()
    assert [t.task_id for t, _ in reqs] == ["t/0", "t/1", "t/2"]
    reqs[0][0].expand(0, "s0", "o", [child("a", "s1", 0.0), child("b", "s2", 0.0), child("c", "s3", 0.0)])
    state = json.loads(json.dumps(f.state_dict()))  # JSON-serialisable
    g = Frontiers.from_state_dict(state)
    assert g.state_dict() == f.state_dict()
    assert [t.task_id for t in g.retire()] == ["t/0"] and len(g) == 2
    assert {t.tree_id for t in g.trees.values()} == {"t/1#1", "t/2#2"}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.floats(-1, 1), st.booleans(), st.integers(0, 6)), min_size=1, max_size=5),
                min_size=1, max_size=30), st.integers(1, 40))
def test_tree_invariants(expansions, budget):
    """Whatever the children: env steps never exceed budget + the last expansion, every node is expanded at most
    once, the stack holds only open unexpanded nodes, and a state_dict round trip is exact."""
    tree = TaskTree(TASK, budget=budget, max_trajectories=10)
    expanded = set()
    for kids in expansions:
        node = tree.current()
        if node is None:
            break
        before = tree.env_steps
        assert node.node_id not in expanded
        expanded.add(node.node_id)
        tree.expand(node.node_id, f"s{node.depth}", "o",
                    [child(f"a{k}", f"s{node.depth + 1}.{k}", r, done=d) for r, d, k in kids])
        assert before < budget
        assert set(tree.stack).isdisjoint(expanded)
        assert all(not tree.nodes[i].terminal for i in tree.stack)
    assert TaskTree.from_state_dict(json.loads(json.dumps(tree.state_dict()))).state_dict() == tree.state_dict()
