"""Argument checks at ``.remote()`` time, as Ray does them.

A call whose arguments do not fit the remote function's (or actor
constructor's, or method's) signature raises ``TypeError`` where the call is
made, not later inside a worker. ``check_call`` is the check; ``CallChecker``
precomputes it per target so the common call (positional arguments only)
costs a length comparison, not a ``Signature.bind`` (about 5 us).
"""
from __future__ import annotations

import inspect

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def signature_of(target, *, skip_self: bool = False) -> inspect.Signature | None:
    """The signature calls are checked against; None where Python cannot
    tell (some builtins and C extensions), then nothing is checked.
    ``skip_self``: a plain function defined in a class, called through an
    instance (an actor method), so its first parameter is bound already."""
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    if skip_self:
        params = list(sig.parameters.values())
        if params and params[0].kind in _POSITIONAL:
            sig = sig.replace(parameters=params[1:])
        elif not params or params[0].kind != inspect.Parameter.VAR_POSITIONAL:
            return None          # not callable through an instance at all: leave it to Python
    return sig


def check_call(sig: inspect.Signature | None, args: tuple, kwargs: dict, what: str) -> None:
    """TypeError naming ``what`` when ``args``/``kwargs`` cannot bind to ``sig``."""
    if sig is None:
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{what}: {exc}") from None


def to_wire(sig: inspect.Signature | None) -> list | None:
    """``sig`` as plain lists, ``[[name, kind, has_default], ...]``, so it can
    travel with actor handles (pickled, or through the head for named actors)."""
    if sig is None:
        return None
    return [[p.name, int(p.kind), p.default is not inspect.Parameter.empty]
            for p in sig.parameters.values()]


def from_wire(params: list | None) -> inspect.Signature | None:
    """The signature ``to_wire`` gave (defaults are placeholders: only their
    presence matters for a check)."""
    if params is None:
        return None
    return inspect.Signature([
        inspect.Parameter(name, inspect._ParameterKind(kind),
                          default=None if has_default else inspect.Parameter.empty)
        for name, kind, has_default in params])


class CallChecker:
    """``check_call`` for one signature, with a fast path for calls that pass
    positional arguments only."""

    __slots__ = ("sig", "what", "_min_pos", "_max_pos")

    def __init__(self, sig: inspect.Signature | None, what: str):
        self.sig = sig
        self.what = what
        self._min_pos, self._max_pos = _positional_range(sig)

    def __call__(self, args: tuple, kwargs: dict) -> None:
        if not kwargs and self._min_pos <= len(args) <= self._max_pos:
            return
        check_call(self.sig, args, kwargs, self.what)


def _positional_range(sig: inspect.Signature | None) -> tuple[float, float]:
    """(fewest, most) positional arguments a call without keywords may pass;
    (inf, -1) when such a call always needs the full check (a required
    keyword-only parameter), (0, inf) when nothing can be checked."""
    if sig is None:
        return 0, float("inf")
    required = most = 0
    for p in sig.parameters.values():
        if p.kind in _POSITIONAL:
            most += 1
            required += p.default is inspect.Parameter.empty
        elif p.kind == inspect.Parameter.VAR_POSITIONAL:
            most = float("inf")
        elif p.kind == inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty:
            return float("inf"), -1
    return required, most
