"""``household``: a built-in, dependency-free, ALFWorld-like text game (DESIGN §4).

Each task id seeds a small apartment: 6-9 receptacles (some openable: fridge, microwave, cabinets, drawers), 5-9
objects, a desk lamp, a sink, and one goal of ALFWorld's six types:

    pick   put a {obj} in/on {recep}.              clean  put a clean {obj} in/on {recep}.
    heat   put a hot {obj} in/on {recep}.          cool   put a cool {obj} in/on {recep}.
    look   look at {obj} under the desklamp.       pick2  put two {obj} in/on {recep}.

The command language and the feedback follow ALFWorld's text mode ("go to cabinet 1", "take mug 1 from cabinet 1",
"put mug 1 in/on countertop 1", "open fridge 1", "clean mug 1 with sinkbasin 1", "heat ... with microwave 1",
"cool ... with fridge 1", "use desklamp 1", "examine X", "look", "inventory"; a command that is not admissible gives
"Nothing happens."). The agent holds at most one object.

State key: the complete world state (agent location, inventory, which receptacles are open, where every object is
and whether it is clean/hot/cool, the lamp). It contains no history and no step counter; "look", "inventory",
"examine" and invalid commands leave it unchanged, so they map to the previous key.

Every task is solvable by construction and ``oracle_actions(task)`` returns a winning command list; ``plan()``
returns one from the current state of an episode (for noisy expert demonstrations that must recover).

Splits: ``train`` (10,000 tasks) and ``test`` (the 64-task panel) of all six types; ``easy_train`` (512) and
``easy_test`` (32, held out): the CPU learning testbed's task family, *look* goals whose object lies on the desk
next to the lamp, so the shortest plan is three commands (go to desk 1, take the object, use desklamp 1) and every
step is inferable from the prompt (the skill is picking the goal's object among the desk's). The easy splits are the
tasks of their own id namespace whose oracle plan has at most ``EASY_MAX_PLAN`` commands, in id order.
"""

from __future__ import annotations

import functools
import random
from typing import Any

from threespo_verl.envs.base import Observation, ResetReturn, StepReturn, Task, TextEnv, make_info, normalize_command
from threespo_verl.io_utils import stable_seed

TASK_TYPES = ("pick", "clean", "heat", "cool", "look", "pick2")
OPENABLE = ("fridge", "microwave", "cabinet", "drawer")
PLAIN = ("countertop", "diningtable", "shelf", "sidetable", "garbagecan", "stoveburner")
OBJECT_TYPES = ("mug", "apple", "tomato", "plate", "bowl", "cup", "egg", "potato", "book", "cd", "pen", "vase")
#: which object types make sense for which goal (ALFWorld pairs food/dishes with the appliances)
GOAL_OBJECTS = {
    "pick": OBJECT_TYPES,
    "clean": ("mug", "apple", "tomato", "plate", "bowl", "cup", "egg", "potato"),
    "heat": ("mug", "apple", "tomato", "plate", "bowl", "cup", "egg", "potato"),
    "cool": ("mug", "apple", "tomato", "plate", "bowl", "cup", "egg", "potato"),
    "look": ("book", "cd", "pen", "vase", "mug", "bowl"),
    "pick2": OBJECT_TYPES,
}
SPLITS = {"train": 10_000, "test": 64, "easy_train": 512, "easy_test": 128}
#: easy splits: tasks of their own id namespace kept when the oracle plan has at most this many commands
EASY_SPLITS = ("easy_train", "easy_test")
EASY_MAX_PLAN = 3


def _seed(task_id: str) -> int:
    return stable_seed(task_id)


def _task_type(task_id: str) -> str:
    return TASK_TYPES[_seed(task_id + "/type") % len(TASK_TYPES)]


class _World:
    """The mutable state of one episode (copied by ``clone``)."""

    __slots__ = ("receps", "openable", "opened", "where", "clean", "hot", "cold", "loc", "held", "lamp_on", "lamp_at")

    def copy(self) -> "_World":
        w = _World.__new__(_World)
        w.receps, w.openable, w.lamp_at = self.receps, self.openable, self.lamp_at  # immutable per task
        w.opened, w.where = set(self.opened), dict(self.where)
        w.clean, w.hot, w.cold = set(self.clean), set(self.hot), set(self.cold)
        w.loc, w.held, w.lamp_on = self.loc, self.held, self.lamp_on
        return w

    def key(self) -> str:
        objs = ";".join(
            f"{o}@{self.where[o]}{'+c' if o in self.clean else ''}{'+h' if o in self.hot else ''}"
            f"{'+k' if o in self.cold else ''}"
            for o in sorted(self.where)
        )
        return (f"at={self.loc}|held={self.held}|open={','.join(sorted(self.opened))}|"
                f"lamp={int(self.lamp_on)}|{objs}")

    def contents(self, recep: str) -> list[str]:
        return sorted(o for o, r in self.where.items() if r == recep)


