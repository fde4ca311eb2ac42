"""vLLM's CPU backend repacks linear weights after loading (oneDNN / sgl kernels) and drops the original parameters,
so verl's in-place weight sync (load_weights per bucket, then process_weights_after_loading) fails on CPU
("'Parameter' object has no attribute 'weight_loader'"). On the CPU platform this patch wraps verl's
``vLLMColocateWorkerExtension.update_weights_from_ipc`` in vLLM's own layerwise reload
(``initialize_layerwise_reload`` before the buckets arrive, ``finalize_layerwise_reload`` after, in place of verl's
second ``process_weights_after_loading``), the mechanism vLLM provides for reloading processed weights."""

from __future__ import annotations

import contextlib
import functools
import os

WHY = "weight sync into vLLM's CPU backend through vLLM's layerwise reload (CPU repacks weights at load)"
VERL_VERSIONS = ("0.9.1",)
TARGET = "verl.workers.rollout.vllm_rollout.utils"


def needed() -> bool:
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu"


def apply() -> bool:
    import sys

    if TARGET in sys.modules:
        _patch(sys.modules[TARGET])
    else:
        import wrapt

        wrapt.register_post_import_hook(_patch, TARGET)  # patch when vLLM's worker imports verl's extension
    return True


@contextlib.contextmanager
def _no_second_processing():
    """verl calls vLLM's process_weights_after_loading after the last bucket; the layerwise reload processes every
    layer itself, and processing a repacked layer again would fail."""
    import vllm.model_executor.model_loader.utils as mlu

    original = mlu.process_weights_after_loading
    mlu.process_weights_after_loading = lambda *a, **k: None
    try:
        yield
    finally:
        mlu.process_weights_after_loading = original


def _patch(module) -> None:
    cls = module.vLLMColocateWorkerExtension
    original = cls.update_weights_from_ipc
    if getattr(original, "__threespo_patched__", False):
        return

    @functools.wraps(original)
    def update_weights_from_ipc(self, peft_config: dict = None, base_sync_done=False, use_shm: bool = False):
        from vllm.platforms import current_platform

        plain = not peft_config and not getattr(self, "_is_qat_model", False) and not getattr(
            self, "_is_modelopt_qat", False) and not module.is_quantized_model(self.model_runner.vllm_config)
        if not (current_platform.is_cpu() and plain):
            return original(self, peft_config=peft_config, base_sync_done=base_sync_done, use_shm=use_shm)
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

        for model in self._iter_all_models():
            initialize_layerwise_reload(model)
        with _no_second_processing():
            result = original(self, peft_config=peft_config, base_sync_done=base_sync_done, use_shm=use_shm)
        for model, model_config in self._iter_all_models_with_config():
            finalize_layerwise_reload(model, model_config)
        return result

    update_weights_from_ipc.__threespo_patched__ = True
    cls.update_weights_from_ipc = update_weights_from_ipc
