"""``webshop``: the project's WebShop-compatible text shop over the 1,000-product catalog (DESIGN §4).

Pages and actions (clickables are matched case-insensitively and listed lower-cased, as WebShop does). An option
value is clickable only as written (WebShop looks the lower-cased argument up among the radio buttons' values
exactly): ``click[a3-army\\xa0green]`` (a non-breaking space) selects that value and ``click[a3-army green]`` is
invalid, as is a value whose `` | `` (WebShop's spelling of ``/``) is typed with other spacing. Page controls and
product ASINs are also found with their spaces collapsed (``click[ buy  now ]``), which WebShop does not do: a
remaining difference, as is that a value shared by two options of one product selects it in the first option here
and in the last in WebShop (no product of the 1,000-product catalog has one).

=========== =========================================================================================================
search      ``search[<query>]`` (any non-empty text) -> results page 1
results     ``click[<asin>]`` (a product of this page) -> item page; ``click[next >]`` / ``click[< prev]`` (10 per
            page, at most 50 results = 5 pages); ``click[back to search]``
item        ``click[<option value>]`` selects that value of its option (a value shared by two options selects it in
            the first); ``click[description]`` / ``click[features]`` / ``click[reviews]``; ``click[< prev]`` -> the
            results page it came from; ``click[back to search]``; ``click[buy now]`` ends the episode
description ``click[< prev]`` -> the item page (selected options kept); ``click[back to search]``
features, reviews: same as description
=========== =========================================================================================================

Observation text follows WebShop's ``text`` observation mode (page elements joined by `` [SEP] ``), without the
``Instruction: [SEP] <goal>`` header, which the prompt shows separately (``Observation.goal``), as verl-agent does:

* search: ``Search``
* results: ``Back to Search [SEP] Page 1 (Total results: 50) [SEP] Next > [SEP] B0… [SEP] <title> [SEP] $12.99
  [SEP] …`` (ASIN, title, price per product)
* item: ``Back to Search [SEP] < Prev [SEP] size [SEP] small [SEP] large [SEP] color [SEP] … [SEP] <title> [SEP]
  Price: $12.99 [SEP] Rating: N.A. [SEP] Description [SEP] Features [SEP] Reviews [SEP] Buy Now``, with
  ``[SEP] Selected options: size: large`` appended once an option is chosen (WebShop shows this through its
  checked radio buttons, which the text mode drops);
* description / features / reviews: ``Back to Search [SEP] < Prev [SEP] <text, one [SEP] per bullet or review>``;
* after buying: ``Thank you for shopping with us! [SEP] Purchased [SEP] <asin> [SEP] Options [SEP] <chosen> [SEP]
  Your score (min 0.0, max 1.0) [SEP] <score>``.

An invalid action (``None``, not ``search[...]``/``click[...]``, or not available on this page) changes nothing: the
text is ``Invalid action!`` followed by the same page. Admissible actions: the page's clickables as
``click[...]``, plus ``search[<your query>]`` on the search page (any non-empty ``search[...]`` is valid there).

State key: ``webshop:`` + JSON of the page and what identifies its content and its ``< prev`` target -- the
normalised query and result page number, the ASIN, the selected options (sorted), the sub-page -- never a step
counter. Re-clicking a selected option keeps the key. The state is a small immutable record, so ``clone`` is a
shallow copy (``supports_clone = True``).

Reward: 0 until ``click[buy now]``; then WebShop's purchase score (``reward.py``) of the bought product with the
chosen options at the product's price, in [0, 1]; ``won`` = score == 1.0. Tasks: ``webshop/<split>/<nnnn>``
(position in the split; ``test`` = goals 0-499 of the seed-233 shuffle, ``train`` = goals 500+), task type = the
goal product's WebShop category (beauty, electronics, fashion, garden, grocery).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import threading
from pathlib import Path
from typing import Any

from threespo_verl.data import MissingDataError
from threespo_verl.data import data_dir as default_data_dir
from threespo_verl.envs.base import Observation, ResetReturn, StepReturn, Task, TextEnv, make_info
from threespo_verl.envs.webshop.catalog import FILES, Catalog, Goal, load_catalog
from threespo_verl.envs.webshop.reward import RewardParts, score_purchase
from threespo_verl.envs.webshop.search import SearchIndex, load_index

SPLITS = ("train", "test")
PAGE_SIZE = 10
SEARCH_PLACEHOLDER = "search[<your query>]"
SUB_PAGES = ("description", "features", "reviews")
_ACTION = re.compile(r"^(search|click)\[(.*)\]$", re.IGNORECASE | re.DOTALL)
_SEP = " [SEP] "


@dataclasses.dataclass(frozen=True)
class _State:
    page: str = "search"  # search | results | item | description | features | reviews | bought
    query: str = ""
    page_num: int = 0
    asin: str = ""
    options: tuple[tuple[str, str], ...] = ()  # (option name, value), sorted by name

    def key(self) -> str:
        ident = [self.page, self.query, self.page_num, self.asin, [list(o) for o in self.options]]
        return "webshop:" + json.dumps(ident, ensure_ascii=False, separators=(",", ":"))


def _norm_query(q: str) -> str:
    return " ".join(q.lower().split())


_norm_click = _norm_query
_RESERVED = frozenset({"back to search", "< prev", "next >", *SUB_PAGES, "buy now"})


_TASKS: dict[tuple[Path, str], list[Task]] = {}
_TASKS_LOCK = threading.Lock()


class WebShopEnv(TextEnv):
    name = "webshop"
    splits = SPLITS
    supports_clone = True

    def __init__(self, max_steps: int = 15, data_dir: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(max_steps=max_steps)
        root = Path(data_dir) if data_dir is not None else default_data_dir("webshop")
        missing = [f for f in FILES if not (root / f).is_file()]
        if missing:
            raise MissingDataError("webshop", root, f"missing {', '.join(missing)}")
        self.root = root.resolve()
        self.catalog: Catalog = load_catalog(self.root)
        self.index: SearchIndex = load_index(self.root)
        self._task: Task | None = None
        self._goal: Goal | None = None
        self._state = _State()
        self._steps = 0
        self._done = False
        self._score = 0.0
        self.last_reward_parts: RewardParts | None = None
        self._obs: Observation | None = None

    # ---- catalogue -----------------------------------------------------------------------------------------------
    def tasks(self, split: str) -> list[Task]:
        if split not in SPLITS:
            raise ValueError(f"webshop has no split {split!r}; valid: {', '.join(SPLITS)}")
        with _TASKS_LOCK:
            tasks = _TASKS.get((self.root, split))
            if tasks is None:
                tasks = _TASKS[(self.root, split)] = [
                    Task(task_id=f"webshop/{split}/{i:04d}", task_type=g.category, env_name=self.name,
                         payload={"goal_index": g.index})
                    for i, g in enumerate(self.catalog.split(split))]
        return list(tasks)

    def goal_of(self, task: Task) -> Goal:
        return self.catalog.goals[int(task.payload["goal_index"])]

    # ---- episode -------------------------------------------------------------------------------------------------
    def reset(self, task: Task) -> ResetReturn:
        self._task, self._goal = task, self.goal_of(task)
        self._state, self._steps, self._done, self._score = _State(), 0, False, 0.0
        self.last_reward_parts = None
        self._obs = self._observe("")
        return self._obs, {}

    def step(self, action: str | None) -> StepReturn:
        if self._task is None:
            raise RuntimeError("call reset(task) before step()")
        if self._done:
            raise RuntimeError("episode is over; call reset(task)")
        self._steps += 1
        before = self._obs.state_key
        new = self._transition(action)
        valid = new is not None
        bought = False
        if valid:
            self._state = new
            if new.page == "bought":
                bought = True
                product = self.catalog.by_asin[new.asin]
                parts = score_purchase(product, self._goal, self.catalog.prices[new.asin], dict(new.options))
                self.last_reward_parts = parts
                self._score = parts.total
        timeout = not bought and self._steps >= self.max_steps
        self._done = bought or timeout
        self._obs = self._observe("" if valid else "Invalid action!")
        reward = self._score if bought else 0.0
        won = bought and self._score == 1.0
        info = make_info(won=won, score=reward, valid=valid, state_changed=self._obs.state_key != before,
                         timeout=timeout, steps=self._steps)
        if bought:
            info["reward_parts"] = dataclasses.asdict(self.last_reward_parts)
        return self._obs, reward, bought, timeout, info

    def is_valid(self, action: str | None) -> bool:
        return self._task is not None and not self._done and self._transition(action) is not None

    def clone(self) -> "WebShopEnv":
        return copy.copy(self)  # every field is immutable or shared read-only (catalog, index)

    # ---- pages ---------------------------------------------------------------------------------------------------
    def _results(self, s: _State) -> tuple[str, ...]:
        return self.index.search(s.query)

    def _n_pages(self, s: _State) -> int:
        return max(1, -(-len(self._results(s)) // PAGE_SIZE))

    def _page_asins(self, s: _State) -> tuple[str, ...]:
        start = (s.page_num - 1) * PAGE_SIZE
        return self._results(s)[start:start + PAGE_SIZE]

    def _clickables(self, s: _State) -> dict[str, Any]:
        """Lower-cased clickable text -> what it does, in display order."""
        out: dict[str, Any] = {}
        if s.page in ("search", "bought"):
            return out
        out["back to search"] = ("search",)
        if s.page == "results":
            if s.page_num > 1:
                out["< prev"] = ("page", s.page_num - 1)
            if s.page_num < self._n_pages(s):
                out["next >"] = ("page", s.page_num + 1)
            for asin in self._page_asins(s):
                out.setdefault(asin.lower(), ("item", asin))
            return out
        out["< prev"] = ("prev",)
        if s.page == "item":
            for name, values in self.catalog.by_asin[s.asin].options.items():
                for v in values:  # keyed as written (catalog values are lower-cased): matched exactly
                    if _norm_click(v) not in _RESERVED:  # page controls win over an option value that spells one
                        out.setdefault(v, ("option", name, v))
            for sub in SUB_PAGES:
                out[sub] = ("sub", sub)
            out["buy now"] = ("buy",)
        return out

    def _transition(self, action: str | None) -> _State | None:
        """The state ``action`` leads to, or None when it is invalid here."""
        if not isinstance(action, str) or self._done:
            return None
        m = _ACTION.match(action.strip())
        if m is None:
            return None
        kind, arg = m.group(1).lower(), m.group(2)
        s = self._state
        if kind == "search":
            query = _norm_query(arg)
            if s.page != "search" or not query:
                return None
            return _State(page="results", query=query, page_num=1)
        clickables = self._clickables(s)
        target = clickables.get(arg.lower())
        if target is None:  # controls and ASINs also with collapsed spaces; option values only as written
            target = clickables.get(_norm_click(arg))
            if target is not None and target[0] == "option":
                return None
        if target is None:
            return None
        what = target[0]
        if what == "search":
            return _State()
        if what == "page":
            return dataclasses.replace(s, page_num=target[1])
        if what == "item":
            return dataclasses.replace(s, page="item", asin=target[1], options=())
        if what == "option":
            chosen = dict(s.options)
            chosen[target[1]] = target[2]
            return dataclasses.replace(s, options=tuple(sorted(chosen.items())))
        if what == "sub":
            return dataclasses.replace(s, page=target[1])
        if what == "prev":
            if s.page == "item":
                return dataclasses.replace(s, page="results", asin="", options=())
            return dataclasses.replace(s, page="item")
        if what == "buy":
            return dataclasses.replace(s, page="bought")
        raise AssertionError(target)  # pragma: no cover

    def _page_text(self, s: _State) -> str:
        if s.page == "search":
            return "Search"
        if s.page == "bought":
            chosen = ", ".join(f"{k}: {v}" for k, v in s.options) or "none"
            return _SEP.join(["Thank you for shopping with us!", "Purchased", s.asin, "Options", chosen,
                              "Your score (min 0.0, max 1.0)", f"{self._score:.2f}"])
        parts = ["Back to Search"]
        if s.page == "results":
            parts.append(f"Page {s.page_num} (Total results: {len(self._results(s))})")
            if s.page_num > 1:
                parts.append("< Prev")
            if s.page_num < self._n_pages(s):
                parts.append("Next >")
            for asin in self._page_asins(s):
                p = self.catalog.by_asin[asin]
                parts += [asin, p.title, p.price_tag]
            return _SEP.join(parts)
        p = self.catalog.by_asin[s.asin]
        parts.append("< Prev")
        if s.page == "item":
            for name, values in p.options.items():
                parts += [name, *values]
            parts += [p.title, f"Price: {p.price_tag}", f"Rating: {p.rating}", "Description", "Features", "Reviews",
                      "Buy Now"]
            if s.options:
                parts.append("Selected options: " + ", ".join(f"{k}: {v}" for k, v in s.options))
        elif s.page == "description":
            parts.append(p.description)
        elif s.page == "features":
            parts += list(p.bullet_points)
        else:
            parts += [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in p.reviews]
        return _SEP.join(parts)

    def _observe(self, feedback: str) -> Observation:
        s = self._state
        view = self._page_text(s)
        text = f"{feedback}\n{view}" if feedback else view
        if self._done:
            admissible: tuple[str, ...] = ()
        elif s.page == "search":
            admissible = (SEARCH_PLACEHOLDER,)
        else:
            admissible = tuple(f"click[{c}]" for c in self._clickables(s))
        return Observation(text=text, state_key=s.key(), admissible_actions=admissible, task_id=self._task.task_id,
                           task_type=self._task.task_type, goal=self._goal.instruction_text)
