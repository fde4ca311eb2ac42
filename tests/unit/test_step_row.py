"""``StepRow``, the typed ``extra_fields`` contract between the agent loop and the trainer: every row kind
round-trips through ``to_extra_fields`` / ``from_extra_fields``, and an unknown or missing field fails where the row
is built or read."""

from __future__ import annotations

import dataclasses

import pytest

from threespo_verl.verl_glue.step_row import EXTRA_KEYS, TRAJECTORY_DEFAULTS, TRAJECTORY_FIELDS, StepRow, step_rows

COMMON = dict(task_id="t1", task_type="pick", state_key="s0", n_children=1, n_branches=1, n_score=1, score=0.0,
              n_total=0, r_novel=0.0, r_score_diff=0.0, r_success=0.0, r_penalty=0.0, r_progress=0.0,
              r_grounding=0.0, valid_action=True, parse_reason="ok", merged=1, action="go", action_text="go",
              child_state_key="s1", child_obs="", done=False, won=False, timeout=False, env_score=0.0,
              replayed_steps=0, parent_obs="", pruned=False)


def node_row(**kw) -> StepRow:
    fields = dict(COMMON, mode="node", traj_id="3/1", step_index=2, node_id=-1, parent_node_id=3, round=4, branch=1,
                  reply=0, n_children=2, n_branches=3, step_reward=0.25, r_novel=0.1, child_obs="you see a box",
                  parent_obs="a room", tree_id="tree-a", reward_extra_info={"won": 0.0, "step_reward": 0.25})
    fields.update(kw)
    return StepRow(**fields)


def episode_row() -> StepRow:
    return StepRow(**dict(COMMON, mode="episode", traj_id="uid/0", step_index=1, node_id=2, parent_node_id=1,
                          round=-1, branch=0, reply=0, step_reward=1.0, done=True, won=True, tree_id="uid",
                          reward_extra_info={"won": 1.0, "score": 1.0, "episode_length": 2.0, "invalid_rate": 0.0}))


def trajectory_row() -> StepRow:
    return StepRow(**dict(COMMON, mode="trajectory", traj_id="uid/1", step_index=2, node_id=3, parent_node_id=0,
                          round=-1, branch=0, reply=0, step_reward=0.9, done=True, won=True, tree_id="uid",
                          reward_extra_info={"won": 1.0}, turn_ends=[5, 17, 30], turn_rewards=[0.0, -0.1, 1.0],
                          turns_dropped=1, turn_states=["s0", "s1", "s2", "s3"], invalid_steps=1,
                          min_global_steps=3, max_global_steps=3))


ROWS = {"node": node_row, "marker": lambda: dataclasses.replace(node_row(), pruned=True, branch=-1, reply=-1),
        "episode": episode_row, "trajectory": trajectory_row}


@pytest.mark.parametrize("kind", sorted(ROWS))
def test_every_row_kind_round_trips(kind):
    row = ROWS[kind]()
    extra = row.to_extra_fields()
    assert tuple(extra) == EXTRA_KEYS  # every output carries every key, in one order
    assert StepRow.from_extra_fields(extra) == row
    assert step_rows([extra, extra]) == [row, row]


def test_extra_keys_are_the_fields_and_the_agent_loop_re_exports_them():
    from threespo_verl.verl_glue import agent_loop

    assert EXTRA_KEYS == tuple(f.name for f in dataclasses.fields(StepRow))
    assert agent_loop.EXTRA_KEYS is EXTRA_KEYS and agent_loop.TRAJECTORY_DEFAULTS is TRAJECTORY_DEFAULTS
    assert TRAJECTORY_DEFAULTS == {"turn_ends": [], "turn_rewards": [], "turns_dropped": 0, "turn_states": [],
                                   "invalid_steps": 0}
    extra = episode_row().to_extra_fields()
    assert {k: extra[k] for k in TRAJECTORY_FIELDS} == TRAJECTORY_DEFAULTS
    assert extra["prompt_truncated"] == 0 and extra["min_global_steps"] is None


def test_defaults_are_not_shared_between_rows():
    a, b = episode_row(), episode_row()
    assert a.turn_ends is not b.turn_ends


def test_unknown_or_missing_field_fails_at_construction():
    with pytest.raises(TypeError, match="stepreward"):
        node_row(stepreward=1.0)  # a typo
    fields = node_row().to_extra_fields()
    del fields["parent_node_id"]
    with pytest.raises(TypeError, match="parent_node_id"):
        StepRow(**fields)
    with pytest.raises(TypeError):
        StepRow("node")  # keyword-only: no positional mix-ups


def test_unknown_or_missing_key_fails_when_read():
    extra = node_row().to_extra_fields()
    with pytest.raises(TypeError, match=r"unknown \['stepreward'\]"):
        StepRow.from_extra_fields({**extra, "stepreward": 1.0})
    del extra["turn_ends"]  # a defaulted field must be there too: every output carries every key
    with pytest.raises(TypeError, match=r"missing \['turn_ends'\]"):
        StepRow.from_extra_fields(extra)


def test_rows_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        node_row().step_reward = 2.0


def test_trainer_reads_node_rows_through_step_row():
    from threespo_verl.verl_glue.rounds import node_children

    rows = [node_row(branch=1, reply=0), node_row(branch=0, reply=1), node_row(branch=1, reply=2)]
    assert [(r.branch, r.reply) for r in node_children(rows)] == [(0, 1), (1, 0)]