def _generate(task: Task) -> tuple[_World, dict[str, Any]]:
    """Build the world and goal of ``task`` from its id alone (deterministic, always solvable)."""
    rng = random.Random(_seed(task.task_id))
    ttype = task.task_type
    receps = ["sinkbasin 1", "desk 1", "fridge 1", "microwave 1"]
    for kind in rng.sample(("cabinet", "drawer"), 2):
        receps += [f"{kind} {i}" for i in range(1, rng.randint(1, 2) + 1)]
    receps += [f"{k} 1" for k in rng.sample(PLAIN, rng.randint(2, 3))]
    rng.shuffle(receps)
    # objects may lie on any receptacle that can hold things (not the sink or the appliances)
    holders = [r for r in receps if not r.startswith(("sinkbasin", "microwave"))]
    goal_type = rng.choice(GOAL_OBJECTS[ttype])
    n_goal = 2 if ttype == "pick2" else 1
    names = [f"{goal_type} {i}" for i in range(1, n_goal + rng.randint(1, 2))]
    for t in rng.sample([t for t in OBJECT_TYPES if t != goal_type], rng.randint(3, 5)):
        names += [f"{t} {i}" for i in range(1, rng.randint(1, 2) + 1)]
    target = None
    if ttype != "look":
        target = rng.choice([r for r in holders if not r.startswith("fridge") or ttype != "cool"])
    where = {}
    for o in names:
        choices = [r for r in holders if r != target] if o.startswith(goal_type + " ") else holders
        where[o] = rng.choice(choices)
    w = _World()
    w.receps = tuple(receps)
    w.openable = frozenset(r for r in receps if r.split()[0] in OPENABLE)
    w.opened, w.where, w.clean, w.hot, w.cold = set(), where, set(), set(), set()
    w.loc, w.held, w.lamp_on, w.lamp_at = "middle of room", None, False, "desk 1"
    prep = {"pick": "", "pick2": "", "clean": "clean ", "heat": "hot ", "cool": "cool ", "look": ""}[ttype]
    if ttype == "look":
        text = f"look at {goal_type} under the desklamp."
    elif ttype == "pick2":
        text = f"put two {goal_type} in/on {target}."
    else:
        text = f"put a {prep}{goal_type} in/on {target}."
    return w, {"type": ttype, "object": goal_type, "target": target, "n": n_goal, "text": text}


def _plan(w: _World, goal: dict[str, Any]) -> list[str]:
    """A winning command list from world ``w`` (mutated: pass a copy). Handles a held object: a goal object in hand
    is used, anything else is put down first."""
    plan: list[str] = []

    def go(r):
        if w.loc != r:
            plan.append(f"go to {r}")
            w.loc = r
        if r in w.openable and r not in w.opened:
            plan.append(f"open {r}")
            w.opened.add(r)

    if _goal_met(w, goal):
        return plan
    ot = goal["object"]
    kind = goal["type"]
    appliance = {"clean": "sinkbasin 1", "heat": "microwave 1", "cool": "fridge 1"}.get(kind)
    attr = {"clean": w.clean, "heat": w.hot, "cool": w.cold}.get(kind)
    if w.held is not None and not w.held.startswith(ot + " "):  # hands full with something else: put it down here
        here = w.loc if w.loc not in ("middle of room", "sinkbasin 1", "microwave 1") and (
            w.loc not in w.openable or w.loc in w.opened) else w.lamp_at
        go(here)
        plan.append(f"put {w.held} in/on {here}")
        w.where[w.held], w.held = here, None
    placed = 0 if kind == "look" else sum(1 for o, r in w.where.items() if r == goal["target"] and o.startswith(
        ot + " ") and (attr is None or o in attr))
    candidates = sorted(o for o in w.where if o.startswith(ot + " ") and w.where[o] != goal["target"])
    todo = ([w.held] if w.held is not None else []) + candidates
    for o in todo[: goal["n"] - placed]:
        if o != w.held:
            go(w.where[o])
            plan.append(f"take {o} from {w.where[o]}")
            w.where.pop(o)
            w.held = o
        if kind == "look":
            go(w.lamp_at)
            plan.append("use desklamp 1")
            return plan
        if appliance and o not in attr:
            go(appliance)
            plan.append(f"{kind} {o} with {appliance}")
            attr.add(o)
        go(goal["target"])
        plan.append(f"put {o} in/on {goal['target']}")
        w.where[o], w.held = goal["target"], None
    return plan


