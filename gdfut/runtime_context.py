"""The process-wide runtime (driver or worker) that gdfut's API talks to."""
from __future__ import annotations

from .exceptions import NotInitializedError

_runtime = None


def current():
    return _runtime


def require():
    if _runtime is None:
        raise NotInitializedError(
            "gdfut is not initialized (call gdfut.init() first, or it was shut down)")
    return _runtime


def set_runtime(rt) -> None:
    global _runtime
    _runtime = rt
