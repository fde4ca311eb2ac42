"""WebShop purchase reward: hand-computed cases under the original WebShop's rules (attributes, options, price, type
factor), the fuzzy score and colour vocabulary, the type-word backends, and parity cases on the real catalog."""

from __future__ import annotations

import dataclasses
import os

import pytest

from threespo_verl.envs.webshop.reward import (COLOR_SET, TYPE_TAGGER_ENV, fuzz_text, goal_option_key,
                                              normalize_color, option_matches, purchase_reward, ratio,
                                              resolve_type_tagger, token_set_ratio, type_reward, type_words)

CAT = "Home & Kitchen › Bedding › Decorative Pillows"
TITLE = "Decorative Pillow Cover"
#: ``$THREESPO_WEBSHOP_TYPE_TAGGER`` as the run was started (``spacy:<model>`` picks the spaCy test's model)
STARTED_TAGGER = os.environ.get(TYPE_TAGGER_ENV, "")


@pytest.fixture(autouse=True)
def _default_tagger(monkeypatch):
    """The hand-computed values are the default backend's, whatever the environment selects."""
    monkeypatch.delenv(TYPE_TAGGER_ENV, raising=False)


def _reward(**kw):
    args = dict(goal_attrs=("double sided",), goal_options={}, price_upper=40.0, goal_query="pillow covers",
                goal_category=CAT, goal_title=TITLE, product_attrs=("double sided",), title=TITLE, features=(),
                description="", query="pillow covers", category=CAT, price=10.0, chosen_options={})
    args.update(kw)
    return purchase_reward(**args)


def test_fuzzy_ratio_by_hand():
    assert ratio("this is a test", "this is a test!") == 97  # 2*14/29
    # difflib's matching blocks, not the longest common subsequence: the first longest block is "e" (a[1], b[3]),
    # after which nothing matches on either side: 2*1/11 = 18 (the LCS "re" would give 36)
    assert ratio("bed red", "rose") == 18
    assert ratio("", "") == 100 and ratio("", "x") == 0
    # {machine, wash} vs {machine, washable}: best pair "machine wash" / "machine washable" = 2*12/28 = 85.7 -> 86
    assert token_set_ratio("machine wash", "machine washable") == 86
    assert token_set_ratio("Machine-Washable", "machine washable") == 100
    assert token_set_ratio("x-large", "large") == 100  # one token set contains the other
    assert token_set_ratio("", "large") == 0
    # the text compared: code points 128-255 deleted, other non-word characters -> spaces, "_" and CJK kept
    assert fuzz_text("Crème_brûlée A\xa0B 日本") == "crme_brle ab 日本"
    assert fuzz_text(("color", "a3-army\xa0green")) == "color    a3 army xa0green"  # str() of the pair escapes it


def test_colour_vocabulary_is_webshops():
    assert len(COLOR_SET) == 102 and len(set(COLOR_SET)) == 102
    assert {"rainbow", "seashell", "skull", "steel", "stonewash", "sunflower"} <= set(COLOR_SET)
    assert not {"rain", "sky", "smoke", "snow"} & set(COLOR_SET)
    # the first listed colour that the value contains: "ash" precedes "stone" and hides in "seashell", "washed"
    assert [normalize_color(v) for v in ("navy blue", "snow white", "stonewash", "seashell pink", "washed black",
                                         "standard", "sky", "28 inch")] == \
        ["blue", "white", "ash", "ash", "ash", "tan", "sky", "28 inch"]


