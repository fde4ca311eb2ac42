"""The GPU path, checked without a GPU: the default config composes without Hydra's plugin discovery and with an
attention implementation the GPU install has (sdpa); the SPA estimator worker's GPUs
(``algorithm.spa.estimator_num_gpus``); ``spa train-estimator`` through transformers' Trainer; the training
overrides of ``scripts/gpu_smoke.sh`` compose; spaCy stays an optional import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from threespo_verl.main import group_options

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "threespo_verl" / "config"
VERL_CONFIG = "pkg://verl.trainer.config"


def _compose(name: str = "threespo_trainer", *overrides: str):
    with initialize_config_module(config_module="threespo_verl.config", version_base=None):
        return compose(config_name=name, overrides=list(overrides))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from threespo_verl.models import build_tiny

    out = tmp_path_factory.mktemp("gpu_path") / "tiny-qwen2"
    build_tiny(out, smollm2_dir=None)
    return out


# ---- Hydra: verl's config directory in the primary configs' own search path ----------------------------------------
def test_primary_configs_name_verls_config_directory():
    for name in ("threespo_trainer", "threespo_trainer_cpu"):
        raw = OmegaConf.load(CONFIG / f"{name}.yaml")
        assert list(raw.hydra.searchpath) == [VERL_CONFIG], name
        assert raw.defaults[0] == "threespo_base", name
    # the shared keys live in a non-primary file: Hydra accepts hydra.searchpath from the primary config only
    assert "hydra" not in OmegaConf.load(CONFIG / "threespo_base.yaml")


_NO_PLUGIN = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoHydraPlugins(importlib.abc.MetaPathFinder):
        # as if Hydra could not find the hydra_plugins namespace package (e.g. hydra issue 2359)
        def find_spec(self, name, path=None, target=None):
            if name == "hydra_plugins" or name.startswith("hydra_plugins."):
                raise ModuleNotFoundError(name)
            return None

    sys.meta_path.insert(0, NoHydraPlugins())
    from hydra import compose, initialize_config_module
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin
    from omegaconf import OmegaConf

    found = [c.__name__ for c in Plugins.instance().discover(SearchPathPlugin)]
    out = {"plugins": found}
    for name in ("threespo_trainer", "threespo_trainer_cpu"):
        with initialize_config_module(config_module="threespo_verl.config", version_base=None):
            cfg = compose(config_name=name, overrides=["algorithm=gigpo", "env=alfworld"] + sys.argv[1:])
        out[name] = {"adv": cfg.algorithm.adv_estimator, "env": cfg.env.name, "device": cfg.trainer.device,
                     "strategy": cfg.actor_rollout_ref.actor.strategy, "mode": cfg.trainer.v1.trainer_mode}
    print(json.dumps(out))
""")


def _compose_without_plugin(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _NO_PLUGIN, *overrides], capture_output=True, text=True,
                          timeout=300, cwd="/", check=False)


def test_threespo_trainer_composes_without_the_search_path_plugin():
    proc = _compose_without_plugin()
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "ThreeSPOSearchPathPlugin" not in out["plugins"]
    assert out["threespo_trainer"] == {"adv": "gigpo", "env": "alfworld", "device": "cuda", "strategy": "fsdp",
                                       "mode": "threespo"}
    assert out["threespo_trainer_cpu"]["device"] == "cpu" and out["threespo_trainer_cpu"]["strategy"] == "fsdp2"
    # control: without the config's own search path (overridden away) verl's ppo_trainer is not found
    proc = _compose_without_plugin("hydra.searchpath=[]")
    assert proc.returncode != 0 and "ppo_trainer" in proc.stderr


# ---- attention: sdpa (torch's own) unless flash-attn is installed and asked for -------------------------------------
def test_gpu_config_asks_for_sdpa_attention(tiny):
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import HFModelConfig

    cfg = _compose("threespo_trainer", f"actor_rollout_ref.model.path={tiny}")
    OmegaConf.resolve(cfg)
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    assert cfg.critic.model.override_config.attn_implementation == "sdpa"
    assert cfg.actor_rollout_ref.model.use_remove_padding is True  # padding-free batches stay on
    # verl's model config (what its FSDP engine loads the actor and reference with) resolves to sdpa, not its
    # default flash_attention_2
    model = omega_conf_to_dataclass(cfg.actor_rollout_ref.model, dataclass_type=HFModelConfig)
    assert model.hf_config._attn_implementation == "sdpa"
    # the documented switch to flash-attn reaches the critic too
    fa = _compose("threespo_trainer", "actor_rollout_ref.model.override_config.attn_implementation=flash_attention_2")
    assert OmegaConf.select(fa, "critic.model.override_config.attn_implementation") == "flash_attention_2"
    cpu = _compose("threespo_trainer_cpu")
    assert cpu.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"


