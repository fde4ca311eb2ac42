"""3SPO exploration of one task (DESIGN §2.5-2.6): ranked best-first backtracking DFS under an env-step budget.

A ``TaskTree`` holds the search tree of one task. Each training round expands its *head* node once:

* the expansion samples n(s) actions at the head's state (Eq.3, capped by the remaining budget), merges identical
  action texts, steps one environment per distinct action and scores each child with the Eq.2 step reward;
* children that end the episode (won, lost, time-out) each end one trajectory;
* the remaining children are ranked by their step reward R: the best becomes the new head (depth first), the others
  are pushed on the task's backtrack stack, so that the best remaining one is on top;
* a child that repeats a (state, action) pair already explored in this tree (the *explored-action memo*, which lives
  for one tree) is kept as a row but never becomes a backtrack point: its subtree was explored already;
* when the path ends (all children terminal, or the head is pruned because n(s) = 0) the head is popped from the stack.

A trajectory is the root-to-node path that ended (won, failed, time-out or pruned); its distinct state keys are what
the state store records (DESIGN §2.6). Nodes still on the stack when the tree stops are not trajectories (they never
ended) and record nothing.

The tree stops when its env-step budget is spent (default G x H, the env steps GRPO spends on a task), when it has
``max_trajectories`` finished trajectories, or when the stack runs dry. Env steps count the actions taken from tree
nodes (one per distinct child); replaying a prefix to restore an environment is overhead, counted elsewhere.

Pure Python, JSON-serialisable (``state_dict`` / ``from_state_dict``) so that frontiers survive a checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from threespo_verl.envs.base import Task


def trajectory_keys(path_keys: Iterable[str | None], *more: str | None) -> tuple[str, ...]:
    """The distinct state keys of a path in first-visit order (a trajectory counts each state once), None skipped."""
    seen: dict[str, None] = {}
    for k in (*path_keys, *more):
        if k is not None:
            seen.setdefault(k, None)
    return tuple(seen)


def store_records(ended: Sequence["Trajectory"], prefix_keys: Sequence[str]) -> list[tuple[tuple[str, ...], bool]]:
    """What the state store records for the trajectories that one expansion ended (DESIGN §2.6): (state keys, won)
    pairs. A won child records its whole path. The failed children (lost, timed out, pruned) of one expansion count
    as *one* failure for the states above them (``prefix_keys``: the expanded node's path): the first records its
    whole path, every other one only the states its own path adds beyond the prefix. Counted once per sibling,
    eight time-outs of one leaf expansion would add eight failures to every state on its path and truncate the
    root after a few such leaves (xi = 10). Every ended trajectory stays one record, so t counts them all."""
    prefix = set(prefix_keys)
    out: list[tuple[tuple[str, ...], bool]] = []
    prefix_failed = False
    for traj in ended:
        if traj.success:
            out.append((traj.path_keys, True))
        elif not prefix_failed:
            out.append((traj.path_keys, False))
            prefix_failed = True
        else:
            out.append((tuple(k for k in traj.path_keys if k not in prefix), False))
    return out


@dataclasses.dataclass
class Node:
    """One node of a task's tree: the state reached by ``actions`` (the prefix from the root)."""

    node_id: int
    parent_id: int  # -1 for the root
    depth: int  # env steps from the root
    actions: tuple[str | None, ...]  # parsed actions from the root (None = invalid step); what a replay needs
    action_text: str = ""  # the action as shown in the prompt history ("" for the root)
    state_key: str | None = None  # canonical key (known once an environment reached the node)
    obs_text: str | None = None  # observation text at the node (prompt history)
    reward: float = 0.0  # Eq.2 step reward of the transition into this node
    terminal: bool = False
    won: bool = False


@dataclasses.dataclass(frozen=True)
class ChildOutcome:
    """What one distinct branch of an expansion produced (reported by the rollout)."""

    action: str | None
    action_text: str
    state_key: str
    obs_text: str
    reward: float
    done: bool
    won: bool


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """A finished root-to-node path: its distinct state keys (in path order) and whether it succeeded."""

    task_id: str
    path_keys: tuple[str, ...]
    success: bool
    end: str  # "won" | "failed" (episode ended without success, incl. time-out) | "pruned"
    length: int  # env steps of the path


class TaskTree:
    """The search tree, backtrack stack, memo and budget of one task (see module docstring)."""

    def __init__(self, task: Task, budget: int, max_trajectories: int = 32, tree_id: str | None = None) -> None:
        if budget < 1:
            raise ValueError(f"env-step budget must be >= 1, got {budget}")
        if max_trajectories < 1:
            raise ValueError(f"max_trajectories must be >= 1, got {max_trajectories}")
        self.task = task
        #: unique per tree in a run (the same task explored again later gets a new tree): scopes node ids
        self.tree_id = tree_id or task.task_id
        self.budget = int(budget)
        self.max_trajectories = int(max_trajectories)
        self.nodes: dict[int, Node] = {0: Node(node_id=0, parent_id=-1, depth=0, actions=())}
        self.head: int | None = 0
        self.stack: list[int] = []  # backtrack points; the last one is popped first
        self.memo: set[tuple[str, str | None]] = set()  # (state key, action) explored in this tree
        self.env_steps = 0
        self.expansions = 0
        self.pruned_nodes = 0
        self.trajectories: list[Trajectory] = []
        self._next_id = 1

    # ---- reads ---------------------------------------------------------------------------------------------------
    @property
    def task_id(self) -> str:
        return self.task.task_id

    @property
    def remaining_budget(self) -> int:
        return max(0, self.budget - self.env_steps)

    @property
    def done(self) -> bool:
        return (self.head is None or self.remaining_budget == 0
                or len(self.trajectories) >= self.max_trajectories)

    @property
    def solved(self) -> bool:
        return any(t.success for t in self.trajectories)

    def current(self) -> Node | None:
        """The node to expand in the next round (None when the tree is done)."""
        return None if self.done else self.nodes[self.head]

    def path(self, node: Node) -> list[Node]:
        """Nodes from the root to ``node`` (inclusive)."""
        out = [node]
        while out[-1].parent_id >= 0:
            out.append(self.nodes[out[-1].parent_id])
        return out[::-1]

    def history(self, node: Node) -> list[tuple[str, str]]:
        """(observation, action) pairs that led to ``node``, oldest first (the prompt keeps the last K)."""
        p = self.path(node)
        return [(a.obs_text or "", b.action_text) for a, b in zip(p[:-1], p[1:])]

    def path_keys(self, node: Node) -> tuple[str, ...]:
        """Distinct state keys on the root-to-node path, in first-visit order (each counted once per trajectory)."""
        return trajectory_keys(n.state_key for n in self.path(node))

    def state_keys(self) -> set[str]:
        """Every distinct state reached in this tree."""
        return {n.state_key for n in self.nodes.values() if n.state_key is not None}

    def open_nodes(self) -> set[int]:
        """Nodes whose subtree is still open: the head and every backtrack point, and all their ancestors (a node
        is closed once no descendant of it, nor the node itself, is left to expand). Empty when the tree is done."""
        if self.done:
            return set()
        out: set[int] = set()
        for nid in (self.head, *self.stack):
            while nid is not None and nid >= 0 and nid not in out:
                out.add(nid)
                nid = self.nodes[nid].parent_id
        return out

    # ---- updates -------------------------------------------------------------------------------------------------
    def _check_head(self, node_id: int) -> Node:
        if self.done or node_id != self.head:
            raise ValueError(f"task {self.task_id}: node {node_id} is not the node to expand (head={self.head}, "
                             f"done={self.done}); results must come back for the requested node")
        return self.nodes[node_id]

    def _observe(self, node: Node, state_key: str | None, obs_text: str | None) -> None:
        if node.state_key is None and state_key is not None:
            node.state_key = state_key
        if node.obs_text is None and obs_text is not None:
            node.obs_text = obs_text

    def _end(self, node: Node, success: bool, end: str) -> Trajectory:
        traj = Trajectory(self.task_id, self.path_keys(node), bool(success), end, node.depth)
        self.trajectories.append(traj)
        return traj

    def _backtrack(self) -> None:
        self.head = self.stack.pop() if self.stack else None

    def expand(self, node_id: int, state_key: str, obs_text: str,
               children: Sequence[ChildOutcome]) -> list[Trajectory]:
        """Apply one expansion of the head (its ``state_key``/``obs_text`` as the rollout saw them) and return the
        trajectories it ended. ``children`` are the distinct branches (one env step each)."""
        node = self._check_head(node_id)
        if not children:
            raise ValueError("an expansion has at least one child; a node with n(s) = 0 is pruned (use prune)")
        self._observe(node, state_key, obs_text)
        self.expansions += 1
        self.env_steps += len(children)
        ended: list[Trajectory] = []
        open_children: list[tuple[float, int, Node]] = []
        for i, ch in enumerate(children):
            child = Node(node_id=self._next_id, parent_id=node.node_id, depth=node.depth + 1,
                         actions=(*node.actions, ch.action), action_text=ch.action_text, state_key=ch.state_key,
                         obs_text=ch.obs_text, reward=float(ch.reward), terminal=bool(ch.done), won=bool(ch.won))
            self._next_id += 1
            self.nodes[child.node_id] = child
            seen = (node.state_key, ch.action) in self.memo
            self.memo.add((node.state_key, ch.action))
            if child.terminal:
                ended.append(self._end(child, child.won, "won" if child.won else "failed"))
            elif not seen:
                open_children.append((-child.reward, i, child))
        open_children.sort(key=lambda x: (x[0], x[1]))  # best R first, ties in sampling order
        ranked = [c for _, _, c in open_children]
        if ranked:
            self.head = ranked[0].node_id
            self.stack.extend(c.node_id for c in reversed(ranked[1:]))  # best remaining on top
        else:
            self._backtrack()
        return ended

    def prune(self, node_id: int, state_key: str | None = None, obs_text: str | None = None) -> Trajectory:
        """The head's n(s) was 0: its path ends here (a pruned trajectory); continue from the backtrack stack."""
        node = self._check_head(node_id)
        self._observe(node, state_key, obs_text)
        self.pruned_nodes += 1
        traj = self._end(node, False, "pruned")
        self._backtrack()
        return traj

    # ---- persistence ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "task": dataclasses.asdict(self.task),
            "tree_id": self.tree_id,
            "budget": self.budget,
            "max_trajectories": self.max_trajectories,
            "nodes": [dataclasses.asdict(n) for n in self.nodes.values()],
            "head": self.head,
            "stack": list(self.stack),
            "memo": sorted([list(m) for m in self.memo], key=lambda m: (m[0] or "", m[1] or "")),
            "env_steps": self.env_steps,
            "expansions": self.expansions,
            "pruned_nodes": self.pruned_nodes,
            "trajectories": [dataclasses.asdict(t) for t in self.trajectories],
            "next_id": self._next_id,
        }

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> "TaskTree":
        tree = cls(Task(**d["task"]), d["budget"], d["max_trajectories"], tree_id=d["tree_id"])
        tree.nodes = {}
        for n in d["nodes"]:
            n = dict(n, actions=tuple(n["actions"]))
            tree.nodes[n["node_id"]] = Node(**n)
        tree.head = d["head"]
        tree.stack = list(d["stack"])
        tree.memo = {(m[0], m[1]) for m in d["memo"]}
        tree.env_steps, tree.expansions, tree.pruned_nodes = d["env_steps"], d["expansions"], d["pruned_nodes"]
        tree.trajectories = [Trajectory(**dict(t, path_keys=tuple(t["path_keys"]))) for t in d["trajectories"]]
        tree._next_id = d["next_id"]
        return tree


