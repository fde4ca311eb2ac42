"""The upstream diffs in ``patches/`` (one per runtime patch in ``threespo_verl/patches/``).

* every diff applies cleanly (``git apply --check``) to the installed upstream files: a version bump whose source
  moved fails ``test_patch_applies_to_the_installed_upstream_source`` with the patch's name and git's reason; a
  package that is not installed skips with that reason;
* the runtime patch and the diffed source agree: the process-group backend string (and a real gloo group on CPU),
  the attention the critic loader passes (real tiny-model loads), and the order of the weight-sync steps around
  vLLM's layerwise reload;
* each diff's header names its problem, upstream file and function, runtime module and upstream issue/PR, and
  ``patches/README.md`` lists every diff.

The agreement checks run in fresh processes (the platform is chosen once per process from ``VERL_PLATFORM``) and
load the diffed upstream file as a module of its own next to the installed one."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from threespo_verl.patches import PATCHES as RUNTIME_PATCHES

ROOT = Path(__file__).resolve().parents[2]
PATCH_DIR = ROOT / "patches"
PATCH_FILES = sorted(PATCH_DIR.glob("*.patch"))
#: header fields every diff carries (``Key: value``, continuation lines indented)
HEADER_KEYS = ("Subject", "Problem", "Change", "Upstream file", "Upstream function", "Pinned", "Runtime module",
               "Upstream issue/PR")


# ---- reading a diff -------------------------------------------------------------------------------------------------
def read_patch(path: Path) -> tuple[dict[str, str], list[str]]:
    """(header fields, target paths relative to the package root) of one diff."""
    text = path.read_text()
    head, sep, _ = text.partition("\ndiff --git ")
    assert sep, f"patches/{path.name}: no 'diff --git' section"
    fields: dict[str, str] = {}
    key = None
    for line in head.splitlines():
        m = re.match(r"^([A-Z][A-Za-z/ ]*): (.*)$", line)
        if m:
            key = m[1]
            fields[key] = m[2].strip()
        elif line.startswith("  ") and key:
            fields[key] += " " + line.strip()
        else:
            key = None
    targets = re.findall(r"^\+\+\+ b/(\S+)$", text, flags=re.MULTILINE)
    return fields, targets


def installed_root(package: str) -> Path | None:
    """The folder holding the installed top-level ``package`` (site-packages), without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).parent


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def upstream_copy(patch: Path, dest: Path) -> Path:
    """Copy the installed upstream files ``patch`` changes into ``dest`` (same relative paths); skip when their
    package is not installed. Returns ``dest``."""
    _, targets = read_patch(patch)
    assert targets, f"patches/{patch.name}: no file in the diff"
    for rel in targets:
        package = rel.split("/", 1)[0]
        root = installed_root(package)
        if root is None:
            pytest.skip(f"{package} is not installed: patches/{patch.name} is checked against {package}'s source")
        src = root / rel
        assert src.is_file(), (f"patches/{patch.name}: {rel} is not in the installed {package} {_version(package)} "
                               f"(the upstream file moved): rebase the diff and re-check its runtime module")
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    return dest


def git_apply(patch: Path, root: Path, check: bool) -> None:
    """``git apply [--check]`` of ``patch`` in ``root`` (outside any repository); fails naming the patch."""
    git = shutil.which("git")
    assert git, "git is needed to check patches/*.patch (git apply)"
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(root.parent))
    cmd = [git, "apply", "--verbose"] + (["--check"] if check else []) + [str(patch)]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        _, targets = read_patch(patch)
        versions = ", ".join(sorted({f"{t.split('/', 1)[0]} {_version(t.split('/', 1)[0])}" for t in targets}))
        raise AssertionError(
            f"patches/{patch.name} does not apply to the installed upstream source ({versions}): the patched code "
            f"moved. Rebase the diff on the new source and re-check threespo_verl.patches.{patch.stem} (its version "
            f"guard names the verl it was checked against).\n{proc.stderr.strip()}")


