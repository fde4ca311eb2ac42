"""Shared fixtures: a private data home with the environment data installed from the workplace archives.

The archives come from ``../shared/data`` (or ``$THREESPO_SHARED_DATA``) through the same ``install`` functions
``threespo-verl setup`` uses, so these fixtures also exercise the setup path. Installing happens once per session
into a temporary data home; a test that needs data and cannot get it fails with the setup command to run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from threespo_verl.data import find_shared_data


@pytest.fixture(scope="session")
def data_home(tmp_path_factory) -> Path:
    """A temporary ``$THREESPO_DATA`` for the whole session (set in os.environ for subprocesses too)."""
    home = Path(os.environ.get("THREESPO_TEST_DATA_HOME") or tmp_path_factory.mktemp("threespo_data"))
    old = os.environ.get("THREESPO_DATA")
    os.environ["THREESPO_DATA"] = str(home)
    yield home
    if old is None:
        os.environ.pop("THREESPO_DATA", None)
    else:
        os.environ["THREESPO_DATA"] = old


def _shared(kind: str) -> Path:
    src = find_shared_data(kind)
    if src is None:
        pytest.fail(f"no shared {kind} archives found (looked for ../shared/data/{kind}); set THREESPO_SHARED_DATA")
    return src


@pytest.fixture(scope="session")
def alfworld_data(data_home) -> Path:
    """ALFWorld eval splits (valid_seen + valid_unseen + logic) installed under the session data home."""
    from threespo_verl.envs.alfworld_setup import install

    return install(source=_shared("alfworld"), dest=data_home / "alfworld", splits=("valid_seen", "valid_unseen"))


@pytest.fixture(scope="session")
def webshop_data(data_home) -> Path:
    """The 1,000-product WebShop catalog installed under the session data home."""
    from threespo_verl.envs.webshop.setup import install

    return install(source=_shared("webshop"), dest=data_home / "webshop")