class Frontiers:
    """The trees of every task in flight: one expansion request per active tree per round; finished trees are
    retired and their slots refilled by the caller (the trainer, from verl's dataloader)."""

    def __init__(self, budget: int, max_trajectories: int = 32) -> None:
        self.budget = int(budget)
        self.max_trajectories = int(max_trajectories)
        self.trees: dict[str, TaskTree] = {}  # insertion order = the order tasks arrived
        self.trees_started = 0

    def __len__(self) -> int:
        return len(self.trees)

    def add(self, tasks: Iterable[Task]) -> None:
        for task in tasks:
            if task.task_id in self.trees:
                raise ValueError(f"task {task.task_id} is already being explored (skip it or wait for its tree)")
            self.trees[task.task_id] = TaskTree(task, self.budget, self.max_trajectories,
                                                tree_id=f"{task.task_id}#{self.trees_started}")
            self.trees_started += 1

    def by_tree_id(self, tree_id: str) -> TaskTree | None:
        """The tree in flight with this ``tree_id`` (None once it is retired)."""
        task_id = tree_id.rsplit("#", 1)[0]
        tree = self.trees.get(task_id)
        return tree if tree is not None and tree.tree_id == tree_id else None

    def requests(self) -> list[tuple[TaskTree, Node]]:
        """(tree, node) for every tree that has a node to expand, in arrival order."""
        return [(t, t.current()) for t in self.trees.values() if not t.done]

    def retire(self) -> list[TaskTree]:
        """Remove and return the finished trees."""
        done = [t for t in self.trees.values() if t.done]
        for t in done:
            del self.trees[t.task_id]
        return done

    def state_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "max_trajectories": self.max_trajectories,
                "trees_started": self.trees_started, "trees": [t.state_dict() for t in self.trees.values()]}

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> "Frontiers":
        f = cls(d["budget"], d["max_trajectories"])
        f.trees_started = d["trees_started"]
        for td in d["trees"]:
            tree = TaskTree.from_state_dict(td)
            f.trees[tree.task_id] = tree
        return f
