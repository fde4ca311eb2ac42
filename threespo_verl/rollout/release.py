"""When an expanded node's sibling group enters an actor update (3SPO, DESIGN §2.7): ``update_mode``.

Every expansion of a node with at least two distinct children yields a *group*: one row per sampled reply, compared
among themselves by Eq.4. The ledger below holds the groups sampled but not yet trained and decides, after each
expansion round, which of them the round's update takes:

* ``post_step`` (default): a group is released in the first round at which its node's subtree is *closed*: no
  descendant of the node (nor the node) is left on its tree's frontier, or the tree is done (solved, out of budget
  or trajectories, pruned). Its Eq.2 rewards are then rescored from the statistics committed at that moment
  (``reward_stats: update``), which hold every trajectory that went through its children: the outcome of each
  child's subtree is known. A leaf-level group whose children all end the episode is released in its own round; the
  root's group waits for the whole tree.
* ``post_step_own_round``: every group is released in the round that sampled it (the paper's literal form; with
  ``reward_stats: round`` its Eq.2 reads the snapshot committed before the round).
* ``post_trajectory``: every group is released once all trees of the update's batch are done (one update per batch).

Groups wait, so the actor may have been updated between a group's sampling and its update: its rows keep the old
log-probs computed when they were sampled (the trainer writes them with the round), and the wait in rounds is
reported (``explore/row_wait_rounds``). Pure Python: the ledger stores opaque row keys and tags and is
JSON-serialisable (``state_dict``), so pending groups survive a checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

#: ``algorithm.threespo.update_mode``
UPDATE_MODES = ("post_step", "post_step_own_round", "post_trajectory")


@dataclasses.dataclass
class PendingGroup:
    """One expanded node's rows, sampled in ``round_`` and not trained yet."""

    tree_id: str
    node_id: int
    round_: int
    keys: list[str]
    tags: list[dict[str, Any]]


class GroupLedger:
    """Groups sampled but not yet trained, in sampling order (see module docstring)."""

    def __init__(self, mode: str = "post_step") -> None:
        if mode not in UPDATE_MODES:
            raise ValueError(f"algorithm.threespo.update_mode={mode!r}; valid: {UPDATE_MODES}")
        self.mode = mode
        self.groups: list[PendingGroup] = []

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def rows(self) -> int:
        return sum(len(g.keys) for g in self.groups)

    def add(self, tree_id: str, node_id: int, round_: int, keys: list[str], tags: list[dict[str, Any]]) -> None:
        if len(keys) != len(tags):
            raise ValueError(f"{len(keys)} row keys but {len(tags)} tags")
        self.groups.append(PendingGroup(tree_id, int(node_id), int(round_), list(keys), list(tags)))

    def release(self, open_nodes: Callable[[str], Iterable[int] | None], round_: int,
                batch_done: bool = False, flush: bool = False) -> list[PendingGroup]:
        """Remove and return the groups the update after round ``round_`` takes (in sampling order).

        ``open_nodes(tree_id)`` gives the open nodes of a tree in flight (``TaskTree.open_nodes``), or None for a
        tree that is done (retired): all its groups are closed. ``batch_done``: every tree of the update's batch is
        done (``post_trajectory``). ``flush``: release everything (the run ends; the trees' open subtrees will not
        be trained otherwise)."""
        if flush:
            out, self.groups = self.groups, []
            return out
        if self.mode == "post_trajectory":
            if not batch_done:
                return []
            out, self.groups = self.groups, []
            return out
        if self.mode == "post_step_own_round":
            out = [g for g in self.groups if g.round_ <= round_]
        else:
            cache: dict[str, set[int] | None] = {}
            out = []
            for g in self.groups:
                if g.tree_id not in cache:
                    nodes = open_nodes(g.tree_id)
                    cache[g.tree_id] = None if nodes is None else set(nodes)
                still_open = cache[g.tree_id]
                if still_open is None or g.node_id not in still_open:
                    out.append(g)
        released = {id(g) for g in out}
        self.groups = [g for g in self.groups if id(g) not in released]
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "groups": [dataclasses.asdict(g) for g in self.groups]}

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> "GroupLedger":
        ledger = cls(d["mode"])
        ledger.groups = [PendingGroup(**g) for g in d["groups"]]
        return ledger


def wait_rounds(groups: Iterable[PendingGroup], round_: int) -> list[int]:
    """Per released row: rounds between its sampling and its update (0 = trained in the round that sampled it)."""
    return [round_ - g.round_ for g in groups for _ in g.keys]
