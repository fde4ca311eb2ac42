"""A CPU platform for verl (``VERL_PLATFORM=cpu``): the whole loop on a machine without an accelerator (DESIGN §6).

verl routes every device question through its platform registry (``verl.plugin.platform``). This platform answers
them for the CPU:

* device ``cpu`` (``torch.cpu`` plus the memory/seed calls verl makes on a device module), collectives over ``gloo``, no IPC handles (weights reach vLLM through shared
  memory, verl's path for platforms without IPC);
* Ray: the workers still ask Ray for ``GPU`` resources (verl's placement groups and its resource check count only
  GPU/NPU), so a CPU run starts Ray with *logical* GPUs (``ray_kwargs.ray_init.num_gpus``): they are slots, one per
  FSDP rank / vLLM replica, not hardware. ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES`` keeps Ray from writing
  ``CUDA_VISIBLE_DEVICES`` (CPU torch would ignore it anyway);
* the vLLM server gets ``VLLM_TARGET_DEVICE=cpu`` (vLLM's CPU platform and its AVX2/AVX-512 kernels), a KV-cache
  size in GiB (``THREESPO_VLLM_KV_GIB``, default 1) and ``THREESPO_VLLM_OMP_THREADS`` OpenMP threads (default 1;
  the FSDP worker's threads come from the Ray workers' ``OMP_NUM_THREADS``), because the FSDP worker, the vLLM
  server and the agent-loop worker share the cores.

Registered by the plugin (``threespo_verl.plugin``) before anything in verl asks for the platform; select it with
``VERL_PLATFORM=cpu`` in the environment of every process (``threespo_trainer_cpu`` sets it for Ray workers).
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from types import ModuleType
from typing import Any, Optional

import torch
from verl.plugin.platform.platform_base import PlatformBase

PLATFORM_NAME = "cpu"


class _CPUDeviceModule(ModuleType):
    """``torch.cpu`` plus the ``torch.cuda``-style calls verl makes on its device module (memory statistics, seeds,
    device selection). Memory figures are the process's resident set size and the machine's RAM (psutil): the CPU
    has no separate device memory."""

    def __init__(self) -> None:
        super().__init__("threespo_verl.platform_cpu.device_module")
        self._peak = 0

    def __getattr__(self, name: str):
        return getattr(torch.cpu, name)

    @staticmethod
    def _rss() -> int:
        import psutil

        return int(psutil.Process().memory_info().rss)

    def memory_allocated(self, device=None) -> int:
        rss = self._rss()
        self._peak = max(self._peak, rss)
        return rss

    memory_reserved = memory_allocated

    def max_memory_allocated(self, device=None) -> int:
        return max(self._peak, self.memory_allocated())

    max_memory_reserved = max_memory_allocated

    def reset_peak_memory_stats(self, device=None) -> None:
        self._peak = self._rss()

    def mem_get_info(self, device=None) -> tuple[int, int]:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.available), int(vm.total)

    def empty_cache(self) -> None:
        return None

    def synchronize(self, device=None) -> None:
        return None

    def set_device(self, device) -> None:
        return None

    def current_device(self) -> str:
        return "cpu"

    def device_count(self) -> int:
        return 1

    def is_available(self) -> bool:
        return True

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    manual_seed_all = manual_seed

    def get_rng_state(self, device=None):
        return torch.get_rng_state()

    def set_rng_state(self, state, device=None) -> None:
        torch.set_rng_state(state)

    def ipc_collect(self) -> None:
        return None

    def set_per_process_memory_fraction(self, fraction: float, device=None) -> None:
        return None

    def get_device_name(self, device=None) -> str:
        return "cpu"


_DEVICE_MODULE = _CPUDeviceModule()


class PlatformCPU(PlatformBase):
    """verl platform backend for CPU-only machines (see module docstring)."""

    # ---- device ----------------------------------------------------------------------------------------------
    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return _DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # never auto-detected: a GPU machine must not fall onto it; choose it with VERL_PLATFORM=cpu
        return False

    def current_device(self) -> str:
        # verl passes this to tensor.to(...) and torch.device(...): an int would name an accelerator index
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    # ---- RNG, memory, properties -----------------------------------------------------------------------------
    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    # ---- distributed -----------------------------------------------------------------------------------------
    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    # ---- profiling -------------------------------------------------------------------------------------------
    @contextmanager
    def nvtx_range(self, msg: str):
        with nullcontext():
            yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    # ---- Ray -------------------------------------------------------------------------------------------------
    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_gpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

    def is_ipc_supported(self) -> bool:
        return False

    def rollout_env_vars(self) -> dict[str, str]:
        return {
            "VLLM_TARGET_DEVICE": "cpu",
            "VERL_PLATFORM": PLATFORM_NAME,
            "VLLM_CPU_KVCACHE_SPACE": os.environ.get("THREESPO_VLLM_KV_GIB", "1"),
            "OMP_NUM_THREADS": os.environ.get("THREESPO_VLLM_OMP_THREADS", "1"),
        }

    def cudart(self) -> Any:
        return None


def register() -> None:
    """Add the platform to verl's registry (idempotent)."""
    from verl.plugin.platform.platform_manager import PlatformRegistry

    if PlatformRegistry.get(PLATFORM_NAME) is not PlatformCPU:
        PlatformRegistry.register(platform=PLATFORM_NAME)(PlatformCPU)


#: verl's FSDP engines (registered by verl for cuda/npu), registered for the cpu device too: torch's FSDP2 runs on
#: CPU tensors with gloo collectives
CPU_ENGINES = {
    ("language_model", "FSDPEngineWithLMHead"): ("fsdp", "fsdp2"),
    ("value_model", "FSDPEngineWithValueHead"): ("fsdp", "fsdp2"),
}


def register_engines() -> list[str]:
    """Register verl's FSDP engine classes for ``device="cpu"`` in verl's ``EngineRegistry`` (idempotent); returns
    the (model_type, backend) pairs it added."""
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp import transformer_impl

    added = []
    for (model_type, cls_name), backends in CPU_ENGINES.items():
        cls = getattr(transformer_impl, cls_name)
        todo = [b for b in backends if EngineRegistry._engines.get(model_type, {}).get(b, {}).get(PLATFORM_NAME) is None]
        if todo:
            EngineRegistry.register(model_type=model_type, backend=todo, device=PLATFORM_NAME)(cls)
            added += [f"{model_type}/{b}" for b in todo]
    return added


def missing_engines() -> list[str]:
    from verl.workers.engine.base import EngineRegistry

    return [f"cpu engine {m}/{b}" for (m, _c), backends in CPU_ENGINES.items() for b in backends
            if EngineRegistry._engines.get(m, {}).get(b, {}).get(PLATFORM_NAME) is None]
