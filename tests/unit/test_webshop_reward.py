"""WebShop purchase reward: hand-computed cases for attributes, options, price and the type factor."""

from __future__ import annotations

import pytest

from threespo_verl.envs.webshop.reward import (normalize_color, purchase_reward, ratio, token_set_ratio,
                                              type_reward)

CAT = "Home & Kitchen › Bedding › Decorative Pillows"
TITLE = "Decorative Pillow Cover"


def _reward(**kw):
    args = dict(goal_attrs=("double sided",), goal_options={}, price_upper=40.0, goal_query="pillow covers",
                goal_category=CAT, goal_title=TITLE, product_attrs=("double sided",), title=TITLE, features=(),
                description="", query="pillow covers", category=CAT, price=10.0, chosen_options={})
    args.update(kw)
    return purchase_reward(**args)


def test_fuzzy_ratio_by_hand():
    assert ratio("this is a test", "this is a test!") == 97  # 2*14/29
    # {machine, wash} vs {machine, washable}: best pair "machine wash" / "machine washable" = 2*12/28 = 85.7 -> 86
    assert token_set_ratio("machine wash", "machine washable") == 86
    assert token_set_ratio("Machine-Washable", "machine washable") == 100
    assert token_set_ratio("x-large", "large") == 100  # one token set contains the other
    assert token_set_ratio("", "large") == 0
    assert normalize_color("navy blue") == "blue" and normalize_color("28 inch") == "28 inch"


def test_everything_matches_gives_one():
    r = _reward(goal_attrs=("double sided", "machine washable"), goal_options={"size": "18 x 18", "color": "grey"},
                product_attrs=("double sided", "machine washable"), chosen_options={"color": "grey", "size": "18 x 18"})
    assert r.total == 1.0 and r.r_type == 1.0 and r.num_attr_matches == 2 and r.num_option_matches == 2 and r.r_price


def test_attributes_partial_fuzzy_and_text_fields():
    # 1 of 2 attributes, no options, price ok: (1 + 0 + 1) / (2 + 0 + 1)
    r = _reward(goal_attrs=("gluten free", "low sugar"), product_attrs=("gluten free", "dairy free"))
    assert r.num_attr_matches == 1 and r.total == pytest.approx(2 / 3)
    # fuzzy: "machine wash" ~ "machine washable" (86 > 85)
    assert _reward(goal_attrs=("machine washable",), product_attrs=("machine wash",)).num_attr_matches == 1
    # "hand wash" vs "machine washable" is far below 85 and nowhere in the text -> 0 of 1: (0 + 1) / 2
    r = _reward(goal_attrs=("machine washable",), product_attrs=("hand wash",))
    assert r.num_attr_matches == 0 and r.total == 0.5
    # found verbatim in the title, the features or the description
    for field in ({"title": "Machine Washable " + TITLE}, {"features": ("Care: machine washable",)},
                  {"description": "Soft and machine washable."}):
        assert _reward(goal_attrs=("machine washable",), product_attrs=("DUMMY_ATTR",), **field).num_attr_matches == 1


def test_options_color_normalisation_and_fuzzy():
    # color: black vs white -> no; size: "large" vs "x-large" -> yes (token sets nest); 1 attr ok, price ok
    r = _reward(goal_options={"color": "black", "size": "large"}, chosen_options={"color": "white", "size": "x-large"})
    assert r.num_option_matches == 1 and r.total == pytest.approx((1 + 1 + 1) / (1 + 2 + 1))
    # colours are reduced to their colour word: "jet black" and "black" match
    r = _reward(goal_options={"color": "jet black"}, chosen_options={"color": "black"})
    assert r.num_option_matches == 1 and r.total == 1.0
    # nothing chosen: 0 of 2 options: (1 + 0 + 1) / 4
    r = _reward(goal_options={"color": "black", "size": "large"})
    assert r.num_option_matches == 0 and r.total == 0.5 and r.r_option == 0.0


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
    # the whole reward is scaled by the factor: 0.5 * (1 + 1) / 2
    r = _reward(title="Grey Sofa Table", query="other", category="Toys › Games",
                goal_title="Decorative Pillow Cover Grey Square Velvet", product_attrs=("double sided",))
    assert r.r_type == 0.5 and r.total == 0.5