def test_goal_options_are_name_value_pairs():
    # an exact colour name (as value or name) stands for the pair; anything else is the pair's text
    assert goal_option_key("color", "black") == "black"
    assert goal_option_key("color", "jet black") == "('color', 'jet black')"
    assert goal_option_key("natural", "large") == "natural"
    # navy blue -> "blue", a token of "color navy blue": 100
    assert option_matches({"color": "navy blue"}, ["navy blue"]) == 1
    # jet black -> "black" against the exact colour "black"; and "black" against "color jet black"
    assert option_matches({"color": "black"}, ["jet black"]) == 1
    assert option_matches({"color": "jet black"}, ["black"]) == 1
    # standard -> "tan" (it contains it) against "size standard": no shared token, ratio("tan", "size standard")
    # = 2*3/16 = 38; the value itself does not match its own goal option
    assert token_set_ratio("tan", goal_option_key("size", "standard")) == 38
    assert option_matches({"size": "standard"}, ["standard"]) == 0
    # x-large against "size large": I = "large"; ratio("large", "large x") = 2*5/12 = 83 is the best (<= 85)
    assert token_set_ratio("x-large", goal_option_key("size", "large")) == 83
    assert option_matches({"size": "large"}, ["x-large"]) == 0
    # a non-breaking space: the chosen value loses it ("green"), the pair's text has "xa0green": 37
    assert option_matches({"color": "a3-army\xa0green"}, ["a3-army\xa0green"]) == 0
    assert option_matches({"color": "rainbow"}, ["rainbow"]) == 1


# (purchase, expected parts), every part worked out by hand under the original's rules
FIXTURES = [
    pytest.param(
        # goal 20 of the test split, reduced: the colour value is not a colour name.
        # options: r.brown2070 -> "brown" vs "color r brown2070": no shared token, ratio("brown", "brown2070 color r")
        # = 2*5/22 = 45, and "7" vs it = 11 -> unmatched; "7" vs "size 7": token subset, 100 -> matched.
        # attributes 2/2 (same attributes), price 50 <= 70, same product -> r_type 1: (2 + 1 + 1) / (2 + 2 + 1)
        dict(goal_attrs=("slip resistant", "rubber sole"), goal_options={"color": "r.brown2070", "size": "7"},
             price_upper=70.0, product_attrs=("rubber sole", "slip resistant"), price=50.0,
             chosen_options={"color": "r.brown2070", "size": "7"}),
        dict(total=0.8, r_type=1.0, num_attr_matches=2, num_option_matches=1, r_price=True), id="goal-20-colour"),
    pytest.param(
        # options: navy blue -> "blue" in "color navy blue" (100); standard -> "tan" vs "size standard" (38) and
        # "blue" vs it (12): 1 of 2. attribute: "machine wash" vs "machine washable" = 86 > 85: 1 of 1.
        # price 45 > 40: 0. (1 + 1 + 0) / (1 + 2 + 1)
        dict(goal_attrs=("machine washable",), goal_options={"color": "navy blue", "size": "standard"},
             product_attrs=("machine wash",), price=45.0,
             chosen_options={"color": "navy blue", "size": "standard"}),
        dict(total=0.5, r_type=1.0, num_attr_matches=1, num_option_matches=1, r_price=False), id="pair-and-tan"),
    pytest.param(
        # attributes: "gluten free" fuzzy-matched, "low sugar" found in the features text, "organic" nowhere: 2 of 3.
        # option: jet black -> "black", the goal's exact colour: 1 of 1. price ok. type: another query and category;
        # goal words [decorative, pillow, cover], bought [pillow, cover, set]: 2/3 > 0.2 -> 1.0. (2 + 1 + 1) / 5
        dict(goal_attrs=("gluten free", "low sugar", "organic"), goal_options={"color": "black"},
             product_attrs=("gluten-free", "dairy free"), features=("Low sugar, high fibre",), title="Pillow Cover Set",
             query="other", category="Toys › Games", chosen_options={"color": "jet black"}),
        dict(total=0.8, r_type=1.0, num_attr_matches=2, num_option_matches=1, r_price=True), id="attrs-text"),
    pytest.param(
        # type: goal words [pillow, cover, pillow, case, sham] (5 tokens, repeats counted), bought [sofa, cover]:
        # 1 shared / 5 = 0.2, not > 0.2, no query or category match -> 0.5. attribute 1/1, no options, price ok:
        # 0.5 * (1 + 0 + 1) / (1 + 0 + 1)
        dict(goal_title="Pillow Cover Pillow Case Sham", title="Sofa Cover", query="other",
             category="Toys › Games"),
        dict(total=0.5, r_type=0.5, num_attr_matches=1, num_option_matches=0, r_price=True), id="type-repeats"),
    pytest.param(
        # nothing chosen: 0 of 2 options; x-large would not have matched "large" either. (1 + 0 + 1) / 4
        dict(goal_options={"color": "a3-army\xa0green", "size": "large"}),
        dict(total=0.5, r_type=1.0, num_attr_matches=1, num_option_matches=0, r_price=True), id="no-options"),
    pytest.param(
        # the goal's own non-breaking-space value (unmatched, 37) and x-large for large (83): 0 of 2. (1 + 0 + 1) / 4
        dict(goal_options={"color": "a3-army\xa0green", "size": "large"},
             chosen_options={"color": "a3-army\xa0green", "size": "x-large"}),
        dict(total=0.5, r_type=1.0, num_attr_matches=1, num_option_matches=0, r_price=True), id="nbsp-xlarge"),
]


