"""``threespo-verl setup webshop``: install the 1,000-product WebShop catalog under the data home.

Sources, in order: ``--from`` (a folder holding ``webshop_small_1000.tar.gz``, or the archive itself); without
``--from``, the workplace's shared data folder (``../shared/data/webshop``), then the upstream files.

* archive: checked against its sha256 before it is unpacked; the result is checked for the expected files.
* upstream: the archive is this project's repackaging of webshop-minimal's data (shared/data/webshop/SOURCES.md).
  Its original files -- ``documents.jsonl``, ``items_ins_v2_1000.json`` and the 20 Lucene index files -- are
  downloaded from github.com/ZihanWang314/webshop-minimal at the pinned commit and each is checked against its
  sha256; ``items_shuffle_1000.json`` and ``items_human_ins.json`` are rebuilt from ``documents.jsonl`` the way
  SOURCES.md describes and checked too, so the installed tree is byte-identical to the archive's. Offline, this fails
  with an error that names ``threespo-verl setup webshop --from DIR_OR_ARCHIVE``.

A marker file (holding the archive's sha256) makes re-running a no-op.
"""

from __future__ import annotations

import json
import tempfile
import urllib.request
from pathlib import Path

from threespo_verl.data import _merge_move, data_dir, extract_tar, find_shared_data, verify_sha256

ARCHIVE = "webshop_small_1000.tar.gz"
SHA256 = "cfa1085f4d86653a0efbf48ac5312a963667a6c350f388f034418fbb306710a3"
#: files the environment reads (the Lucene index is unpacked too, for an optional pyserini backend)
EXPECTED_FILES = (
    "data/items_shuffle_1000.json",
    "data/items_ins_v2_1000.json",
    "data/items_human_ins.json",
    "search_engine/resources_1k/documents.jsonl",
    "search_engine/indexes/segments_2",
)
MARKER = ".threespo_installed.json"

UPSTREAM_URL = ("https://raw.githubusercontent.com/ZihanWang314/webshop-minimal/"
                "ec82552d2458efb486701b138c9d038e1759489c/webshop_minimal/")
#: installed path -> (path under UPSTREAM_URL or None when rebuilt here, sha256); together: the archive's content
UPSTREAM_FILES: dict[str, tuple[str | None, str]] = {
    "search_engine/resources_1k/documents.jsonl": (
        "search_engine/resources_1k/documents.jsonl",
        "24fb9257c435accee9cc82e570dc8ec76a218d3b188222a84fdeb7fc5937d00e"),
    "data/items_ins_v2_1000.json": (
        "data/small/items_ins_v2_1000.json", "f88a36314a397b53b3d9c3fa5878e5f7b26d35019a51ec83fbedeca61a948f6f"),
    "data/items_shuffle_1000.json": (None, "3ab3874c3de73019631f2a6347dc3423c7eef9d30fbcf1499e7b358645296bc5"),
    "data/items_human_ins.json": (None, "8bc0ae02b37351395091c55b29352ba21a26a231d093c151cf1a83847ca66359"),
    **{f"search_engine/indexes/{name}": (f"search_engine/indexes/{name}", sha) for name, sha in (
        ("_1.fdm", "2c11b7df9b693edd758d5f4c0864fbab3baa2aaf0e0fe15d9cdbe78d30276333"),
        ("_1.fdt", "eae9ec3c53e7513e5012955f2d25c5d6ddbb8cb359be30194496b7f4874c19e5"),
        ("_1.fdx", "49b3659343293d6bb1b91ff566ea3b233b0381249a08da71cdf5cb216eff3596"),
        ("_1.fnm", "8801282d1b9730c53d1214d30443df2c3592ea1a50f21539349b76d23d618976"),
        ("_1.nvd", "65099a7549087c2a8d5de1046bbafa5eb7570fe72aabd25edc5e38d4f148dc0f"),
        ("_1.nvm", "8832819b5365ce81c0473abdd2581fc0508ac9e5df05124b6f4c7b11938654ae"),
        ("_1.si", "3e696ae201334903013ff1ad6d377f4a1cd060c1db691cbbcf315466cb06fc07"),
        ("_1.tvd", "f81f5fd806d389201450f1283c3df1d4ca82ee8a6b3f6edd7ca0b40f1158b60f"),
        ("_1.tvm", "50604e48d50f6211ef0454cb54bd20dd1da3e96ed2ca76fffbfe2284ca5d1c90"),
        ("_1.tvx", "671b72bd7917f783697e5e7598b9405271991d2b896703717a1cb02d9d4a0846"),
        ("_1_Lucene90_0.doc", "39e086ca4d34f643383526a3297351b6516bc21af1e55a553dcca15004ba8e47"),
        ("_1_Lucene90_0.dvd", "2f0b697365693964e804f268c4128e0f181351e0a5b5456093555d28c729e306"),
        ("_1_Lucene90_0.dvm", "9248f306f341f92d07ecc601592d1e066380a7f4ec8ae4dda5936d51355a5c2b"),
        ("_1_Lucene90_0.pos", "63f9f1a02cd18e957c5473dfa237933ca3d106f2447caad0a5b512b7f842f94e"),
        ("_1_Lucene90_0.tim", "a9fa5bb7580ec1f0126ff215cee1ae5a8b0594fa2554ec8b0a4520cc93bd649d"),
        ("_1_Lucene90_0.tip", "9d61c54f7c9053ea0e6205eef7ecaae68326cdb4c03110fdb4c0d8ed589268cc"),
        ("_1_Lucene90_0.tmd", "249fba55404157a0367946767c3e3e7f28277790faec6a4bc7f7f55d81fce596"),
        ("segments_2", "f02f4e41b221bf227c1c60644c7624cc5502bae08f1d0aa03b1e86b2fbdee38f"),
        ("write.lock", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    )},
}
#: the raw product keys WebShop's loader keeps, in file order (``model`` only where present)
_RAW_KEYS = ("name", "full_description", "pricing", "images", "product_category", "average_rating",
             "small_description", "model", "customization_options", "asin", "category", "query", "page")


def is_installed(dest: Path) -> bool:
    marker = Path(dest) / MARKER
    if not marker.is_file():
        return False
    try:
        ok = json.loads(marker.read_text()).get("sha256") == SHA256
    except ValueError:
        return False
    return ok and all((Path(dest) / f).is_file() for f in EXPECTED_FILES)


def _find_archive(source: Path | None) -> Path | None:
    if source is not None:
        if source.is_file():
            return source
        return source / ARCHIVE if (source / ARCHIVE).is_file() else None
    shared = find_shared_data("webshop")
    if shared is not None and (shared / ARCHIVE).is_file():
        return shared / ARCHIVE
    return None


def _fetch_url(url: str, path: Path, timeout: float = 30.0) -> None:
    """Download ``url`` to ``path`` (raises ``OSError``/``urllib.error.URLError`` when offline)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(path, "wb") as f:
        while block := resp.read(1 << 20):
            f.write(block)


def _rebuild_from_documents(root: Path) -> None:
    """``items_shuffle_1000.json`` and ``items_human_ins.json`` from the ``product`` records of documents.jsonl."""
    items, human = [], {}
    with open(root / "search_engine/resources_1k/documents.jsonl") as f:
        for line in f:
            p = json.loads(line)["product"]
            items.append({k: (p["Price"] if k == "pricing" else v) for k, v in p.items() if k in _RAW_KEYS})
            if p.get("instructions"):
                human[p["asin"]] = p["instructions"]
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data/items_shuffle_1000.json").write_text(json.dumps(items))
    (root / "data/items_human_ins.json").write_text(json.dumps(human))


def _install_upstream(dest: Path) -> None:
    """Download the original files, rebuild the two reconstructed ones, verify every sha256, then move them in."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.download-") as tmp:
        root = Path(tmp)
        for rel, (remote, sha) in UPSTREAM_FILES.items():
            if remote is not None:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                print(f"webshop: downloading {remote} ...", flush=True)
                _fetch_url(UPSTREAM_URL + remote, root / rel)
                verify_sha256(root / rel, sha)
        _rebuild_from_documents(root)
        for rel, (remote, sha) in UPSTREAM_FILES.items():
            if remote is None:
                verify_sha256(root / rel, sha)
        dest.mkdir(parents=True, exist_ok=True)
        for entry in root.iterdir():
            _merge_move(entry, dest / entry.name)


