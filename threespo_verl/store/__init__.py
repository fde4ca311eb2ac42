"""Per-state statistics of 3SPO (DESIGN §2.1, §2.6). ``StateStore`` is pure numpy; the Ray actor is in ``actor``
(imported separately so that this package does not import ray)."""

from threespo_verl.store.state_store import FORMAT_VERSION, StateStore, StoreFormatError, key_hash

__all__ = ["FORMAT_VERSION", "StateStore", "StoreFormatError", "key_hash"]