def patched_copy(name: str, dest: Path) -> Path:
    """The installed upstream files of ``patches/<name>.patch`` with the diff applied, under ``dest``."""
    patch = PATCH_DIR / f"{name}.patch"
    git_apply(patch, upstream_copy(patch, dest), check=False)
    return dest


def _probe(code: str, platform: str | None = "cpu") -> dict:
    env = dict(os.environ)
    env.pop("VERL_PLATFORM", None)
    if platform:
        env["VERL_PLATFORM"] = platform
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


#: loads a file as a module of its own name (prepended to every probe)
_LOAD = (
    "import importlib.util, json, sys\n"
    "def load(path, name):\n"
    "    spec = importlib.util.spec_from_file_location(name, path)\n"
    "    mod = importlib.util.module_from_spec(spec)\n"
    "    spec.loader.exec_module(mod)\n"
    "    return mod\n")


# ---- the diffs and their headers ------------------------------------------------------------------------------------
def test_one_diff_per_runtime_patch_with_its_header():
    assert sorted(p.stem for p in PATCH_FILES) == sorted(RUNTIME_PATCHES), (
        "patches/ holds one <runtime module>.patch per module in threespo_verl.patches.PATCHES")
    for path in PATCH_FILES:
        fields, targets = read_patch(path)
        missing = [k for k in HEADER_KEYS if not fields.get(k)]
        assert not missing, f"patches/{path.name}: header lacks {missing}"
        assert fields["Runtime module"].split()[0] == f"threespo_verl.patches.{path.stem}", path.name
        assert fields["Upstream file"] in targets, (path.name, fields["Upstream file"], targets)
        issue = fields["Upstream issue/PR"]
        assert issue.lower().startswith("none found") or re.search(r"https://github\.com/\S+/(issues|pull)/\d+", issue)


def test_patches_readme_lists_every_diff_and_is_linked():
    table = (PATCH_DIR / "README.md").read_text()
    for path in PATCH_FILES:
        fields, _ = read_patch(path)
        assert f"[`{path.name}`]({path.name})" in table, path.name
        for url in re.findall(r"https://github\.com/\S+?/(?:issues|pull)/\d+", fields["Upstream issue/PR"]):
            assert url in table, (path.name, url)
    assert "(patches/README.md)" in (ROOT / "README.md").read_text()
    assert "(../patches/README.md)" in (ROOT / "docs" / "DESIGN.md").read_text()


@pytest.mark.parametrize("patch", PATCH_FILES, ids=[p.stem for p in PATCH_FILES])
def test_patch_applies_to_the_installed_upstream_source(patch, tmp_path):
    root = upstream_copy(patch, tmp_path / "upstream")
    git_apply(patch, root, check=True)
    git_apply(patch, root, check=False)
    fields, _ = read_patch(patch)
    source = (root / fields["Upstream file"]).read_text()
    tree = ast.parse(source, filename=fields["Upstream file"])  # the patched file still parses
    defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert set(fields["Upstream function"].split(".")) <= defined, (patch.name, fields["Upstream function"])


def test_a_moved_upstream_source_fails_with_the_patch_name(tmp_path):
    """What a version bump that moved the patched code looks like: the check names the diff and git's reason."""
    patch = PATCH_DIR / "cpu_gloo_backend.patch"
    root = upstream_copy(patch, tmp_path / "upstream")
    target = root / read_patch(patch)[1][0]
    source = target.read_text()
    moved = source.replace('backend = backend or f"cpu:gloo,', 'backend = backend or f"cpu:gloo ,')
    assert moved != source
    target.write_text(moved)
    with pytest.raises(AssertionError, match=r"patches/cpu_gloo_backend\.patch does not apply .*verl \S+"):
        git_apply(patch, root, check=True)