@functools.lru_cache(maxsize=None)
def _split_tasks(split: str, env_name: str) -> tuple[Task, ...]:
    out = []
    if split in EASY_SPLITS:
        i = 0
        while len(out) < SPLITS[split]:
            tid = f"household/{split}/{i:06d}"
            i += 1
            if _task_type(tid) != "look":
                continue
            task = Task(task_id=tid, task_type="look", env_name=env_name, payload={"split": split})
            if len(_plan(*_generate(task))) <= EASY_MAX_PLAN:
                out.append(task)
        return tuple(out)
    for i in range(SPLITS[split]):
        tid = f"household/{split}/{i:05d}"
        out.append(Task(task_id=tid, task_type=_task_type(tid), env_name=env_name, payload={"split": split}))
    return tuple(out)


def _goal_met(w: _World, goal: dict[str, Any]) -> bool:
    ot = goal["object"]
    if goal["type"] == "look":
        return w.lamp_on and w.held is not None and w.held.startswith(ot + " ") and w.loc == w.lamp_at
    attr = {"clean": w.clean, "heat": w.hot, "cool": w.cold}.get(goal["type"])
    placed = [o for o, r in w.where.items() if r == goal["target"] and o.startswith(ot + " ")
              and (attr is None or o in attr)]
    return len(placed) >= goal["n"]