def install(source: Path | None = None, dest: Path | None = None, name: str | None = None) -> Path:
    """Install the catalog into ``dest`` (default ``$THREESPO_DATA/webshop``); returns ``dest``.

    ``name`` is accepted for the CLI's uniform signature and ignored (there is one WebShop catalog).
    """
    dest = Path(dest) if dest is not None else data_dir("webshop")
    if is_installed(dest):
        return dest
    if source is not None and not Path(source).exists():
        raise FileNotFoundError(f"--from {source}: no such file or folder")
    archive = _find_archive(Path(source) if source is not None else None)
    if archive is None and source is not None:
        raise FileNotFoundError(
            f"webshop: archive {ARCHIVE} not found in {source}. Pass the folder that holds it, or the archive itself: "
            f"threespo-verl setup webshop --from DIR_OR_ARCHIVE")
    if archive is None:
        print(f"webshop: no {ARCHIVE} in ../shared/data/webshop (or $THREESPO_SHARED_DATA); "
              f"downloading from {UPSTREAM_URL} ...", flush=True)
        try:
            _install_upstream(dest)
        except OSError as exc:  # URLError, timeouts, DNS failures are all OSError
            raise FileNotFoundError(
                f"webshop: no local archive and the download from {UPSTREAM_URL} failed ({exc}); are you offline? "
                f"Get {ARCHIVE} (sha256 {SHA256}, see shared/data/webshop/SOURCES.md) and run: "
                f"threespo-verl setup webshop --from DIR_OR_ARCHIVE") from exc
    else:
        print(f"webshop: verifying {archive.name} ...", flush=True)
        verify_sha256(archive, SHA256)
        print(f"webshop: unpacking {archive.name} into {dest} ...", flush=True)
        extract_tar(archive, dest)
    missing = [f for f in EXPECTED_FILES if not (dest / f).is_file()]
    if missing:
        raise RuntimeError(f"webshop: {', '.join(missing)} missing under {dest} after unpacking {archive}")
    # the upstream route installs the archive's exact content (every file checked), so it gets the same marker
    (dest / MARKER).write_text(json.dumps({"archive": ARCHIVE, "sha256": SHA256,
                                           "from": str(archive) if archive else UPSTREAM_URL}))
    return dest
