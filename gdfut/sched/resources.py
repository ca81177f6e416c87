"""Resource quantities: how much of each named resource a task needs or a node has.

A ``ResourceSet`` maps a resource name ("CPU", "GPU", "GPU_memory" and
"memory" in bytes, or any custom name) to a non-negative quantity. It is
immutable: ``add``/``subtract`` return new sets.

Quantities are stored as integers in units of 1/10000 (``UNITS_PER_ONE``) so
that granting and returning 0.1 CPU a million times lands exactly back on the
starting value; floats would drift and a node would slowly "lose" capacity.
Zero quantities are not stored, so ``{"GPU": 0}`` equals ``{}``.

Pure: no I/O, no clocks. ``to_dict``/``from_dict`` give msgpack-friendly
plain dicts for the wire.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

UNITS_PER_ONE = 10_000
"""Resolution of every quantity: 1/10000 of a CPU, GPU or byte."""

CPU = "CPU"
GPU = "GPU"
GPU_MEMORY = "GPU_memory"
MEMORY = "memory"

# Reserved names that have their own ``from_options`` keyword (as in Ray):
# putting them in ``resources=`` too would make two sources of truth.
_KEYWORD_ONLY = {CPU: "num_cpus", GPU: "num_gpus"}


def _to_units(name: str, value: Any) -> int:
    """Convert one user-supplied quantity to integer units, validating it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"resource {name!r} must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"resource {name!r} must be finite, got {value!r}")
    if value < 0:
        raise ValueError(f"resource {name!r} must be >= 0, got {value!r}")
    if isinstance(value, int) or value.is_integer():
        return int(value) * UNITS_PER_ONE  # exact, even for byte counts
    units = round(value * UNITS_PER_ONE)
    if units == 0:
        raise ValueError(
            f"resource {name!r}={value!r} is below the resolution 1/{UNITS_PER_ONE}"
        )
    return units


def _from_units(units: int) -> int | float:
    """Units back to a plain number: an int when whole (reads better in messages)."""
    whole, rest = divmod(units, UNITS_PER_ONE)
    return whole if rest == 0 else units / UNITS_PER_ONE