@pytest.mark.parametrize("purchase, expected", FIXTURES)
def test_fixture_purchases_match_hand_computed_parts(purchase, expected):
    parts = dataclasses.asdict(_reward(**purchase))
    assert {k: parts[k] for k in expected} == pytest.approx(expected)


def test_attributes_partial_fuzzy_and_text_fields():
    # 1 of 2 attributes, no options, price ok: (1 + 0 + 1) / (2 + 0 + 1)
    r = _reward(goal_attrs=("gluten free", "low sugar"), product_attrs=("gluten free", "dairy free"))
    assert r.num_attr_matches == 1 and r.total == pytest.approx(2 / 3)
    # "hand wash" vs "machine washable" is far below 85 and nowhere in the text -> 0 of 1: (0 + 1) / 2
    r = _reward(goal_attrs=("machine washable",), product_attrs=("hand wash",))
    assert r.num_attr_matches == 0 and r.total == 0.5
    # found verbatim in the title, the features or the description
    for field in ({"title": "Machine Washable " + TITLE}, {"features": ("Care: machine washable",)},
                  {"description": "Soft and machine washable."}):
        assert _reward(goal_attrs=("machine washable",), product_attrs=("DUMMY_ATTR",), **field).num_attr_matches == 1


def test_price():
    r = _reward(price=45.0)  # above the 40.0 bound: (1 + 0 + 0) / 2
    assert not r.r_price and r.total == 0.5
    assert _reward(price=40.0).r_price  # the bound itself is allowed


def test_type_factor():
    def t(title, query="other", category="Toys › Games"):
        return type_reward(bought_query=query, bought_category=category, bought_title=title, goal_query="pillow covers",
                           goal_category=CAT, goal_title="Decorative Pillow Cover Grey Square Velvet")

    # goal type words: decorative pillow cover grey square velvet (6)
    assert t("Grey Sofa Pillow Table") == (1.0, False, False, pytest.approx(2 / 6))  # 2/6 > 0.2
    assert t("Grey Sofa Table")[0] == 0.5  # 1/6 = 0.167: no query, category or title match
    assert t("Grey Sofa Table", query="pillow covers")[0] == 1.0  # same query
    assert t("Grey Sofa Table", category="Home & Kitchen › Bedding › Sheets")[0] == 1.0  # 2 common levels
    assert t("Grey Sofa Table", category="Home & Kitchen › Furniture")[0] == 0.5  # 1 common level only
    assert t("Wooden Sofa Table", query="pillow covers")[0] == 0.0  # title_score 0 overrides a query match
    eleven = "alpha bravo charlie delta echo foxtrot golf hotel india juliet lamp"
    r_type, *_rest, score = type_reward(bought_query="q", bought_category="", bought_title="lamp",
                                        goal_query="x", goal_category="", goal_title=eleven)
    assert score == pytest.approx(1 / 11) and r_type == 0.1  # 0 < title_score < 0.1
    # no type word in the goal title: title_score 0.2 (not > 0.2), so only a query/category match gives 1.0
    assert type_reward(bought_query="q", bought_category="", bought_title="x", goal_query="q", goal_category="",
                       goal_title="The 2 of Them")[::3] == (1.0, 0.2)


