"""The shuffle plan: which blocks go to which merge and reduce, and when the
next maps may be submitted. Pure: events in, instructions out, no futures,
clocks or I/O (the driver in ``gdfut/shuffle/driver.py`` carries them out).

Strategies (Exoshuffle's, SIGCOMM'23):

- ``simple``: map m returns R blocks; reduce r takes block r of every map.
  Reduces are submitted once the last map is, so they start as their inputs
  appear (the runtime resolves arguments before leasing a worker).
- ``push``: each time ``merge_factor`` maps have finished (a round), one merge
  task per reducer r combines block r of those maps, placed on reducer r's
  node; reduce r then reads one block per round instead of one per map.
  Rounds are merged only while a reducer would otherwise read more than
  ``max_reducer_blocks`` blocks (0: merge every round, the multi-node
  default). On one node a merge only copies blocks the reducer could read
  in place, so there the driver sets a high limit and push without enough
  maps to pass it runs as simple: no merges, reduces submitted as early.
- ``riffle``: map outputs are pre-merged on the map side: each time
  ``merge_factor`` maps have finished on the same node, one merge task on that
  node combines all R blocks of those maps into R larger blocks.

Backpressure: at most ``map_parallelism`` maps are in flight (a wave), and no
map is submitted while ``max_merges_in_flight`` merges are running, so the
live unmerged map output is bounded by (map_parallelism + merge_factor) maps.
"""
from __future__ import annotations

from dataclasses import dataclass, field

STRATEGIES = ("simple", "push", "riffle")


@dataclass(frozen=True)
class SubmitMap:
    map_index: int


@dataclass(frozen=True)
class SubmitMerge:
    merge_id: int
    maps: tuple[int, ...]       # the maps whose blocks it combines
    reducer: int | None         # push: only block `reducer` of each map; riffle: None (all R)
    node: str | None            # where to place it (soft node affinity); None: anywhere


@dataclass(frozen=True)
class SubmitReduce:
    reducer: int
    maps: tuple[int, ...]       # maps whose block `reducer` it reads directly
    merges: tuple[int, ...]     # merges whose output for `reducer` it reads
    node: str | None


