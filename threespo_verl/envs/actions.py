"""Turn a model reply into one environment action, or into an invalid action. Never raises.

Default format (verl-agent style): optional reasoning in ``<think>...</think>``, then exactly one
``<action>...</action>`` block::

    <think>The mug should be in the cabinet.</think>
    <action>go to cabinet 1</action>

Rules:

* exactly one non-empty action block outside the think block -> that action (lower-cased, whitespace collapsed);
* no block, several blocks, an empty block, or an unclosed tag -> ``action=None`` (an invalid step, which the step
  reward penalises); ``reason`` says which;
* ``fallback="last_line"`` accepts a reply without tags and takes its last non-empty line (for models that answer
  plainly); several blocks are still rejected;
* for thinking models whose reply may start inside an unterminated ``<think>`` (the template opened it), text up to
  the first ``</think>`` is treated as reasoning.
"""

from __future__ import annotations

import dataclasses
import re

from threespo_verl.envs.base import normalize_command

MAX_ACTION_CHARS = 200


@dataclasses.dataclass(frozen=True)
class ParsedAction:
    action: str | None
    valid_format: bool
    reason: str


@dataclasses.dataclass(frozen=True)
class ActionParser:
    tag: str = "action"
    allow_think: bool = True
    fallback: str = "none"  # "none" | "last_line"

    def __post_init__(self):
        if self.fallback not in ("none", "last_line"):
            raise ValueError(f"fallback must be 'none' or 'last_line', got {self.fallback!r}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", self.tag):
            raise ValueError(f"tag must be a plain identifier, got {self.tag!r}")

    def __call__(self, reply: object) -> ParsedAction:
        return self.parse(reply)

    def parse(self, reply: object) -> ParsedAction:
        if not isinstance(reply, str):
            return ParsedAction(None, False, f"reply is {type(reply).__name__}, not text")
        text = reply
        if self.allow_think:
            if "</think>" in text and "<think>" not in text.split("</think>", 1)[0]:
                text = text.split("</think>", 1)[1]  # reply began inside a template-opened <think>
            text = re.sub(r"<think>.*?</think>", " ", text, flags=re.S | re.I)
            if re.search(r"<think>", text, flags=re.I):
                return ParsedAction(None, False, "unterminated <think> block")
        open_t, close_t = f"<{self.tag}>", f"</{self.tag}>"
        blocks = re.findall(rf"{re.escape(open_t)}(.*?){re.escape(close_t)}", text, flags=re.S | re.I)
        n_open = len(re.findall(re.escape(open_t), text, flags=re.I))
        if len(blocks) > 1:
            return ParsedAction(None, False, f"{len(blocks)} {open_t} blocks; exactly one is allowed")
        if n_open > len(blocks):
            return ParsedAction(None, False, f"unclosed {open_t} tag")
        if len(blocks) == 1:
            action = _normalise(blocks[0])
            if not action:
                return ParsedAction(None, False, f"empty {open_t} block")
            if len(action) > MAX_ACTION_CHARS:
                return ParsedAction(None, False, f"action longer than {MAX_ACTION_CHARS} characters")
            return ParsedAction(action, True, "ok")
        if self.fallback == "last_line":
            lines = [ln for ln in (_normalise(x) for x in text.splitlines()) if ln]
            if lines and len(lines[-1]) <= MAX_ACTION_CHARS:
                return ParsedAction(lines[-1], False, "no tags; took the last line")
        return ParsedAction(None, False, f"no {open_t}...{close_t} block")


def _normalise(s: str) -> str:
    return normalize_command(s)


DEFAULT_PARSER = ActionParser()


def parse_action(reply: object) -> ParsedAction:
    """Parse with the default ``<action>`` format."""
    return DEFAULT_PARSER.parse(reply)


def action_choice_regex(choices) -> str | None:
    """Regex that only matches ``<action>A</action>`` with A one of ``choices`` (for constrained decoding,
    ``env.constrain_actions``); None when there is nothing to choose from. Only regex metacharacters are escaped
    (xgrammar warns on escaped spaces)."""
    if not choices:
        return None
    alts = "|".join("".join("\\" + ch if ch in "\\.^$*+?{}[]|()/" else ch for ch in c) for c in choices)
    return f"<action>({alts})</action>"