# ---- the runtime patches agree with the diffs -----------------------------------------------------------------------
@pytest.mark.parametrize("platform", ["cpu", None])
def test_gloo_backend_runtime_patch_and_diff_agree(platform, tmp_path):
    """The backend string verl's Ray workers pass to init_process_group: the runtime-patched function and the
    diffed source give the same one for every backend argument, on the CPU platform (where the runtime patch is
    applied) and off it (where it is not, and the diff changes nothing). On CPU a real one-rank gloo group shows
    the defect and the fix: verl's string is rejected, the diffed source's is initialized."""
    src = patched_copy("cpu_gloo_backend", tmp_path / "patched") / "verl/utils/distributed.py"
    real = (
        "import os, torch.distributed as td\n"
        "def real(fn, n):\n"
        f"    os.environ['DIST_INIT_METHOD'] = 'file://' + {str(tmp_path)!r} + '/pg%d' % n\n"
        "    try:\n"
        "        fn(timeout_second=60)\n"
        "    except Exception as e:\n"
        "        return type(e).__name__ + ': ' + ' '.join(str(e).split())[:120]\n"
        "    backend = td.get_backend()\n"
        "    td.destroy_process_group()\n"
        "    return backend\n"
        "fn = dist.initialize_global_process_group_ray\n"
        "out['real'] = {'verl': real(fn.__wrapped__, 0), 'runtime': real(fn, 1),\n"
        "               'diff': real(P.initialize_global_process_group_ray, 2)}\n")
    r = _probe(
        _LOAD
        + "import verl\n"
        "import verl.utils.distributed as dist\n"
        f"P = load({str(src)!r}, 'patched_verl_distributed')\n"
        "from threespo_verl.patches import status\n"
        "out = {'applied': status()['cpu_gloo_backend'], 'device': dist.get_device_name(),\n"
        "       'nccl': dist.get_nccl_backend()}\n"
        + (real if platform == "cpu" else "")
        + "import torch.distributed as td\n"
        "seen = []\n"
        "td.init_process_group = lambda backend=None, **k: seen.append(backend)\n"
        "td.is_initialized = lambda: False\n"
        "def backends(fn):\n"
        "    seen.clear()\n"
        "    for b in (None, 'cpu:gloo', 'gloo'):\n"
        "        fn(timeout_second=None, backend=b)\n"
        "    return list(seen)\n"
        "out['runtime'] = backends(dist.initialize_global_process_group_ray)\n"
        "out['diff'] = backends(P.initialize_global_process_group_ray)\n"
        "print(json.dumps(out))", platform=platform)
    assert r["runtime"] == r["diff"]
    if platform == "cpu":
        assert r["applied"] and r["device"] == "cpu"
        assert r["diff"] == ["gloo", "cpu:gloo", "gloo"]
        assert r["real"]["verl"].startswith("ValueError: Duplicate device type cpu")
        assert r["real"]["runtime"] == r["real"]["diff"] == "gloo"
    else:
        assert not r["applied"] and r["device"] != "cpu"
        assert r["diff"] == [f"cpu:gloo,{r['device']}:{r['nccl']}", "cpu:gloo", "gloo"]