def test_type_words_backends(monkeypatch):
    # words: alphabetic, not stop words, 2+ letters, in order with repeats
    assert type_words("The Pillow Cover, Pillow Insert & 2 Shams x") == ("pillow", "cover", "pillow", "insert", "shams")
    assert resolve_type_tagger() == "words" and resolve_type_tagger("spacy:en_core_web_md") == "spacy:en_core_web_md"
    monkeypatch.setenv(TYPE_TAGGER_ENV, "spacy")
    assert resolve_type_tagger() == "spacy" and resolve_type_tagger("words") == "words"
    with pytest.raises(ValueError, match="unknown webshop type tagger"):
        resolve_type_tagger("nltk")
    # a missing spaCy, or a missing model, says how to install it
    with pytest.raises(RuntimeError, match="spacy"):
        type_words("Pillow Cover", "spacy:threespo_no_such_model")


def _spacy_model() -> str:
    """``spacy:<model>``: the model named by ``$THREESPO_WEBSHOP_TYPE_TAGGER=spacy:<model>``, else en_core_web_sm."""
    spacy = pytest.importorskip("spacy", reason="the spaCy type tagger is optional: pip install spacy")
    model = STARTED_TAGGER.partition(":")[2] if STARTED_TAGGER.startswith("spacy:") else "en_core_web_sm"
    if not spacy.util.is_package(model):
        pytest.skip(f"spaCy's {model} is not installed (python -m spacy download {model})")
    return f"spacy:{model}"


def test_spacy_type_words_are_nouns():
    tagger = _spacy_model()
    assert type_words("a red apple and a ripe banana", tagger) == ("apple", "banana")
    r_type, _qm, _cm, score = type_reward(bought_query="q", bought_category="", bought_title="banana bread",
                                          goal_query="x", goal_category="", goal_title="a red apple and a ripe banana",
                                          type_tagger=tagger)
    assert score == pytest.approx(1 / 2) and r_type == 1.0


# ---- on the catalog -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(webshop_data):
    from threespo_verl.envs.webshop import WebShopEnv

    return WebShopEnv(data_dir=webshop_data)


def _play(env, task, actions):
    env.reset(task)
    out = None
    for a in actions:
        out = env.step(a)
    return out


def test_oracle_purchase_of_test_goal_20_scores_below_one(env):
    from threespo_verl.envs.webshop.oracle import oracle_actions

    task = env.tasks("test")[20]
    goal = env.goal_of(task)
    assert goal.goal_options == {"color": "r.brown2070", "size": "7"} and len(goal.attributes) == 4
    _obs, reward, terminated, truncated, info = _play(env, task, oracle_actions(env, task))
    parts = info["reward_parts"]
    assert terminated and not truncated and info["valid"] and env.observation.text.split(" [SEP] ")[2] == goal.asin
    # attributes 4/4, size matched, colour not ("brown" vs "color r brown2070"), price ok: (4 + 1 + 1) / 7
    assert (parts["num_attr_matches"], parts["num_option_matches"], parts["r_price"], parts["r_type"]) == \
        (4, 1, True, 1.0)
    assert reward == pytest.approx(6 / 7) and not info["won"]


def test_non_breaking_space_value_is_clickable_only_as_written(env):
    from threespo_verl.envs.webshop.oracle import oracle_actions

    task = env.tasks("test")[269]
    goal = env.goal_of(task)
    value = goal.goal_options["color"]
    assert value == "a3-army\xa0green"
    actions = oracle_actions(env, task)
    opened = actions.index(f"click[{goal.asin.lower()}]") + 1
    _play(env, task, actions[:opened])
    assert f"click[{value}]" in env.admissible_actions and "click[a3-army green]" not in env.admissible_actions
    assert not env.is_valid("click[a3-army green]") and not env.is_valid("click[A3-ARMY green]")
    assert env.is_valid("click[A3-ARMY\xa0GREEN]")  # case still does not matter
    assert env.is_valid("click[buy  now]")  # page controls keep the collapsed-space matching
    _obs, _r, _terminated, _truncated, info = env.step("click[a3-army green]")
    assert not info["valid"]
    obs, _r, _terminated, _truncated, info = env.step(f"click[{value}]")
    assert info["valid"] and f"color: {value}" in obs.text
