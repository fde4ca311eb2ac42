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
they are invalid steps ("Nothing happens.", ``valid=False``, key unchanged).

Snapshots: ``supports_clone`` is True, so ``EnvCache`` restores search-tree nodes by ``clone``, not replay.
TextWorld's own ``PddlEnv.copy`` raises NotImplementedError, but the engine's episode state is small and explicit:

* in the fast-downward planner library (a private copy of the shared library per loaded game): the current state
  id. The library interns every state it reaches in a registry and exports ``get_state_id``/``set_state_id``;
* in TextWorld's ``PddlState``: the fact set (what the text grammar queries; a mirror of the planner's state) and
  the operators applicable now; in ``PddlEnv``: the last and previous game states (feedback, admissible commands
  and the actions behind them), the last action and the move counter.

Everything else (the parsed game, logic and grammar, the translated planning task, the library) is fixed once the
game is loaded; text generation has no randomness (the grammar derives the first applicable rule) and no expert is
attached. So a loaded game (``_Game``) is shared by an env and its clones; each env owns a ``PddlEnv`` with its own
episode fields (``_fork``: the fact set copied, the rest shared, as TextWorld replaces them instead of mutating
them) and its own planner state id, which it selects before every engine call, under the game's lock. ``reset``
restores the snapshot taken right after TextWorld's own reset when the game was loaded (so a reset of a loaded game
no longer translates the PDDL problem again, which was most of its time). A clone copies one fact set (tens of
microseconds); reset + replay costs one engine step (about 20 ms) per action of the prefix.
``tests/unit/test_alfworld_clone.py`` checks clones against reset + replay and against TextWorld's own engine.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections import Counter, OrderedDict, defaultdict
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

    Loading a game translates its PDDL problem for the planner twice over (``PddlEnv.load`` and then ``reset`` each
    build a ``PddlState``, which translates twice: plain, and optimised for replanning). The last few translations
    are kept, so a load translates once (about half its time) and another env loading the same game (a fresh env
    of the search-tree cache, a test's reference env) does not translate. A translation depends only on (domain,
    problem, options), and its results are only read.
    """
    global _PARSE_CACHE_INSTALLED
    if _PARSE_CACHE_INSTALLED:
        return
    import functools

    import textworld.envs.pddl.textgen as textgen
    from textworld.envs.pddl import logic as pddl_logic
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
    pddl_logic.fast_downward.pddl2sas = functools.lru_cache(maxsize=8)(pddl_logic.fast_downward.pddl2sas)
    Rule.parse_conjunctive_query = classmethod(functools.lru_cache(maxsize=4096)(Rule.parse_conjunctive_query.__func__))
    _PARSE_CACHE_INSTALLED = True


def _state_digest(facts) -> str:
    names = sorted(str(f) for f in facts if f.name not in _IGNORED_PREDICATES and not f.name.startswith("not_"))
    return "alfworld:" + hashlib.blake2b("\n".join(names).encode(), digest_size=16).hexdigest()


#: ``PddlEnv`` / ``PddlState`` attributes (textworld 1.7.0, fast-downward-textworld 20.6.4): what one episode
#: changes, and what a loaded game shares. ``_Game`` refuses an engine with any other attribute, or a planner library
#: without ``get_state_id``/``set_state_id``: a snapshot of it could not be known exact.
_ENV_EPISODE = frozenset({"_pddl_state", "state", "prev_state", "_last_action", "_moves"})
_ENV_SHARED = frozenset({"_entity_infos", "_game_data", "_game_file", "_logic", "downward_lib", "request_infos",
                         "walkthrough"})
_STATE_EPISODE = frozenset({"_facts", "_vars_by_name", "_vars_by_type", "_var_counts", "_operators"})
_STATE_SHARED = frozenset({"_actions", "_logic", "downward_lib", "name2type", "pddl_problem", "sas", "sas_replan",
                           "task"})


def _fork(engine):
    """A ``PddlEnv`` in the same episode state as ``engine`` that can step without touching it.

    The fact set and its variable indexes (mutated in place by every step) are copied. The game states, the last
    action, the move counter and the applicable operators are shared: TextWorld replaces them on every step and never
    mutates them. The game, logic, grammar, planning task and planner library are shared. The planner's current state
    id is not part of the ``PddlEnv``: its owner keeps it (``AlfWorldEnv._sid``)."""
    state = engine._pddl_state
    fork_state = copy.copy(state)
    fork_state._facts = defaultdict(set, ((sig, facts.copy()) for sig, facts in state._facts.items()))
    fork_state._vars_by_name = dict(state._vars_by_name)
    fork_state._vars_by_type = defaultdict(set, ((t, vs.copy()) for t, vs in state._vars_by_type.items()))
    fork_state._var_counts = Counter(state._var_counts)
    fork = copy.copy(engine)
    fork._pddl_state = fork_state
    return fork


class _Game:
    """One loaded game, shared by the envs that play it (an env and its clones).

    Holds TextWorld's ``PddlEnv`` as it stood right after its own ``reset`` (the initial snapshot, never stepped),
    the planner state id of that moment, and a lock that serialises the envs' engine calls (each selects its own
    planner state id first). ``holders`` counts the envs that keep it in their game cache; the last one closes it."""

    def __init__(self, path: str) -> None:
        _install_parse_caches()
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
        from textworld.envs.pddl import PddlEnv

        self._wrapper = AlfredDemangler(PddlEnv(textworld.EnvInfos(won=True, admissible_commands=True)))
        self._wrapper.load(path)
        engine = self._wrapper.unwrapped
        self.initial_state = engine.reset()  # translates the PDDL problem and loads it into the planner
        unknown = (set(vars(engine)) ^ (_ENV_EPISODE | _ENV_SHARED)) | (
            set(vars(engine._pddl_state)) ^ (_STATE_EPISODE | _STATE_SHARED))
        if unknown:
            raise RuntimeError(f"TextWorld's PddlEnv/PddlState have attributes {sorted(unknown)} that AlfWorldEnv "
                               f"does not know how to snapshot (a TextWorld version other than 1.7.0?)")
        self.lib = engine.downward_lib
        if not (hasattr(self.lib, "get_state_id") and hasattr(self.lib, "set_state_id")):
            raise RuntimeError("the fast-downward planner library has no get_state_id/set_state_id: AlfWorldEnv "
                               "needs a fast-downward-textworld that exports them (20.6.4 does)")
        self.initial = engine
        self.initial_sid = self.lib.get_state_id()
        self.lock = threading.Lock()
        self.holders = 0

    def close(self) -> None:
        self._wrapper.close()


class AlfWorldEnv(TextEnv):
    name = "alfworld"
    splits = SPLITS
    supports_clone = True

    def __init__(self, max_steps: int = 50, data_dir: str | Path | None = None, cache_games: int = 4,
                 **kwargs: Any) -> None:
        super().__init__(max_steps=max_steps)
        root = Path(data_dir) if data_dir is not None else default_data_dir("alfworld")
        if not (root / "json_2.1.1").is_dir():
            raise MissingDataError("alfworld", root, "no json_2.1.1 folder")
        self.root = root
        self._cache_size = max(1, int(cache_games))
        self._games: OrderedDict[str, _Game] = OrderedDict()  # game path -> loaded game (maybe shared with clones)
        self._game: _Game | None = None  # the game of the current episode
        self._env = None  # this env's own TextWorld PddlEnv (``_fork`` of the game's)
        self._sid = -1  # this env's planner state id in the game's planner library
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
    def _load(self, path: str) -> _Game:
        game = self._games.pop(path, None)
        if game is None:
            game = _Game(path)
            game.holders += 1
        self._games[path] = game
        while len(self._games) > self._cache_size:
            self._release(self._games.popitem(last=False)[1])
        return game

    @staticmethod
    def _release(game: _Game) -> None:
        game.holders -= 1
        if game.holders == 0:
            game.close()

    def reset(self, task: Task) -> ResetReturn:
        self._task = task
        self._game = self._load(str(self.game_file(task)))
        self._env, self._sid = _fork(self._game.initial), self._game.initial_sid
        state = self._game.initial_state
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
            game = self._game
            with game.lock:  # the planner library is shared with clones: select this env's state first
                game.lib.set_state_id(self._sid)
                state, _score, _done = self._env.step(cmd)
                self._sid = game.lib.get_state_id()
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

    def clone(self) -> "AlfWorldEnv":
        """An independent env in the same state (episode, step count, observation): it shares the loaded game and
        owns a fork of the engine's episode state (see the module docstring). Works before any reset too."""
        other = copy.copy(self)
        other._games = OrderedDict()
        if self._game is not None:
            path = next(p for p, g in self._games.items() if g is self._game)
            self._game.holders += 1
            other._games[path] = self._game
        if self._env is not None:
            other._env = _fork(self._env)
        return other

    def close(self) -> None:
        for game in self._games.values():
            self._release(game)
        self._games.clear()
        self._game = self._env = None

    def _set_obs(self, text: str, state) -> None:
        if state is not None:
            self._admissible = () if self._done else tuple(state["admissible_commands"])
            key = _state_digest(self._env._pddl_state.facts)
        else:  # not executed: same situation, same admissible commands
            key = self._obs.state_key
            self._admissible = () if self._done else self._admissible
        self._obs = Observation(text=text, state_key=key, admissible_actions=self._admissible,
                                task_id=self._task.task_id, task_type=self._task.task_type, goal=self._goal)