def test_value_model_runtime_patch_and_diff_agree(tmp_path):
    """The critic loader: the runtime-patched function and the diffed source load the same critic (class, attention,
    one value per token) from a real tiny model whose config asks for sdpa, fail the same way when the config names
    no attention (verl's flash_attention_2; no flash-attn or trl here), and pass the configured attention to trl's
    value-head fallback too (trl stood in by a minimal double, since the project does not install it)."""
    from threespo_verl.models import build_tiny

    model = tmp_path / "tiny"
    build_tiny(model)
    src = patched_copy("value_model_attention", tmp_path / "patched") / "verl/utils/model.py"
    r = _probe(
        _LOAD
        + "import types, torch, verl\n"
        "from transformers import AutoConfig, AutoModelForTokenClassification\n"
        "import verl.utils.model as vm\n"
        f"P = load({str(src)!r}, 'patched_verl_model')\n"
        f"path = {str(model)!r}\n"
        "def config(attn):\n"
        "    kw = {'attn_implementation': attn} if attn else {}\n"
        "    return AutoConfig.from_pretrained(path, num_labels=1, **kw)\n"
        "def outcome(fn, attn):\n"
        "    try:\n"
        "        m = fn(path, torch.float32, config(attn), False)\n"
        "        inner = getattr(m, 'pretrained_model', m)\n"
        "        v = m(input_ids=torch.tensor([[1, 5, 7]]))\n"
        "    except Exception as e:\n"
        "        return [type(e).__name__, str(e), type(e.__cause__).__name__]\n"
        "    return [type(inner).__name__, inner.config._attn_implementation, list(v.logits.shape)]\n"
        "runtime, verl_fn = vm.load_valuehead_model, vm.load_valuehead_model.__wrapped__\n"
        "out = {'patched': getattr(runtime, '__threespo_patched__', False)}\n"
        "for attn in ('sdpa', None):\n"
        "    out[str(attn)] = {'runtime': outcome(runtime, attn), 'diff': outcome(P.load_valuehead_model, attn),\n"
        "                      'verl': outcome(verl_fn, attn)}\n"
        # trl's value-head fallback: the token-classification load fails, trl wraps a causal LM
        "class ValueHead(torch.nn.Module):\n"
        "    def __init__(self, lm):\n"
        "        super().__init__()\n"
        "        self.pretrained_model, self.v_head = lm, torch.nn.Linear(lm.config.hidden_size, 1)\n"
        "    @classmethod\n"
        "    def from_pretrained(cls, lm):\n"
        "        return cls(lm)\n"
        "    def forward(self, input_ids):\n"
        "        h = self.pretrained_model(input_ids=input_ids, output_hidden_states=True).hidden_states[-1]\n"
        "        return types.SimpleNamespace(logits=self.v_head(h))\n"
        "sys.modules['trl'] = types.SimpleNamespace(AutoModelForCausalLMWithValueHead=ValueHead)\n"
        "vm.is_trl_available = P.is_trl_available = lambda: True\n"
        "def no_head(*a, **k):\n"
        "    raise ValueError('no token-classification head')\n"
        "AutoModelForTokenClassification.from_pretrained = no_head\n"
        "out['trl'] = {'runtime': outcome(runtime, 'sdpa'), 'diff': outcome(P.load_valuehead_model, 'sdpa')}\n"
        "print(json.dumps(out))", platform="cpu")
    assert r["patched"]
    for case in ("sdpa", "None", "trl"):
        assert r[case]["runtime"] == r[case]["diff"], (case, r[case])
    assert r["sdpa"]["diff"] == ["Qwen2ForTokenClassification", "sdpa", [1, 3, 1]]
    assert r["sdpa"]["verl"] != r["sdpa"]["diff"]  # verl 0.9.1 asks for flash_attention_2 whatever the config says
    assert r["None"]["diff"] == r["None"]["verl"]  # no attention configured: verl's behaviour, unchanged
    assert r["trl"]["diff"] == ["Qwen2ForCausalLM", "sdpa", [1, 3, 1]]


