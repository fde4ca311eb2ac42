"""A ``SampleFn`` over an in-process vLLM engine (``AsyncLLM``), for the jobs that play episodes outside verl's
trainer: ``threespo-verl eval`` and ``threespo-verl spa collect``. Training rollouts go through verl's own vLLM
servers (``verl_glue/agent_loop.py``); this is the same chat template, the same parser downstream and the same
optional action constraint, so evaluation numbers are comparable with validation during training.

On a machine without CUDA it runs vLLM's CPU build (``VLLM_TARGET_DEVICE=cpu``, eager mode, a KV cache of
``THREESPO_VLLM_KV_GIB`` GiB); with CUDA, vLLM's GPU engine.

Sampling is reproducible: request k of a prompt seen for the j-th time gets the seed
``sha256(seed, prompt, j, k)``, so a run does not depend on how concurrent episodes interleave in vLLM's batches.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from typing import Any

from threespo_verl.envs.actions import action_choice_regex
from threespo_verl.io_utils import stable_seed
from threespo_verl.rollout.expand import Sample


class SamplerError(RuntimeError):
    """The engine failed (not the episode): callers stop instead of scoring the episode as a failure."""


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch CUDA runtime: CPU
        return False


class VLLMSampler:
    """``await sampler.with_seed(seed)(messages, n, choices)`` -> n replies of the model in ``model_path``.

    The engine starts on the first call (it needs the running event loop); ``close()`` shuts it down.
    ``stats`` counts requests, generated tokens and generation wall time (tokens/s for reports)."""

    def __init__(self, model_path: str, *, temperature: float = 0.4, top_p: float = 1.0, max_tokens: int = 64,
                 constrain_actions: bool = False, seed: int = 0, max_model_len: int = 4096,
                 device: str | None = None, gpu_memory_utilization: float = 0.8) -> None:
        self.model_path = str(model_path)
        self.temperature, self.top_p, self.max_tokens = float(temperature), float(top_p), int(max_tokens)
        self.constrain_actions = bool(constrain_actions)
        self.seed = int(seed)
        self.max_model_len = int(max_model_len)
        self.device = device or ("cuda" if _cuda_available() else "cpu")
        self.gpu_memory_utilization = float(gpu_memory_utilization)
        self._engine = None
        self._tok = None
        self._seen: Counter[tuple[int, str]] = Counter()
        self.stats = {"requests": 0, "prompt_tokens": 0, "generated_tokens": 0, "generate_s": 0.0}
        self._busy_since: float | None = None
        self._in_flight = 0

    # ------------------------------------------------------------------------------------------------ engine
    def _start(self) -> None:
        if self.device == "cpu":
            os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", os.environ.get("THREESPO_VLLM_KV_GIB", "1"))
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self._tok = AutoTokenizer.from_pretrained(self.model_path)
        kwargs: dict[str, Any] = dict(model=self.model_path, max_model_len=self.max_model_len, seed=self.seed,
                                      dtype="float32" if self.device == "cpu" else "auto",
                                      enforce_eager=self.device == "cpu", disable_log_stats=True)
        if self.device != "cpu":
            kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
        else:  # no partial prefills: vLLM rewinds a seeded request's generator after one, CPU generators cannot
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(self.max_model_len, 8192))
        self._engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))

    def close(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None

    # ------------------------------------------------------------------------------------------------ sampling
    def _seed_for(self, seed: int, prompt: str, j: int, k: int) -> int:
        return stable_seed(seed, prompt, j, k, sep="\x00", bits=31)

    def with_seed(self, seed: int):
        """A ``SampleFn`` on the same engine whose requests derive their seeds from ``seed`` (one per eval seed)."""

        async def sample(messages, n, choices=()):
            return await self.generate(messages, n, choices, seed=seed)

        return sample

    async def generate(self, messages: list[dict[str, str]], n: int, choices: tuple[str, ...] = (), *,
                       seed: int) -> list[Sample]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        if self._engine is None:
            self._start()
        text = self._tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self._tok.encode(text, add_special_tokens=False)
        if len(ids) + self.max_tokens > self.max_model_len:
            raise ValueError(f"prompt of {len(ids)} tokens + max_tokens {self.max_tokens} exceeds max_model_len "
                             f"{self.max_model_len}: lower the history length or raise --max-model-len")
        regex = action_choice_regex(choices) if self.constrain_actions else None
        j = self._seen[(seed, text)]
        self._seen[(seed, text)] += 1
        seeds = [self._seed_for(seed, text, j, k) for k in range(n)]

        async def one(seed: int):
            sp = SamplingParams(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                                seed=seed, structured_outputs=StructuredOutputsParams(regex=regex) if regex else None)
            final = None
            async for out in self._engine.generate({"prompt_token_ids": ids}, sp, request_id=uuid.uuid4().hex):
                final = out
            return final.outputs[0]

        if self._in_flight == 0:
            self._busy_since = time.perf_counter()
        self._in_flight += 1
        try:
            outs = await asyncio.gather(*[one(s) for s in seeds])
        except (ValueError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - EngineDeadError and friends: the engine, not the episode
            raise SamplerError(f"vLLM engine failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self._in_flight -= 1
            if self._in_flight == 0 and self._busy_since is not None:
                self.stats["generate_s"] += time.perf_counter() - self._busy_since
        self.stats["requests"] += n
        self.stats["prompt_tokens"] += n * len(ids)
        self.stats["generated_tokens"] += sum(len(o.token_ids) for o in outs)
        return [Sample(text=o.text, payload=None) for o in outs]

    def tokens_per_s(self) -> float:
        s = self.stats["generate_s"]
        return self.stats["generated_tokens"] / s if s > 0 else 0.0
