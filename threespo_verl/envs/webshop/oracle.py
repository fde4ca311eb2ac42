"""A scripted buyer for tests and benchmarks: ``oracle_actions(env, task)`` (never used during RL).

It searches the goal text, pages through the results until the goal's product shows up, opens it, clicks the goal's
option values and buys. When the product is not among the (at most 50) results of the goal text, it goes back to the
search page and searches the product's title instead. The actions are computed on a clone, so ``env`` is untouched;
the list is what was played there (it may end without a purchase when the product is never found within
``env.max_steps``).
"""

from __future__ import annotations

from threespo_verl.envs.base import Task


def oracle_actions(env, task: Task) -> list[str]:
    sim = env.clone()  # a shallow copy: works before any reset too
    sim.reset(task)
    goal = sim.goal_of(task)
    target = f"click[{goal.asin.lower()}]"
    actions: list[str] = []

    def play(action: str) -> bool:
        actions.append(action)
        _obs, _r, terminated, truncated, _info = sim.step(action)
        return terminated or truncated

    queries = [goal.instruction_text, sim.catalog.by_asin[goal.asin].title]
    for i, query in enumerate(queries):
        if i > 0 and play("click[back to search]"):
            return actions
        if play(f"search[{query}]"):
            return actions
        while target not in sim.admissible_actions and "click[next >]" in sim.admissible_actions:
            if play("click[next >]"):
                return actions
        if target in sim.admissible_actions:
            break
    else:
        return actions
    if play(target):
        return actions
    for value in goal.goal_options.values():
        if play(f"click[{value}]"):  # as written: option values are matched exactly
            return actions
    play("click[buy now]")
    return actions