def test_weight_reload_runtime_patch_and_diff_agree(tmp_path):
    """verl's weight sync into vLLM (``update_weights_from_ipc``): the runtime-wrapped method and the diffed source
    take the same steps in the same order, with vLLM's layerwise-reload entry points, the bucket loads and vLLM's
    process_weights_after_loading recorded (the worker is a minimal double: no vLLM engine runs). A plain sync on
    vLLM's CPU platform is initialize, buckets, finalize; a LoRA base sync, and a plain sync off the CPU platform,
    keep verl's buckets then process_weights_after_loading."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (its CPU build is installed by scripts/install.sh on CPU machines)")
    src = patched_copy("vllm_cpu_weight_reload", tmp_path / "patched") / "verl/workers/rollout/vllm_rollout/utils.py"
    r = _probe(
        _LOAD
        + "import types, torch, verl\n"
        "import verl.workers.rollout.vllm_rollout.utils as U\n"
        "import verl.workers.rollout.vllm_rollout.bucketed_weight_transfer as transfer\n"
        "import vllm.model_executor.model_loader.reload as reload\n"
        "import vllm.model_executor.model_loader.utils as loader_utils\n"
        "from vllm.platforms import current_platform\n"
        f"P = load({str(src)!r}, 'patched_verl_vllm_rollout_utils')\n"
        "X = U.vLLMColocateWorkerExtension\n"
        "out = {'patched': getattr(X.update_weights_from_ipc, '__threespo_patched__', False),\n"
        "       'cpu': current_platform.is_cpu(),\n"
        "       'missing': [n for m, n in ((reload, 'initialize_layerwise_reload'),\n"
        "                                  (reload, 'finalize_layerwise_reload'),\n"
        "                                  (loader_utils, 'process_weights_after_loading')) if not hasattr(m, n)]}\n"
        "events = []\n"
        "reload.initialize_layerwise_reload = lambda model: events.append(['initialize', model.tag])\n"
        "reload.finalize_layerwise_reload = lambda model, cfg: events.append(['finalize', model.tag, cfg])\n"
        "loader_utils.process_weights_after_loading = lambda model, cfg, dev: events.append(['process', model.tag])\n"
        "class Receiver:\n"
        "    def __init__(self, zmq_handle, device, use_shm):\n"
        "        pass\n"
        "    def receive_weights(self, on_bucket_received):\n"
        "        on_bucket_received([('a', torch.zeros(1))], is_last=False)\n"
        "        on_bucket_received([('b', torch.zeros(1))], is_last=True)\n"
        "transfer.BucketedWeightReceiver = Receiver\n"
        "class Model(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.model = torch.nn.Linear(1, 1); self.tag = 'main'\n"
        "def worker(cls):\n"
        "    w = object.__new__(cls)\n"
        "    w.device, w.local_rank, w._is_qat_model, w._is_modelopt_qat = None, 0, False, False\n"
        "    w.model_runner = types.SimpleNamespace(model=Model(), vllm_config=types.SimpleNamespace(\n"
        "        speculative_config=None, model_config='model-config', quant_config=None))\n"
        "    w._get_zmq_handle = lambda: 'unused'\n"
        "    w._update_weights = lambda weights, peft_config, base_sync_done: events.append(\n"
        "        ['load', [n for n, _ in weights]])\n"
        "    return w\n"
        "def steps(cls, **kw):\n"
        "    events.clear()\n"
        "    worker(cls).update_weights_from_ipc(**kw)\n"
        "    return [list(e) for e in events]\n"
        "cases = {'plain': {}, 'lora_base': {'peft_config': {'r': 8}, 'base_sync_done': False}}\n"
        "for name, kw in cases.items():\n"
        "    out[name] = {'runtime': steps(X, **kw), 'diff': steps(P.vLLMColocateWorkerExtension, **kw)}\n"
        "current_platform.is_cpu = lambda: False\n"
        "out['off_cpu'] = {'runtime': steps(X), 'diff': steps(P.vLLMColocateWorkerExtension)}\n"
        "print(json.dumps(out))", platform="cpu")
    assert r["patched"] and r["cpu"]
    assert not r["missing"], f"vLLM's reload API moved: {r['missing']}"
    for case in ("plain", "lora_base", "off_cpu"):
        assert r[case]["runtime"] == r[case]["diff"], (case, r[case])
    loads = [["load", ["a"]], ["load", ["b"]]]
    assert r["plain"]["diff"] == [["initialize", "main"], *loads, ["finalize", "main", "model-config"]]
    assert r["lora_base"]["diff"] == r["off_cpu"]["diff"] == [*loads, ["process", "main"]]
