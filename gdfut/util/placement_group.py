"""Placement groups (Ray's ``ray.util.placement_group``): reserve bundles of
resources across the cluster, then run tasks and actors inside them with
``PlacementGroupSchedulingStrategy``.

The head keeps the table and reserves the bundles on the nodes (see
``gdfut.head_pgs``); this module is the user's handle on it.
"""
from __future__ import annotations

from .. import api, runtime_context
from .. import protocol as P
from ..ids import new_id
from ..sched.placement_groups import check_bundles, check_strategy
from ..transport.tcp import RemoteError

HEAD_TIMEOUT_S = 30.0


class PlacementGroupID:
    """A placement group's id (``.hex()``, ``.binary()``), as in Ray."""

    def __init__(self, raw: bytes):
        self._raw = raw

    def binary(self) -> bytes:
        return self._raw

    def hex(self) -> str:
        return self._raw.hex()

    def __eq__(self, other):
        return isinstance(other, PlacementGroupID) and other._raw == self._raw

    def __hash__(self):
        return hash(self._raw)

    def __repr__(self):
        return f"PlacementGroupID({self.hex()})"


class PlacementGroup:
    """A handle to a placement group; picklable, so tasks and actors can use it."""

    def __init__(self, id: PlacementGroupID, bundle_specs: list[dict]):
        self.id = id
        self.bundle_specs = [dict(b) for b in bundle_specs]

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self):
        """An ObjectRef that resolves (to this group) once every bundle is reserved.

        As in Ray it is a task that needs no resources, run inside bundle 0:
        it can only start once the group exists."""
        from ..scheduling_strategies import PlacementGroupSchedulingStrategy
        return _bundle_reservation_check.options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(self, 0)).remote(self)

    def wait(self, timeout_seconds: float = 30) -> bool:
        """Block until the group is reserved (True) or ``timeout_seconds`` passed (False)."""
        located = _head_request(P.HEAD_PG_WAIT, self.id.binary(), float(timeout_seconds),
                                timeout=float(timeout_seconds) + HEAD_TIMEOUT_S)
        return located["state"] == "CREATED"

    def __eq__(self, other):
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"PlacementGroup({self.id.hex()}, {self.bundle_specs})"


@api.remote(num_cpus=0, max_retries=0)
def _bundle_reservation_check(placement_group):
    return placement_group


def placement_group(bundles: list[dict], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None, _max_cpu_fraction_per_node=None,
                    _soft_target_node_id=None, bundle_label_selector=None) -> PlacementGroup:
    """Ask the cluster to reserve ``bundles`` (resource dicts) with ``strategy``
    ("PACK", "SPREAD", "STRICT_PACK" or "STRICT_SPREAD"). Returns at once; the
    group is reserved when ``pg.ready()`` resolves. It lives until
    ``remove_placement_group`` or until its creator exits, unless
    ``lifetime="detached"``."""
    check_bundles(bundles)
    check_strategy(strategy)
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {name!r}")
    if lifetime not in (None, "detached"):
        raise ValueError(f"lifetime must be None or 'detached', got {lifetime!r}")
    ignored = {"_max_cpu_fraction_per_node": _max_cpu_fraction_per_node,
               "_soft_target_node_id": _soft_target_node_id,
               "bundle_label_selector": bundle_label_selector}
    if any(v is not None for v in ignored.values()):
        import warnings
        warnings.warn(f"placement_group(): {[k for k, v in ignored.items() if v is not None]} "
                      f"accepted for Ray compatibility and ignored", stacklevel=2)
    pg_id = new_id()
    bundles = [dict(b) for b in bundles]
    _head_request(P.HEAD_PG_CREATE, pg_id, name, bundles, strategy, lifetime == "detached")
    return PlacementGroup(PlacementGroupID(pg_id), bundles)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Free the group's bundles; tasks and actors running in it are killed."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"remove_placement_group() takes a PlacementGroup, got "
                        f"{type(placement_group).__name__}")
    _head_request(P.HEAD_PG_REMOVE, placement_group.id.binary())


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live group called ``placement_group_name`` (ValueError if none)."""
    row = _head_request(P.HEAD_PG_LOOKUP, placement_group_name)
    return _from_row(row)


def get_current_placement_group() -> PlacementGroup | None:
    """The group the calling task or actor runs in; None in a driver or
    outside any group (Ray's ``get_current_placement_group``)."""
    rt = runtime_context.current()
    pg = None if rt is None else rt.current_placement_group()
    if pg is None:
        return None
    rows = _head_request(P.HEAD_PG_TABLE, pg[1])
    return _from_row(rows[0]) if rows else PlacementGroup(PlacementGroupID(pg[1]), [])


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict:
    """Ray's table: id hex -> {placement_group_id, name, bundles, bundles_to_node_id,
    strategy, state, stats}; only that group's row when one is given."""
    if placement_group is not None:
        rows = _head_request(P.HEAD_PG_TABLE, placement_group.id.binary())
        return _row(rows[0]) if rows else {}
    return {row["placement_group_id"]: _row(row) for row in _head_request(P.HEAD_PG_TABLE, None)}


def _row(row: dict) -> dict:
    row = dict(row)
    row["bundles"] = {int(i): b for i, b in row["bundles"].items()}
    row["bundles_to_node_id"] = {int(i): n for i, n in row["bundles_to_node_id"].items()}
    return row


def _from_row(row: dict) -> PlacementGroup:
    bundles = [b for _, b in sorted((int(i), b) for i, b in row["bundles"].items())]
    return PlacementGroup(PlacementGroupID(bytes.fromhex(row["placement_group_id"])), bundles)


def _head_request(mtype, *fields, timeout: float = HEAD_TIMEOUT_S):
    rt = runtime_context.require()

    async def ask():
        head = await rt.head()
        return await head.request(mtype, *fields)
    try:
        return rt.io.run(ask(), timeout=timeout)
    except RemoteError as exc:
        text = str(exc)
        if text.startswith("ValueError: "):
            text = text[len("ValueError: "):]
        raise ValueError(text) from None
