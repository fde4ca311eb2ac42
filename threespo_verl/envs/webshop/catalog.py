"""The 1,000-product WebShop catalog and its goals, loaded once per process and data folder.

Products are read the way WebShop's ``load_products`` reads them (from the published behaviour, not its code):
duplicate or malformed ASINs are skipped; ``Title``/``Description``/``BulletPoints``/``Rating`` come from ``name``/
``full_description``/``small_description``/``average_rating``; ``pricing`` ("$a" or "$a to $b") becomes one or two
floats and the displayed ``Price`` tag (no pricing: $100.0); option values are stripped, lower-cased and ``/`` is
shown as `` | ``; ``Attributes`` come from ``items_ins_v2_1000.json`` (``DUMMY_ATTR`` where absent).

Goals are WebShop's *synthetic* goals (``human_goals=False``, verl-agent's default): for every product with an
``instruction`` (and instruction attributes) in ``items_ins_v2_1000.json``, one goal per combination of its option
values (option names sorted), with the text ``"{instruction} with {name}: {value}, and {name}: {value}, and price
lower than {upper:.2f} dollars"``. That gives **6,910 goals over 415 ASINs**, the count verl-agent reports.

Prices: each product gets one price (its single price, or for a range a uniform draw inside it) and a price bound
(``upper``: the larger of two values drawn from the first four multiples of 10 dollars above the price; no bound,
and no price text, when fewer than two such values exist below 1,000). WebShop draws these from the unseeded global
``random``, so its goal texts change from run to run; here each product draws from ``random.Random("webshop-price/"
+ asin)``, so prices and goal texts are the same in every process.

Order and split: the goal list (products in file order, combinations in option order) is shuffled with
``random.Random(233).shuffle`` -- the same permutation WebShop's ``random.seed(233); random.shuffle(goals)`` gives a
list of that length -- and then ``test`` = goals 0-499 and ``train`` = goals 500 onwards. Nothing depends on worker
seeds or counts.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import re
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

from threespo_verl.data import MissingDataError

SHUFFLE_SEED = 233
N_TEST = 500
PRICE_RANGE = [10.0 * i for i in range(1, 100)]
NO_PRICE_BOUND = 1_000_000.0
FILES = ("data/items_shuffle_1000.json", "data/items_ins_v2_1000.json", "data/items_human_ins.json",
         "search_engine/resources_1k/documents.jsonl")


@dataclasses.dataclass(frozen=True)
class Product:
    asin: str
    title: str
    description: str
    bullet_points: tuple[str, ...]
    reviews: tuple[Any, ...]
    rating: str
    price_tag: str
    pricing: tuple[float, ...]
    #: option name -> values, in the file's order
    options: dict[str, tuple[str, ...]]
    attributes: tuple[str, ...]
    query: str
    category: str
    product_category: str
    #: the text the search index holds for this product
    contents: str


@dataclasses.dataclass(frozen=True)
class Goal:
    index: int
    asin: str
    instruction_text: str
    attributes: tuple[str, ...]
    goal_options: dict[str, str]
    price_upper: float
    query: str
    category: str
    name: str
    product_category: str
    weight: float = 1.0


def _parse_pricing(pricing: Any) -> tuple[tuple[float, ...], str]:
    if not pricing:
        return (100.0,), "$100.0"
    if isinstance(pricing, list):
        values = [float(p) for p in pricing]
    else:
        values = [float(Decimal(re.sub(r"[^\d.]", "", p))) for p in str(pricing).split("$")[1:]]
    values = values[:2]
    tag = f"${values[0]}" if len(values) == 1 else f"${values[0]} to ${values[1]}"
    return tuple(values), tag


def _options(custom: Any) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    if not isinstance(custom, dict):
        return out
    for name, contents in custom.items():
        if contents is None:
            continue
        out[name.lower()] = tuple(c["value"].strip().replace("/", " | ").lower() for c in contents)
    return out


class Catalog:
    """Products (``products``, ``by_asin``), goals (``goals``, in the seed-233 order) and split views."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        missing = [f for f in FILES if not (self.root / f).is_file()]
        if missing:
            raise MissingDataError("webshop", self.root, f"missing {', '.join(missing)}")
        raw = json.loads((self.root / FILES[0]).read_text())
        ins = json.loads((self.root / FILES[1]).read_text())
        contents = {}
        with open(self.root / FILES[3]) as f:
            for line in f:
                doc = json.loads(line)
                contents[doc["id"]] = doc["contents"]
        self.products: list[Product] = []
        self.by_asin: dict[str, Product] = {}
        self._instr: dict[str, tuple[str, tuple[str, ...]]] = {}
        for p in raw:
            asin = p["asin"]
            if asin == "nan" or len(asin) > 10 or asin in self.by_asin:
                continue
            pricing, tag = _parse_pricing(p.get("pricing"))
            bullets = p.get("small_description") or []
            bullets = tuple(bullets) if isinstance(bullets, list) else (str(bullets),)
            meta = ins.get(asin, {})
            attrs = tuple(meta["attributes"]) if "attributes" in meta else ("DUMMY_ATTR",)
            prod = Product(
                asin=asin, title=p.get("name", ""), description=p.get("full_description") or "",
                bullet_points=bullets, reviews=tuple(p.get("reviews") or ()),
                rating=p.get("average_rating") or "N.A.", price_tag=tag, pricing=pricing,
                options=_options(p.get("customization_options")), attributes=attrs,
                query=(p.get("query") or "").lower().strip(), category=p.get("category", ""),
                product_category=p.get("product_category", ""),
                contents=contents.get(asin, p.get("name", "").lower()))
            self.products.append(prod)
            self.by_asin[asin] = prod
            if meta.get("instruction") is not None and meta.get("instruction_attributes"):
                self._instr[asin] = (meta["instruction"], tuple(meta["instruction_attributes"]))
        self.prices: dict[str, float] = {}
        self.goals: list[Goal] = self._synthetic_goals()

    def _synthetic_goals(self) -> list[Goal]:
        goals: list[dict[str, Any]] = []
        att_counts: dict[str, int] = {}
        for prod in self.products:
            rng = random.Random(f"webshop-price/{prod.asin}")
            price = prod.pricing[0] if len(prod.pricing) == 1 else rng.uniform(*prod.pricing[:2])
            self.prices[prod.asin] = price
            if prod.asin not in self._instr:
                continue
            instruction, attributes = self._instr[prod.asin]
            bounds = [p for p in PRICE_RANGE if p > price][:4]
            if len(bounds) >= 2:
                upper = sorted(rng.sample(bounds, 2))[1]
                price_text = f", and price lower than {upper:.2f} dollars"
            else:
                upper, price_text = NO_PRICE_BOUND, ""
            names = sorted(prod.options)
            for combo in itertools.product(*(prod.options[n] for n in names)):
                chosen = dict(zip(names, combo))
                option_text = ", and ".join(f"{k}: {v}" for k, v in chosen.items())
                option_text = f" with {option_text}" if option_text else ""
                goals.append(dict(asin=prod.asin, instruction_text=f"{instruction}{option_text}{price_text}",
                                  attributes=attributes, goal_options=chosen, price_upper=upper, query=prod.query,
                                  category=prod.category, name=prod.title, product_category=prod.product_category))
                for a in attributes:
                    att_counts[a] = att_counts.get(a, 0) + 1
        random.Random(SHUFFLE_SEED).shuffle(goals)
        return [Goal(index=i, weight=sum(1.0 / att_counts[a] for a in g["attributes"]) / len(g["attributes"]), **g)
                for i, g in enumerate(goals)]

    def split(self, name: str) -> list[Goal]:
        if name == "test":
            return self.goals[:N_TEST]
        if name == "train":
            return self.goals[N_TEST:]
        raise ValueError(f"webshop has no split {name!r}; valid: train, test")


_CACHE: dict[Path, Catalog] = {}
_LOCK = threading.Lock()


def load_catalog(root: Path) -> Catalog:
    """The catalog of ``root``, built once per process."""
    key = Path(root).resolve()
    with _LOCK:
        cat = _CACHE.get(key)
        if cat is None:
            cat = _CACHE[key] = Catalog(key)
        return cat