def test_sdpa_on_packed_sequences_matches_separate_ones(tiny):
    """verl's padding-free forward (use_remove_padding) packs a micro-batch into one row with restarting position
    ids and no attention mask; under sdpa transformers must keep the sequences apart (block-diagonal mask)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny, attn_implementation="sdpa")
    assert model.config._attn_implementation == "sdpa"
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 400, (1, 7), generator=gen), torch.randint(0, 400, (1, 5), generator=gen)
    with torch.no_grad():
        alone = [model(input_ids=x, use_cache=False).logits[0] for x in (a, b)]
        pos = torch.cat([torch.arange(7), torch.arange(5)]).unsqueeze(0)
        packed = model(input_ids=torch.cat([a, b], 1), position_ids=pos, use_cache=False).logits[0]
    torch.testing.assert_close(packed[:7], alone[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(packed[7:], alone[1], atol=1e-4, rtol=1e-4)


# ---- the SPA estimator worker's GPUs --------------------------------------------------------------------------------
def test_estimator_num_gpus_key():
    from threespo_verl.verl_glue.config import SPAConfig

    assert _compose("threespo_trainer", "algorithm=spa").algorithm.spa.estimator_num_gpus == 0
    assert SPAConfig().estimator_num_gpus == 0
    with pytest.raises(ValueError, match="estimator_num_gpus"):
        SPAConfig(estimator_num_gpus=-1)
    assert "| `algorithm.spa.estimator_num_gpus` | `0` |" in (ROOT / "README.md").read_text()


def test_estimator_worker_options_and_dtype():
    from threespo_verl.verl_glue import spa_worker as sw

    assert sw.worker_options("pe", 0) == {"name": "pe", "get_if_exists": True, "num_cpus": 0, "num_gpus": 0.0}
    assert sw.worker_options("pe", 0.5)["num_gpus"] == 0.5
    with pytest.raises(ValueError):
        sw.worker_options("pe", -1)
    # 0 GPUs: the CPU in fp32 even where a GPU is visible (Ray leaves a zero-GPU actor's CUDA_VISIBLE_DEVICES alone)
    assert sw.worker_device_and_dtype(0) == ("cpu", "float32")
    assert sw.worker_device_and_dtype(1) == ("cuda", "bfloat16")
    assert sw.worker_device_and_dtype(0.25) == ("cuda", "bfloat16")


class _FakeRay:
    """ray.remote / ray.get stand-ins recording the actor options and constructor arguments."""

    def __init__(self) -> None:
        self.options, self.args = None, None

    def remote(self, cls):
        fake = self

        class Handle:
            class ready:
                @staticmethod
                def remote():
                    return "ready-ref"

        class ActorClass:
            @staticmethod
            def options(**kw):
                fake.options = kw

                class Bound:
                    @staticmethod
                    def remote(*args):
                        fake.args = args
                        return Handle()

                return Bound

        return ActorClass

    def get(self, ref, timeout=None):
        assert ref == "ready-ref" and timeout
        return {"device": "cpu"}


@pytest.mark.parametrize("num_gpus", [0, 1])
def test_trainer_creates_the_worker_with_the_configured_gpus(num_gpus, tmp_path, monkeypatch):
    from threespo_verl.verl_glue import spa_worker as sw
    from threespo_verl.verl_glue.trainer import create_progress_worker

    fake = _FakeRay()
    monkeypatch.setattr(sw.ray, "remote", fake.remote)
    monkeypatch.setattr(sw.ray, "get", fake.get)
    from threespo_verl.verl_glue.config import resolve_algorithm

    algo = _compose("threespo_trainer", "algorithm=spa", f"algorithm.spa.estimator_path={tmp_path}",
                    f"algorithm.spa.estimator_num_gpus={num_gpus}").algorithm
    create_progress_worker(resolve_algorithm(algo).spa)
    assert fake.options == {"name": "threespo_spa_progress", "get_if_exists": True, "num_cpus": 0,
                            "num_gpus": float(num_gpus)}
    assert fake.args == (str(tmp_path), 4096, float(num_gpus))


def test_trainer_names_the_estimator_command(tmp_path):
    from threespo_verl.verl_glue.config import SPAConfig
    from threespo_verl.verl_glue.trainer import create_progress_worker

    with pytest.raises(FileNotFoundError, match="threespo-verl spa train-estimator --data traj.jsonl --model MODEL"):
        create_progress_worker(SPAConfig(estimator_path=str(tmp_path / "missing")))


def test_progress_worker_on_the_cpu(tiny):
    from threespo_verl.verl_glue.spa_worker import ProgressWorker

    w = ProgressWorker(str(tiny), max_length=512, num_gpus=0)
    assert w.ready() == {"device": "cpu", "dtype": "float32", "path": str(tiny)}
    assert next(w.pe.model.parameters()).dtype == torch.float32


# ---- spa train-estimator through transformers' Trainer --------------------------------------------------------------
def _records(tmp_path: Path, n_tasks: int = 8) -> Path:
    """Household trajectories with mixed outcomes (short oracle plans, a plan-biased scripted policy)."""
    from threespo_verl.envs import make
    from threespo_verl.testing import ScriptedPolicy, household_plans, scripted_sampler
    from threespo_verl.spa.collect import collect

    env = make("household")
    tasks = [t for t in env.tasks("train")[:200] if len(env.oracle_actions(t)) <= 5][:n_tasks]
    sample = scripted_sampler(ScriptedPolicy(plans=household_plans(tasks), plan_weight=1000, plan_move_weight=300), 0)
    out = tmp_path / "traj.jsonl"
    collect(tasks, lambda: make("household", max_steps=6), sample, 2, out, 1, progress=False)
    return out


def test_backend_choice(monkeypatch):
    from threespo_verl.spa.progress import resolve_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_backend(None, None) == "loop" and resolve_backend(None, "cpu") == "loop"
    assert resolve_backend(None, "cuda") == "trainer"
    assert resolve_backend(None, "cpu", bf16=True) == "trainer"
    assert resolve_backend(None, None, gradient_checkpointing=True) == "trainer"
    with pytest.raises(ValueError, match="bf16"):
        resolve_backend("loop", "cpu", bf16=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_backend(None, None) == "trainer" and resolve_backend(None, "cpu") == "loop"


def test_training_arguments_reach_the_trainer(tmp_path):
    from threespo_verl.spa.pe_trainer import training_arguments

    kw = {"epochs": 2, "lr": 2e-5, "batch_size": 16, "micro": 4, "seed": 3, "weight_decay": 0.01, "grad_clip": 1.0,
          "device": "cpu", "progress": False, "optim": None, "fsdp": None}
    args = training_arguments(tmp_path, bf16=True, gradient_checkpointing=True, **kw)
    assert (args.bf16, args.gradient_checkpointing, args.gradient_checkpointing_kwargs) == (
        True, True, {"use_reentrant": False})
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.num_train_epochs) == (4, 4, 2)
    assert (args.learning_rate, args.weight_decay, args.max_grad_norm, args.seed) == (2e-5, 0.01, 1.0, 3)
    assert str(args.lr_scheduler_type.value) == "constant" and str(args.optim.value) == "adamw_torch"
    assert args.use_cpu and args.save_strategy == "no" and args.report_to == []
    plain = training_arguments(tmp_path, bf16=False, gradient_checkpointing=False, **kw)
    assert not plain.bf16 and not plain.gradient_checkpointing
    with pytest.raises(ValueError, match="multiple"):
        training_arguments(tmp_path, bf16=False, gradient_checkpointing=False, **{**kw, "batch_size": 6})
    if not torch.cuda.is_available():  # no device named: the CPU, where bf16 needs use_cpu
        assert training_arguments(tmp_path, bf16=True, gradient_checkpointing=False, **{**kw, "device": None}).use_cpu
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        training_arguments(tmp_path, bf16=False, gradient_checkpointing=False, **{**kw, "device": "cuda:1"})


def test_trainer_loss_reads_the_loops_readouts(tiny, tmp_path):
    """The Trainer's batches give every trajectory the same sum_t c_t as the loop's forward pass."""
    from threespo_verl.spa.pe_trainer import _collator, _readout_sums
    from threespo_verl.spa.progress import ProgressEstimator, load_records

    records = load_records(_records(tmp_path, 4))
    pe = ProgressEstimator.from_pretrained(tiny, max_length=256, device="cpu")  # windows: some truncated
    with torch.no_grad():
        pe.model.score.weight.normal_(0, 0.5)
    encoded = [pe.encode(r) for r in records]
    assert any(len(e) > 1 for e in encoded)
    batch = _collator(encoded, [r["reward"] for r in records], pe.pad_id)(list(range(len(records))))
    pe.model.eval()
    with torch.no_grad():
        trainer_sums = _readout_sums(pe.model, batch)
        loop_sums = torch.stack([c.sum() for c in pe.step_values(encoded)])
    torch.testing.assert_close(trainer_sums, loop_sums, atol=1e-5, rtol=1e-5)
    assert batch["targets"].tolist() == [float(r["reward"]) for r in records]


def test_train_estimator_two_steps_through_the_trainer(tiny, tmp_path, capsys):
    from threespo_verl.spa.cli import main
    from threespo_verl.spa.progress import PE_JSON, ProgressEstimator, evaluate, load_records, split_heldout

    data = _records(tmp_path)
    records = load_records(data)
    assert len(records) == 16 and 0 < sum(r["won"] for r in records) < 16
    # fp32 first: the saved estimator reproduces the held-out numbers the Trainer measured
    from threespo_verl.spa.progress import train_pe

    m = train_pe(data, tmp_path / "pe", tiny, epochs=1, lr=3e-4, batch_size=6, micro_batch_size=3,
                 heldout_fraction=0.25, seed=0, max_length=2048, device="cpu", backend="trainer", progress=False)
    assert (m["n_train"], m["n_heldout"], m["optimizer_steps"]) == (12, 4, 2)
    assert m["backend"]["name"] == "transformers.Trainer" and m["backend"]["gradient_accumulation_steps"] == 2
    _, held = split_heldout(len(records), 0.25, 0)
    assert m["heldout_before"]["mse"] == pytest.approx(np.mean([records[i]["reward"] ** 2 for i in held]))
    assert np.isfinite(m["train_loss_per_epoch"]).all() and m["heldout_after"] != m["heldout_before"]
    pe = ProgressEstimator.from_pretrained(tmp_path / "pe", device="cpu")
    assert evaluate(pe, [records[i] for i in held])["mse"] == pytest.approx(m["heldout_after"]["mse"], abs=1e-5)
    # the command line: bf16 mixed precision and gradient checkpointing (CPU autocast here; a GPU in practice)
    assert main(["train-estimator", "--data", str(data), "--model", str(tiny), "--out", str(tmp_path / "pe16"),
                 "--batch-size", "6", "--micro-batch-size", "3", "--heldout", "0.25", "--device", "cpu", "--bf16",
                 "--gradient-checkpointing", "--lr", "3e-4", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "transformers' Trainer on cpu x 1, bf16 True, gradient checkpointing True" in printed
    saved = json.loads((tmp_path / "pe16" / PE_JSON).read_text())["metrics"]
    assert saved["optimizer_steps"] == 2 and saved["backend"]["bf16"] and saved["backend"]["gradient_checkpointing"]
    assert np.isfinite(saved["heldout_after"]["mse"])


# ---- scripts/gpu_smoke.sh --------------------------------------------------------------------------------------------
def test_gpu_smoke_runs_every_algorithm_and_its_overrides_compose(tmp_path):
    env = {**os.environ, "SMOKE_PRINT": "1", "SMOKE_OUT": str(tmp_path / "smoke"), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_smoke.sh")], capture_output=True, text=True,
                          env=env, timeout=120, check=True)
    stages = [line.split("\t", 1) for line in proc.stdout.splitlines() if "\t" in line]
    names = [name for name, _ in stages]
    algos = group_options("algorithm")
    assert names == (["estimator"] if any(a.startswith("spa") for a in algos) else []) + algos + ["eval"]
    assert "--bf16" in stages[0][1] and "--gradient-checkpointing" in stages[0][1]
    eval_algo = "3spo" if "3spo" in algos else algos[0]
    for name, cmd in stages:
        if name not in algos:
            continue
        args = cmd.split()
        assert args[1:3] == ["-m", "threespo_verl.main"]
        cfg = _compose("threespo_trainer", *args[3:])
        OmegaConf.resolve(cfg)
        assert cfg.algorithm.name == name and cfg.trainer.total_training_steps == 2
        assert cfg.actor_rollout_ref.model.path == "Qwen/Qwen2.5-0.5B-Instruct" and cfg.trainer.n_gpus_per_node == 1
        assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
        assert (cfg.trainer.save_freq == 2) == (name == eval_algo)
        if name.startswith("spa"):
            assert cfg.algorithm.spa.estimator_path.endswith("/spa/pe")
    assert f"--ckpt {tmp_path / 'smoke'}/{eval_algo} " in stages[-1][1]


# ---- WebShop: spaCy is an optional backend ---------------------------------------------------------------------------
def test_webshop_reward_does_not_import_spacy():
    code = ("import sys; import threespo_verl.envs.webshop.reward as r; "
            "assert r.type_words('Red Cotton T-Shirt') and 'spacy' not in sys.modules; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