@dataclass
class ShufflePlanner:
    num_maps: int
    num_reducers: int
    strategy: str = "simple"
    map_parallelism: int = 2
    merge_factor: int = 4
    max_merges_in_flight: int | None = None
    reducer_nodes: list = field(default_factory=list)   # push: node of each reducer
    max_reducer_blocks: int = 0         # push: merge rounds while reducers read more

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}: use one of {STRATEGIES}")
        for name in ("num_maps", "num_reducers", "map_parallelism", "merge_factor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "num_maps" else 1):
                raise ValueError(f"{name} must be an int >= {0 if name == 'num_maps' else 1}, "
                                 f"got {v!r}")
        if self.max_merges_in_flight is None:
            per_round = self.num_reducers if self.strategy == "push" else 1
            self.max_merges_in_flight = 2 * max(per_round, self.map_parallelism)
        if isinstance(self.max_reducer_blocks, bool) or \
                not isinstance(self.max_reducer_blocks, int) or self.max_reducer_blocks < 0:
            raise ValueError(f"max_reducer_blocks must be an int >= 0, "
                             f"got {self.max_reducer_blocks!r}")
        if self.strategy == "push" and self.reducer_nodes and \
                len(self.reducer_nodes) != self.num_reducers:
            raise ValueError("reducer_nodes needs one node per reducer")
        self.next_map = 0
        self.maps_in_flight: set[int] = set()
        self.maps_done: set[int] = set()
        self.unmerged: dict = {}                 # node (riffle) or None (push) -> [map]
        self.merges: dict[int, SubmitMerge] = {}
        self.merges_in_flight: set[int] = set()
        self.merges_done: set[int] = set()
        self.reduces: dict[int, SubmitReduce] = {}
        self.reduces_done: set[int] = set()
        self.direct: list[int] = []              # maps the reducers read unmerged
        self.reducer_blocks = self.num_maps      # push: blocks each reducer reads so far

    # ---- events ----
    def start(self) -> list:
        return self._fill()

    def map_done(self, map_index: int, node: str | None = None) -> list:
        assert map_index in self.maps_in_flight, f"map {map_index} was not in flight"
        self.maps_in_flight.discard(map_index)
        self.maps_done.add(map_index)
        out = []
        if self.strategy != "simple" and not self.reduces and self._merging():
            key = node if self.strategy == "riffle" else None
            group = self.unmerged.setdefault(key, [])
            group.append(map_index)
            if len(group) >= self.merge_factor:
                out += self._merge(self.unmerged.pop(key), key)
        out += self._fill()
        return out

    def merge_done(self, merge_id: int) -> list:
        assert merge_id in self.merges_in_flight, f"merge {merge_id} was not in flight"
        self.merges_in_flight.discard(merge_id)
        self.merges_done.add(merge_id)
        return self._fill()

    def reduce_done(self, reducer: int) -> list:
        assert reducer in self.reduces and reducer not in self.reduces_done
        self.reduces_done.add(reducer)
        return []

    @property
    def done(self) -> bool:
        return len(self.reduces_done) == self.num_reducers

    # ---- decisions ----
    def _fill(self) -> list:
        """Submit maps while the window and the merge backlog allow; once all maps
        are in (simple) or done (push, riffle), merge the leftovers and reduce."""
        out = []
        while (self.next_map < self.num_maps
               and len(self.maps_in_flight) < self.map_parallelism
               and len(self.merges_in_flight) < self.max_merges_in_flight):
            self.maps_in_flight.add(self.next_map)
            out.append(SubmitMap(self.next_map))
            self.next_map += 1
        if not self.reduces and self.next_map == self.num_maps:
            if self.strategy == "simple" or not self._merging():
                merged = {x for m in self.merges.values() for x in m.maps}
                self.direct = [m for m in range(self.num_maps) if m not in merged]
                self.unmerged.clear()
                out += self._reduce()
            elif not self.maps_in_flight:
                for key in list(self.unmerged):
                    group = self.unmerged.pop(key)
                    if len(group) >= 2 and self._merging():
                        out += self._merge(group, key)
                    else:
                        self.direct += group
                out += self._reduce()
        return out

    def _merging(self) -> bool:
        """Whether merges still pay: riffle always; push while a reducer would
        read more than max_reducer_blocks blocks."""
        return self.strategy == "riffle" or self.reducer_blocks > self.max_reducer_blocks

    def _merge(self, group: list, key) -> list:
        maps = tuple(sorted(group))
        if self.strategy == "push":
            self.reducer_blocks -= len(maps) - 1
        reducers = range(self.num_reducers) if self.strategy == "push" else [None]
        out = []
        for r in reducers:
            node = key if r is None else self._node_of(r)
            m = SubmitMerge(len(self.merges), maps, r, node)
            self.merges[m.merge_id] = m
            self.merges_in_flight.add(m.merge_id)
            out.append(m)
        return out

    def _node_of(self, reducer: int):
        return self.reducer_nodes[reducer] if self.reducer_nodes else None

    def _reduce(self) -> list:
        out = []
        direct = tuple(sorted(self.direct))
        for r in range(self.num_reducers):
            merges = tuple(m.merge_id for m in self.merges.values()
                           if m.reducer is None or m.reducer == r)
            red = SubmitReduce(r, direct, merges, self._node_of(r))
            self.reduces[r] = red
            out.append(red)
        return out

    # ---- invariants ----
    def validate(self) -> None:
        assert len(self.maps_in_flight) <= self.map_parallelism
        assert self.maps_in_flight.isdisjoint(self.maps_done)
        assert self.maps_in_flight | self.maps_done == set(range(self.next_map))
        assert self.merges_in_flight.isdisjoint(self.merges_done)
        assert self.merges_in_flight | self.merges_done == set(self.merges)
        for red in self.reduces.values():
            covered = list(red.maps)
            for mid in red.merges:
                covered += self.merges[mid].maps
            assert sorted(covered) == list(range(self.num_maps)), \
                f"reducer {red.reducer} reads maps {sorted(covered)}"
