"""Exoshuffle-style shuffles written on the public futures API.

``shuffle(inputs, map_fn, reduce_fn, num_reducers, partitioner=..., strategy=...)``
with strategies ``simple``, ``push`` and ``riffle`` (see ``plan.py``);
``python -m gdfut.shuffle.sort`` is the sort benchmark (``sort.py``).
"""
from gdfut.shuffle.driver import ShuffleOutput, ShuffleStats, shuffle
from gdfut.shuffle.partition import Hash, KeyRange
from gdfut.shuffle.plan import STRATEGIES, ShufflePlanner

__all__ = ["shuffle", "ShuffleOutput", "ShuffleStats", "KeyRange", "Hash", "STRATEGIES",
           "ShufflePlanner"]
