"""BM25 product search over the catalog (``bm25s``, pure Python; built in-process, cached per process and folder).

The index holds each product's ``contents`` text (the text WebShop's Lucene index was built from, read from
``search_engine/resources_1k/documents.jsonl``). Tokens: lower-cased ``\\w+`` words minus English stop words, no
stemming (WebShop's pyserini index stems; ranks can differ slightly). Scoring: Lucene BM25 with pyserini's defaults
``k1=0.9, b=0.4``. A search returns at most ``TOP_K = 50`` products (WebShop's limit: 5 result pages of 10), only
products sharing at least one term with the query, ordered by score and then by catalog position (ties are
deterministic). Results are memoised per query.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from threespo_verl.envs.webshop.catalog import Catalog, load_catalog

TOP_K = 50
_WORD = re.compile(r"\w+")


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    try:
        from bm25s.stopwords import STOPWORDS_EN

        return frozenset(STOPWORDS_EN)
    except ImportError:  # pragma: no cover - older bm25s
        return frozenset("a an and are as at be but by for if in into is it no not of on or such that the their then "
                         "there these they this to was will with".split())


def tokenize(text: str) -> list[str]:
    stop = _stopwords()
    return [t for t in _WORD.findall(text.lower()) if t not in stop]


class SearchIndex:
    def __init__(self, catalog: Catalog) -> None:
        import bm25s

        self.asins = [p.asin for p in catalog.products]
        corpus = [tokenize(p.contents) or ["__empty__"] for p in catalog.products]
        self._bm25 = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
        self._bm25.index(corpus, show_progress=False)
        self._vocab = self._bm25.vocab_dict
        self._search = lru_cache(maxsize=4096)(self._search_uncached)

    def search(self, query: str, k: int = TOP_K) -> tuple[str, ...]:
        """ASINs of the best ``k`` products for ``query`` (best first)."""
        return self._search(" ".join(tokenize(query)), k)

    def _search_uncached(self, norm_query: str, k: int) -> tuple[str, ...]:
        tokens = [t for t in norm_query.split() if t in self._vocab]
        if not tokens:
            return ()
        scores = np.asarray(self._bm25.get_scores(tokens), dtype=np.float64)
        hits = np.flatnonzero(scores > 0)
        order = hits[np.lexsort((hits, -scores[hits]))][:k]
        return tuple(self.asins[i] for i in order)


_CACHE: dict[Path, SearchIndex] = {}
_LOCK = threading.Lock()


def load_index(root: Path) -> SearchIndex:
    """The search index of the catalog in ``root``, built once per process."""
    key = Path(root).resolve()
    with _LOCK:
        idx = _CACHE.get(key)
        if idx is None:
            idx = _CACHE[key] = SearchIndex(load_catalog(key))
        return idx
