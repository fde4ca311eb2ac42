"""``alfworld``: ALFWorld's text games through TextWorld's PDDL engine (DESIGN §4).

What differs from the stock ``AlfredTWEnv``: no gym batch wrapper or worker processes per env (the project's env
pool parallelises), no scripted expert (it roughly triples step time), only ``won`` and the admissible commands are
requested from the engine, and a loaded game is kept per instance so a reset of the same game skips parsing.

Splits: ``train`` (3,553 games), ``valid_seen`` (140, in-distribution), ``valid_unseen`` (134, out-of-distribution),
each in canonical order (sorted by path). Task ids are ``alfworld/<split>/<task dir>/<trial dir>``; task types are
ALFWorld's six, shortened: pick, look, clean, heat, cool, pick2. Reward = won in {0, 1}.

State key: a digest of the PDDL world state (every fact except the bookkeeping predicates ``checked`` and the
``not_*`` fluents), i.e. where the agent is, what it holds, what is open, toggled, clean, hot or cold and where every
object lies. It has no history or counter in it, and an action the engine does not execute ("Nothing happens.") or
a look/inventory leaves it unchanged. Actions outside the engine's admissible commands are not sent to the engine:
they are invalid steps ("Nothing happens.", ``valid=False``, key unchanged). The engine cannot be copied
(``textworld.envs.pddl.PddlEnv.copy`` raises NotImplementedError; the state lives in the fast-downward planner
library), so ``supports_clone`` is False and restore is reset + replay (``EnvCache``).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

from threespo_verl.data import MissingDataError
from threespo_verl.data import data_dir as default_data_dir
from threespo_verl.envs.base import Observation, ResetReturn, StepReturn, Task, TextEnv, make_info, normalize_command

TASK_TYPES = {
    "pick_and_place_simple": "pick",
    "look_at_obj_in_light": "look",
    "pick_clean_then_place_in_recep": "clean",
    "pick_heat_then_place_in_recep": "heat",
    "pick_cool_then_place_in_recep": "cool",
    "pick_two_obj_and_place": "pick2",
}
SPLITS = ("train", "valid_seen", "valid_unseen")
_INTRO = "-= Welcome to TextWorld, ALFRED! =-"
_IGNORED_PREDICATES = ("checked",)


_PARSE_CACHE_INSTALLED = False


def _install_parse_caches() -> None:
    """Memoize TextWorld's text-grammar parsing (once per process; outputs are unchanged).

    The PDDL engine re-parses the same grammar templates (``#intro#``, command templates, feedback rules) and the
    same rule-condition queries with a PEG parser on every derivation: that is most of a step. The parsed symbol list
    is cached per template string and deep-copied per use (derivation mutates symbols' contexts); a parsed
    conjunctive query is an immutable ``Rule`` and is shared. About 2.7x more steps/s, byte-identical observations
    and admissible commands (checked on walkthroughs; ``benchmarks/bench_envs.py`` measures it).
    """
    global _PARSE_CACHE_INSTALLED
    if _PARSE_CACHE_INSTALLED:
        return
    import copy
    import functools

    import textworld.envs.pddl.textgen as textgen
    from textworld.logic import Rule

    parse = textgen._parse_and_convert
    parsed: dict[tuple, Any] = {}

    def cached_parse(text, *args, **kwargs):
        key = (text, args, tuple(sorted(kwargs.items())))
        if key not in parsed:
            if len(parsed) >= 50_000:  # bounded: per-game grammars add entries over thousands of games
                parsed.clear()
            parsed[key] = parse(text, *args, **kwargs)
        return copy.deepcopy(parsed[key])

    textgen._parse_and_convert = cached_parse
    Rule.parse_conjunctive_query = classmethod(functools.lru_cache(maxsize=4096)(Rule.parse_conjunctive_query.__func__))
    _PARSE_CACHE_INSTALLED = True


def _state_digest(facts) -> str:
    names = sorted(str(f) for f in facts if f.name not in _IGNORED_PREDICATES and not f.name.startswith("not_"))
    return "alfworld:" + hashlib.blake2b("\n".join(names).encode(), digest_size=16).hexdigest()


class AlfWorldEnv(TextEnv):
    name = "alfworld"
    splits = SPLITS
    supports_clone = False

    def __init__(self, max_steps: int = 50, data_dir: str | Path | None = None, cache_games: int = 4,
                 **kwargs: Any) -> None:
        super().__init__(max_steps=max_steps)
        root = Path(data_dir) if data_dir is not None else default_data_dir("alfworld")
        if not (root / "json_2.1.1").is_dir():
            raise MissingDataError("alfworld", root, "no json_2.1.1 folder")
        self.root = root
        self._cache_size = max(1, int(cache_games))
        self._games: OrderedDict[str, Any] = OrderedDict()  # game path -> loaded TextWorld env
        self._env = None
        self._task: Task | None = None
        self._goal = ""
        self._steps = 0
        self._done = False
        self._obs: Observation | None = None
        self._admissible: tuple[str, ...] = ()

    # ---- catalogue -----------------------------------------------------------------------------------------------
    def tasks(self, split: str) -> list[Task]:
        if split not in SPLITS:
            raise ValueError(f"alfworld has no split {split!r}; valid: {', '.join(SPLITS)}")
        folder = self.root / "json_2.1.1" / split
        if not folder.is_dir():
            raise MissingDataError("alfworld", folder, f"split {split} is not installed")
        out = []
        for game in sorted(folder.glob("*/*/game.tw-pddl")):
            task_dir, trial = game.parent.parent.name, game.parent.name
            ttype = TASK_TYPES.get(task_dir.split("-")[0])
            if ttype is None:
                continue  # not one of the six ALFWorld task types (none in json_2.1.1)
            out.append(Task(task_id=f"alfworld/{split}/{task_dir}/{trial}", task_type=ttype, env_name=self.name,
                            payload={"game_file": str(game.relative_to(self.root))}))
        return out

    def game_file(self, task: Task) -> Path:
        return self.root / task.payload["game_file"]

    def walkthrough(self, task: Task) -> list[str]:
        """The expert command list stored in the game file (for tests and benchmarks; never used during RL)."""
        return list(json.loads(self.game_file(task).read_text())["walkthrough"])

    # ---- episode -------------------------------------------------------------------------------------------------
    def _load(self, path: str):
        env = self._games.pop(path, None)
        if env is None:
            _install_parse_caches()
            import textworld
            from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
            from textworld.envs.pddl import PddlEnv

            env = AlfredDemangler(PddlEnv(textworld.EnvInfos(won=True, admissible_commands=True)))
            env.load(path)
        self._games[path] = env
        while len(self._games) > self._cache_size:
            self._games.popitem(last=False)[1].close()
        return env

    def reset(self, task: Task) -> ResetReturn:
        self._task = task
        self._env = self._load(str(self.game_file(task)))
        state = self._env.reset()
        self._steps, self._done = 0, False
        text = state.feedback.replace(_INTRO, "").strip()
        self._goal = text.split("Your task is to:", 1)[1].strip() if "Your task is to:" in text else ""
        self._set_obs(text, state)
        return self._obs, {}

    def step(self, action: str | None) -> StepReturn:
        if self._env is None:
            raise RuntimeError("call reset(task) before step()")
        if self._done:
            raise RuntimeError("episode is over; call reset(task)")
        self._steps += 1
        cmd = normalize_command(action)
        before = self._obs.state_key
        valid = cmd is not None and cmd in self._admissible
        if valid:
            state, _score, _done = self._env.step(cmd)
            text, won = state.feedback.strip(), bool(state["won"])
        else:
            state, text, won = None, "Nothing happens.", False
        timeout = not won and self._steps >= self.max_steps
        self._done = won or timeout
        self._set_obs(text, state)
        info = make_info(won=won, score=float(won), valid=valid, state_changed=self._obs.state_key != before,
                         timeout=timeout, steps=self._steps)
        return self._obs, float(won), won, timeout, info

    def is_valid(self, action: str | None) -> bool:
        return normalize_command(action) in self._admissible

    def close(self) -> None:
        for env in self._games.values():
            env.close()
        self._games.clear()
        self._env = None

    def _set_obs(self, text: str, state) -> None:
        if state is not None:
            self._admissible = () if self._done else tuple(state["admissible_commands"])
            key = _state_digest(self._env.unwrapped._pddl_state.facts)
        else:  # not executed: same situation, same admissible commands
            key = self._obs.state_key
            self._admissible = () if self._done else self._admissible
        self._obs = Observation(text=text, state_key=key, admissible_actions=self._admissible,
                                task_id=self._task.task_id, task_type=self._task.task_type, goal=self._goal)
