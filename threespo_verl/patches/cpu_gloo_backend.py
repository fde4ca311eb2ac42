"""verl builds the process-group backend as "cpu:gloo,<device>:<backend>", which on the CPU platform is
"cpu:gloo,cpu:gloo" and torch rejects ("Duplicate device type cpu"); on CPU the backend is plain gloo."""

from __future__ import annotations

import functools
import os

WHY = "FSDP workers on the CPU platform: process-group backend 'gloo' instead of the duplicate 'cpu:gloo,cpu:gloo'"
VERL_VERSIONS = ("0.9.1",)


def needed() -> bool:
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu"


def apply() -> bool:
    import verl.utils.distributed as dist

    original = dist.initialize_global_process_group_ray
    if getattr(original, "__threespo_patched__", False):
        return True

    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        if backend is None and dist.get_device_name() == "cpu":
            backend = "gloo"
        return original(timeout_second=timeout_second, backend=backend)

    initialize_global_process_group_ray.__threespo_patched__ = True
    dist.initialize_global_process_group_ray = initialize_global_process_group_ray
    return True
