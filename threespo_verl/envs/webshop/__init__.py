"""WebShop-compatible text shop over the 1,000-product catalog (DESIGN §4): ``WebShopEnv``.

Modules: ``setup`` (install the data), ``catalog`` (products and goals), ``search`` (bm25s index), ``reward``
(WebShop's purchase score), ``env`` (pages and actions), ``oracle`` (a scripted buyer for tests).
"""

from threespo_verl.envs.webshop.env import WebShopEnv

__all__ = ["WebShopEnv"]
