"""WebShop's purchase reward (Yao et al. 2022, §3.2), written from the paper's formula and WebShop's behaviour.

    r = r_type * (|U_att ∩ Y_att| + |U_opt ∩ Y_opt| + 1[y_price <= u_price]) / (|U_att| + |U_opt| + 1)

* attributes: a goal attribute counts as matched when one of the product's attributes fuzzy-matches it
  (``token_set_ratio > 85``) or it occurs verbatim (lower-cased) in the product's title, features or description;
* options: a goal option value counts as matched when one of the chosen option values fuzzy-matches it (both
  reduced to a colour name first where they contain one, ``normalize_color``);
* price: 1 when the price paid is at most the goal's bound;
* type factor ``r_type``: from ``query_match`` (same search query as the goal's product), ``category_match`` (at
  least two common levels of the ``a › b › c`` category paths) and ``title_score`` (share of the goal product's
  title type words that the bought product's title has): 1.0 when any of them matches (title_score > 0.2), else 0.5;
  then 0.1 when title_score < 0.1 and 0.0 when title_score == 0. WebShop takes the type words with spaCy's
  noun/proper-noun tagger; here they are the title's alphabetic words that are not English stop words (no model
  needed, same result for the product itself; scores of other products can differ slightly).

``token_set_ratio`` follows the fuzzywuzzy definition: both strings lower-cased with non-alphanumerics turned into
spaces, split into token sets; with I = sorted intersection, D1/D2 = sorted differences, the score is the largest
``ratio`` among (I, I+D1), (I, I+D2), (I+D1, I+D2), where ``ratio(a, b) = round(100 * 2 * LCS(a, b) / (|a| + |b|))``
(the normalised indel similarity). Everything here is pure: no I/O, no randomness.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

FUZZY_THRESHOLD = 85

COLOR_SET = (
    "alabaster", "apricot", "aqua", "ash", "asphalt", "azure", "banana", "beige", "black", "blue", "blush", "bordeaux",
    "bronze", "brown", "burgundy", "camel", "camo", "caramel", "champagne", "charcoal", "cheetah", "chestnut",
    "chocolate", "christmas", "coffee", "cognac", "copper", "coral", "cranberry", "cream", "crystal", "dark", "denim",
    "eggplant", "elephant", "espresso", "fuchsia", "gold", "granite", "grape", "graphite", "grass", "gray", "green",
    "grey", "heather", "indigo", "ivory", "ivy", "khaki", "lavender", "lemon", "leopard", "light", "lilac", "lime",
    "magenta", "maroon", "mauve", "merlot", "midnight", "mint", "mocha", "multicolor", "mushroom", "mustard",
    "natural", "navy", "nude", "olive", "orange", "peach", "pewter", "pink", "plum", "purple", "rain", "red", "rose",
    "royal", "rust", "sand", "sapphire", "silver", "sky", "slate", "smoke", "snow", "stone", "tan", "taupe", "teal",
    "tiger", "turquoise", "violet", "walnut", "wheat", "white", "wine", "yellow",
)

_STOP = frozenset(
    "a about above after again against all am an and any are as at be because been before being below between both "
    "but by can could did do does doing down during each few for from further had has have having he her here hers "
    "him his how i if in into is it its itself just me more most my no nor not now of off on once only or other our "
    "out over own same she should so some such than that the their them then there these they this those through "
    "to too under until up very was we were what when where which while who whom why will with would you your".split())
_NON_ALNUM = re.compile(r"[^0-9a-zA-Z]+")


def _process(s: str) -> str:
    return _NON_ALNUM.sub(" ", str(s)).lower().strip()


def _lcs(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b):
            cur.append(prev[j] + 1 if ca == cb else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def ratio(a: str, b: str) -> int:
    """Normalised indel similarity in 0..100 (100 = equal)."""
    if not a and not b:
        return 100
    return round(100 * 2 * _lcs(a, b) / (len(a) + len(b)))


@lru_cache(maxsize=65536)
def token_set_ratio(a: str, b: str) -> int:
    ta, tb = set(_process(a).split()), set(_process(b).split())
    if not ta or not tb:
        return 0
    inter = " ".join(sorted(ta & tb))
    c1 = (inter + " " + " ".join(sorted(ta - tb))).strip()
    c2 = (inter + " " + " ".join(sorted(tb - ta))).strip()
    return max(ratio(inter, c1), ratio(inter, c2), ratio(c1, c2))


def normalize_color(value: str) -> str:
    """The first colour name of ``COLOR_SET`` contained in ``value``, else ``value`` itself."""
    for color in COLOR_SET:
        if color in value:
            return color
    return value


def type_words(title: str) -> set[str]:
    return {t for t in re.findall(r"[a-z]+", title.lower()) if t not in _STOP and len(t) > 1}


@dataclasses.dataclass(frozen=True)
class RewardParts:
    total: float
    r_type: float
    query_match: bool
    category_match: bool
    title_score: float
    num_attr_matches: int
    num_attrs: int
    num_option_matches: int
    num_options: int
    r_price: bool

    @property
    def r_att(self) -> float:
        return self.num_attr_matches / self.num_attrs if self.num_attrs else 0.0

    @property
    def r_option(self) -> float | None:
        return self.num_option_matches / self.num_options if self.num_options else None


def type_reward(*, bought_query: str, bought_category: str, bought_title: str, goal_query: str,
                goal_category: str, goal_title: str) -> tuple[float, bool, bool, float]:
    """(r_type, query_match, category_match, title_score)."""
    query_match = bought_query == goal_query
    cats_a = {x.strip() for x in bought_category.split("›")}
    cats_b = {x.strip() for x in goal_category.split("›")}
    category_match = len(cats_a & cats_b) >= 2
    want, have = type_words(goal_title), type_words(bought_title)
    title_score = 0.2 if not want else len(want & have) / len(want)
    r_type = 1.0 if (query_match or category_match or title_score > 0.2) else 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return r_type, query_match, category_match, title_score


def attribute_matches(goal_attrs: Sequence[str], product_attrs: Iterable[str], title: str, features: Iterable[str],
                      description: str) -> int:
    product_attrs = list(product_attrs)
    text_fields = (title.lower(), " ".join(features).lower(), description.lower())
    n = 0
    for g in goal_attrs:
        if any(token_set_ratio(p, g) > FUZZY_THRESHOLD for p in product_attrs) or any(g in t for t in text_fields):
            n += 1
    return n


def option_matches(goal_values: Iterable[str], chosen_values: Iterable[str]) -> int:
    chosen = [normalize_color(v) for v in chosen_values]
    return sum(1 for g in goal_values
               if any(token_set_ratio(c, normalize_color(g)) > FUZZY_THRESHOLD for c in chosen))


def purchase_reward(*, goal_attrs: Sequence[str], goal_options: Mapping[str, str], price_upper: float,
                    goal_query: str, goal_category: str, goal_title: str, product_attrs: Iterable[str], title: str,
                    features: Iterable[str], description: str, query: str, category: str, price: float,
                    chosen_options: Mapping[str, str]) -> RewardParts:
    """The WebShop score of buying a product (its fields after the goal's) with ``chosen_options`` at ``price``."""
    r_type, qm, cm, ts = type_reward(bought_query=query, bought_category=category, bought_title=title,
                                     goal_query=goal_query, goal_category=goal_category, goal_title=goal_title)
    n_att = attribute_matches(goal_attrs, product_attrs, title, features, description)
    n_opt = option_matches(goal_options.values(), chosen_options.values())
    r_price = price <= price_upper
    total = r_type * (n_att + n_opt + int(r_price)) / (len(goal_attrs) + len(goal_options) + 1)
    return RewardParts(total=float(total), r_type=r_type, query_match=qm, category_match=cm, title_score=ts,
                       num_attr_matches=n_att, num_attrs=len(goal_attrs), num_option_matches=n_opt,
                       num_options=len(goal_options), r_price=bool(r_price))


def score_purchase(product, goal, price: float, chosen_options: Mapping[str, str]) -> RewardParts:
    """``purchase_reward`` for a catalog ``Product`` and ``Goal``."""
    return purchase_reward(goal_attrs=goal.attributes, goal_options=goal.goal_options, price_upper=goal.price_upper,
                           goal_query=goal.query, goal_category=goal.product_category, goal_title=goal.name,
                           product_attrs=product.attributes, title=product.title, features=product.bullet_points,
                           description=product.description, query=product.query,
                           category=product.product_category, price=price, chosen_options=chosen_options)
