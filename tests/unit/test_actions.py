"""Action parsing: one action from a reply, or None; never an exception."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from threespo_verl.envs.actions import ActionParser, parse_action


@pytest.mark.parametrize(
    "reply, action",
    [
        ("<think>mug is in cabinet</think><action>go to cabinet 1</action>", "go to cabinet 1"),
        ("<action>  Take Mug 1   from\ncabinet 1 </action>", "take mug 1 from cabinet 1"),
        ("I will search.\n<action>search[red dress]</action>", "search[red dress]"),
        ("reasoning that began in the template</think><action>look</action>", "look"),
        ("<THINK>x</THINK><ACTION>look</ACTION>", "look"),
    ],
)
def test_valid_replies(reply, action):
    parsed = parse_action(reply)
    assert parsed.action == action and parsed.valid_format and parsed.reason == "ok"


@pytest.mark.parametrize(
    "reply, reason",
    [
        ("go to cabinet 1", "no <action>"),
        ("<action>look</action><action>inventory</action>", "2 <action> blocks"),
        ("<action>   </action>", "empty"),
        ("<action>look", "unclosed"),
        ("<think>still thinking", "unterminated"),
        ("<think><action>look</action></think>", "no <action>"),  # an action inside the reasoning is not an answer
        ("<action>" + "x" * 300 + "</action>", "longer than"),
        (None, "not text"),
        (42, "not text"),
    ],
)
def test_malformed_replies_are_invalid_actions(reply, reason):
    parsed = parse_action(reply)
    assert parsed.action is None and not parsed.valid_format and reason in parsed.reason


def test_last_line_fallback_and_custom_tag():
    plain = ActionParser(fallback="last_line")
    assert plain.parse("I should open it.\n\n  Open Fridge 1 \n").action == "open fridge 1"
    assert plain.parse("<action>a</action><action>b</action>").action is None
    answer = ActionParser(tag="answer")
    assert answer.parse("<answer>look</answer>").action == "look"
    with pytest.raises(ValueError):
        ActionParser(fallback="guess")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>/actionthink[] abc\n")), max_size=80) | st.text(max_size=200))
def test_never_raises(reply):
    for parser in (parse_action, ActionParser(fallback="last_line").parse):
        parsed = parser(reply)
        assert parsed.action is None or (parsed.action and parsed.action == parsed.action.strip())


def test_action_choice_regex_matches_exactly_the_choices():
    import re

    from threespo_verl.envs.actions import action_choice_regex

    choices = ("go to shelf 1", "put mug 1 in/on coffeemachine 1", "search[red (2-pack) $5.99?]")
    rx = re.compile(action_choice_regex(choices))
    for c in choices:
        assert rx.fullmatch(f"<action>{c}</action>")
    assert not rx.fullmatch("<action>go to shelf 2</action>")
    assert not rx.fullmatch("<action>search[red 2-pack $5.99]</action>")
    assert action_choice_regex(()) is None
