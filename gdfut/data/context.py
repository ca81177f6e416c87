"""Settings of gdfut.data (Ray's ``DataContext``)."""
from __future__ import annotations

import threading
from dataclasses import dataclass

_lock = threading.Lock()
_current = None


@dataclass
class DataContext:
    # Bytes in flight allowed per operator (its running tasks' estimated
    # output plus its outputs not yet consumed downstream). None: a share
    # of the object store: ``store_fraction`` of it split across operators.
    op_memory_budget_bytes: int | None = None
    store_fraction: float = 0.5
    # Calls queued at one actor of a class stage (hides the round trip).
    max_tasks_in_flight_per_actor: int = 2
    enable_progress_bars: bool = True
    # Blocks larger than this are split: an operator's input bundles hold about
    # this many bytes at most (Ray's target_max_block_size), so does a block
    # made from memory, and a Parquet read covers row groups of about as much.
    target_max_block_size: int = 128 * 1024 * 1024
    # Restarts of a class stage's actor whose worker died, and retries of the
    # call (the block) it was running (Ray Data: -1, forever; here bounded, so
    # a batch function that crashes its process fails the run with the cause).
    actor_max_restarts: int = 4
    actor_max_task_retries: int = 4
    # Blocks a source made from memory (from_items, from_numpy...) is cut into.
    default_num_blocks: int = 8

    @staticmethod
    def get_current() -> "DataContext":
        global _current
        with _lock:
            if _current is None:
                _current = DataContext()
            return _current