class HouseholdEnv(TextEnv):
    name = "household"
    splits = tuple(SPLITS)
    supports_clone = True

    def __init__(self, max_steps: int = 30, data_dir: Any = None, **kwargs: Any) -> None:
        super().__init__(max_steps=max_steps)
        self._task: Task | None = None
        self._world: _World | None = None
        self._goal: dict[str, Any] = {}
        self._steps = 0
        self._done = False
        self._obs: Observation | None = None
        self._admissible: tuple[str, ...] = ()

    # ---- catalogue -----------------------------------------------------------------------------------------------
    def tasks(self, split: str) -> list[Task]:
        if split not in SPLITS:
            raise ValueError(f"household has no split {split!r}; valid: {', '.join(SPLITS)}")
        return list(_split_tasks(split, self.name))

    # ---- episode -------------------------------------------------------------------------------------------------
    def reset(self, task: Task) -> ResetReturn:
        self._task = task
        self._world, self._goal = _generate(task)
        self._steps, self._done = 0, False
        w = self._world
        seen = ", ".join(f"a {r}" for r in w.receps[:-1]) + f", and a {w.receps[-1]}"
        text = (f"You are in the middle of a room. Looking quickly around you, you see {seen}.\n\n"
                f"Your task is to: {self._goal['text']}")
        self._set_obs(text)
        return self._obs, {}

    def step(self, action: str | None) -> StepReturn:
        if self._world is None:
            raise RuntimeError("call reset(task) before step()")
        if self._done:
            raise RuntimeError("episode is over; call reset(task)")
        self._steps += 1
        cmd = normalize_command(action)
        valid = cmd is not None and cmd in self._admissible
        before = self._obs.state_key
        feedback = self._execute(cmd) if valid else "Nothing happens."
        won = _goal_met(self._world, self._goal)
        timeout = not won and self._steps >= self.max_steps
        self._done = won or timeout
        self._set_obs(feedback)
        info = make_info(won=won, score=float(won), valid=valid, state_changed=self._obs.state_key != before,
                         timeout=timeout, steps=self._steps)
        return self._obs, float(won), won, timeout, info

    def is_valid(self, action: str | None) -> bool:
        return normalize_command(action) in self._admissible

    def clone(self) -> "HouseholdEnv":
        other = HouseholdEnv.__new__(HouseholdEnv)
        other.max_steps = self.max_steps
        other._task, other._goal, other._steps, other._done = self._task, self._goal, self._steps, self._done
        other._world = self._world.copy() if self._world is not None else None
        other._obs, other._admissible = self._obs, self._admissible
        return other

    # ---- oracle --------------------------------------------------------------------------------------------------
    def oracle_actions(self, task: Task) -> list[str]:
        """A winning command list for ``task`` (computed on a private copy of its world)."""
        return _plan(*_generate(task))

    def plan(self) -> list[str]:
        """A winning command list from the current state of the episode (an expert that recovers from detours);
        [] once the goal is met. Requires a ``reset``."""
        if self._world is None:
            raise RuntimeError("plan() needs an episode: call reset(task) first")
        return _plan(self._world.copy(), self._goal)

    # ---- mechanics -----------------------------------------------------------------------------------------------
    def _accessible(self, r: str) -> bool:
        return r not in self._world.openable or r in self._world.opened

    def _view(self, r: str) -> str:
        w = self._world
        if not self._accessible(r):
            return f"The {r} is closed."
        items = w.contents(r)
        if r == w.lamp_at:
            items = ["desklamp 1", *items]
        if not items:
            return f"On the {r}, you see nothing." if r not in w.openable else f"The {r} is open. In it, you see nothing."
        listed = ", ".join(f"a {o}" for o in items[:-1]) + (", and " if len(items) > 1 else "") + f"a {items[-1]}"
        return f"On the {r}, you see {listed}." if r not in w.openable else f"The {r} is open. In it, you see {listed}."

    def _execute(self, cmd: str) -> str:
        w = self._world
        verb = cmd.split()[0]
        if verb == "go":
            w.loc = cmd[len("go to "):]
            return f"You arrive at {w.loc}. {self._view(w.loc)}"
        if verb == "open":
            w.opened.add(w.loc)
            return f"You open the {w.loc}. {self._view(w.loc)}"
        if verb == "close":
            w.opened.discard(w.loc)
            return f"You close the {w.loc}."
        if verb == "take":
            obj = cmd[len("take "): cmd.index(" from ")]
            w.where.pop(obj)
            w.held = obj
            return f"You pick up the {obj} from the {w.loc}."
        if verb == "put":
            obj = w.held
            w.where[obj], w.held = w.loc, None
            return f"You put the {obj} in/on the {w.loc}."
        if verb in ("clean", "heat", "cool"):
            obj = w.held
            (w.clean if verb == "clean" else w.hot if verb == "heat" else w.cold).add(obj)
            if verb == "heat":
                w.cold.discard(obj)
            if verb == "cool":
                w.hot.discard(obj)
            done = {"clean": "clean", "heat": "heat", "cool": "cool"}[verb]
            return f"You {done} the {obj} using the {w.loc}."
        if verb == "use":
            w.lamp_on = True
            return "You turn on the desklamp 1."
        if verb == "examine":
            return self._view(w.loc)
        if verb == "look":
            where = "in the middle of a room" if w.loc == "middle of room" else f"facing the {w.loc}"
            return f"You are {where}. Next to it, you see nothing."
        if verb == "inventory":
            return f"You are carrying: a {w.held}." if w.held else "You are not carrying anything."
        raise AssertionError(f"admissible command without a handler: {cmd}")

    def _admissible_commands(self) -> tuple[str, ...]:
        w = self._world
        cmds = [f"go to {r}" for r in w.receps if r != w.loc]
        here = w.loc if w.loc in w.receps else None
        if here is not None:
            if here in w.openable:
                cmds.append(f"close {here}" if here in w.opened else f"open {here}")
            if self._accessible(here):
                if w.held is None:
                    cmds += [f"take {o} from {here}" for o in w.contents(here)]
                else:
                    cmds.append(f"put {w.held} in/on {here}")
            if w.held is not None:
                appliance = {"sinkbasin": "clean", "microwave": "heat", "fridge": "cool"}.get(here.split()[0])
                if appliance:
                    cmds.append(f"{appliance} {w.held} with {here}")
            if here == w.lamp_at:
                cmds.append("use desklamp 1")
            cmds.append(f"examine {here}")
        cmds += ["inventory", "look"]
        return tuple(cmds)

    def _set_obs(self, text: str) -> None:
        w = self._world
        self._admissible = self._admissible_commands() if not self._done else ()
        self._obs = Observation(text=text, state_key=w.key(), admissible_actions=self._admissible,
                                task_id=self._task.task_id, task_type=self._task.task_type, goal=self._goal["text"])