class ResourceSet(Mapping[str, float]):
    """Immutable mapping resource name -> quantity (never negative, zeros dropped)."""

    __slots__ = ("_units",)

    def __init__(self, quantities: Mapping[str, Any] | None = None) -> None:
        units: dict[str, int] = {}
        for name, value in (quantities or {}).items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"resource names must be non-empty strings, got {name!r}")
            amount = _to_units(name, value)
            if amount:
                units[name] = amount
        self._units = units

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_units(cls, units: Mapping[str, int]) -> ResourceSet:
        """Build from integer units directly (internal arithmetic, no validation cost)."""
        new = cls.__new__(cls)
        for name, amount in units.items():
            assert amount >= 0, f"negative resource {name}={amount} units"
        new._units = {name: amount for name, amount in units.items() if amount}
        return new

    @classmethod
    def from_options(
        cls,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        resources: Mapping[str, Any] | None = None,
        default_cpus: float = 1.0,
        memory: float | None = None,
    ) -> ResourceSet:
        """The resources a task/actor asks for, from its ``.options(...)``.

        ``num_cpus`` defaults to ``default_cpus``; ``memory`` (bytes) is the
        ``memory`` resource, scheduled like any other. GPUs may be fractional
        (0 < x < 1, several tasks share one device) or whole numbers; 1.5 GPUs
        is rejected because no single task can be placed across 1.5 devices.
        """
        quantities: dict[str, Any] = {}
        for name, value in (resources or {}).items():
            if name in _KEYWORD_ONLY:
                raise ValueError(
                    f"resource {name!r}: use {_KEYWORD_ONLY[name]}= instead of resources="
                )
            quantities[name] = value
        quantities[CPU] = default_cpus if num_cpus is None else num_cpus
        if num_gpus is not None:
            quantities[GPU] = num_gpus
        if memory is not None:
            if MEMORY in quantities:
                raise ValueError("resource 'memory': give memory= or resources={'memory': ...}, "
                                 "not both")
            quantities[MEMORY] = memory
        result = cls(quantities)
        gpus = result.get(GPU, 0)
        if gpus > 1 and not float(gpus).is_integer():
            raise ValueError(
                f"resource 'GPU' must be a fraction below 1 or a whole number, got {num_gpus!r}"
            )
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResourceSet:
        """Inverse of ``to_dict`` (validates: data may come off the wire)."""
        return cls(data)

    def to_dict(self) -> dict[str, int | float]:
        return {name: _from_units(amount) for name, amount in sorted(self._units.items())}

    # -- Mapping protocol ---------------------------------------------------

    def __getitem__(self, name: str) -> float:
        return _from_units(self._units[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._units)

    def __len__(self) -> int:
        return len(self._units)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ResourceSet):
            return self._units == other._units
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._units.items()))

    def __repr__(self) -> str:
        return f"ResourceSet({self.to_dict()})"

    # -- queries --------------------------------------------------------------

    def units(self, name: str) -> int:
        """Integer units of ``name`` (0 when absent)."""
        return self._units.get(name, 0)

    def quantity(self, name: str) -> int | float:
        """Quantity of ``name`` (0 when absent)."""
        return _from_units(self._units.get(name, 0))

    def is_empty(self) -> bool:
        return not self._units

    def fits_in(self, available: ResourceSet) -> bool:
        """True when every quantity here is covered by ``available``."""
        return all(available.units(name) >= amount for name, amount in self._units.items())

    def missing_from(self, total: ResourceSet) -> dict[str, int | float]:
        """Names whose quantity here exceeds ``total``, with the shortfall."""
        return {
            name: _from_units(amount - total.units(name))
            for name, amount in sorted(self._units.items())
            if amount > total.units(name)
        }

    # -- arithmetic -----------------------------------------------------------

    def add(self, other: ResourceSet) -> ResourceSet:
        units = dict(self._units)
        for name, amount in other._units.items():
            units[name] = units.get(name, 0) + amount
        return ResourceSet.from_units(units)

    def subtract(self, other: ResourceSet) -> ResourceSet:
        """``self - other``; asserts the result is never negative."""
        units = dict(self._units)
        for name, amount in other._units.items():
            left = units.get(name, 0) - amount
            assert left >= 0, f"subtract would make {name} negative: {self} - {other}"
            units[name] = left
        return ResourceSet.from_units(units)

    def subtract_clamped(self, other: ResourceSet) -> tuple[ResourceSet, ResourceSet]:
        """``(max(self - other, 0), shortfall)``: for deliberate overcommit.

        The shortfall is what ``other`` wanted beyond what ``self`` had.
        """
        units = dict(self._units)
        short: dict[str, int] = {}
        for name, amount in other._units.items():
            have = units.get(name, 0)
            units[name] = max(0, have - amount)
            short[name] = max(0, amount - have)
        return ResourceSet.from_units(units), ResourceSet.from_units(short)

    def only(self, *names: str) -> ResourceSet:
        """The sub-set restricted to ``names``."""
        return ResourceSet.from_units({n: a for n, a in self._units.items() if n in names})

    def without(self, *names: str) -> ResourceSet:
        """The sub-set without ``names``."""
        return ResourceSet.from_units({n: a for n, a in self._units.items() if n not in names})


EMPTY = ResourceSet()


def actor_resources(
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: Mapping[str, Any] | None = None,
) -> tuple[ResourceSet, ResourceSet]:
    """``(placement, held)`` for an actor, with Ray's defaults.

    An actor with no explicit ``num_cpus`` needs 1 CPU *free* to be placed
    (so actors are not piled onto a saturated node) but holds 0 CPU while it
    lives (an idle actor should not pin a core). With an explicit
    ``num_cpus`` both are that number. GPUs and custom resources are always
    held for the actor's lifetime.
    """
    held = ResourceSet.from_options(num_cpus, num_gpus, resources, default_cpus=0.0)
    if num_cpus is not None:
        return held, held
    placement = held.add(ResourceSet({CPU: 1}))
    return placement, held
