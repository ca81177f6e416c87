"""Errors a user of gdfut can catch. Names follow Ray's where Ray has one."""
from __future__ import annotations


class GdfutError(Exception):
    """Base class of every gdfut error."""


class NotInitializedError(GdfutError):
    pass


class GetTimeoutError(GdfutError, TimeoutError):
    pass


class ObjectStoreFullError(GdfutError, MemoryError):
    pass


class WorkerCrashedError(GdfutError):
    pass


class ActorDiedError(GdfutError):
    pass


class OwnerDiedError(GdfutError):
    pass


class ObjectLostError(GdfutError):
    pass


class TaskCancelledError(GdfutError):
    pass


class UnschedulableError(GdfutError):
    pass


class NodeDiedError(GdfutError):
    pass


class AuthenticationError(GdfutError):
    pass


class ProtocolError(GdfutError):
    pass


class SerializationError(GdfutError, TypeError):
    pass


class TaskError(GdfutError):
    """A task or actor method raised. ``get`` raises an instance of a subclass
    that is also an instance of the original exception's class, so
    ``except ValueError`` works as it would locally.

    Attributes: ``cause`` (the original exception, when it could be
    unpickled), ``cause_cls_name``, ``remote_traceback`` (text), ``function``.
    """

    def __init__(self, function: str, remote_traceback: str, cause: BaseException | None,
                 cause_cls_name: str):
        self.function = function
        self.remote_traceback = remote_traceback
        self.cause = cause
        self.cause_cls_name = cause_cls_name
        self.args = (self._message(),)

    def _message(self) -> str:
        return (f"task {self.function} raised {self.cause_cls_name}: {self.cause}\n"
                f"--- remote traceback ---\n{self.remote_traceback.rstrip()}")

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self):
        return (_rebuild_task_error, (self.function, self.remote_traceback, self.cause,
                                      self.cause_cls_name))

    def as_instanceof_cause(self) -> "TaskError":
        """An error of a class deriving from both TaskError and the cause's class."""
        cause_cls = type(self.cause) if self.cause is not None else None
        if cause_cls is None or issubclass(TaskError, cause_cls) or not _subclassable(cause_cls):
            return self
        derived = _derived_class(cause_cls)
        err = derived.__new__(derived)
        TaskError.__init__(err, self.function, self.remote_traceback, self.cause,
                           self.cause_cls_name)
        return err


_DERIVED: dict[type, type] = {}


def _subclassable(cls: type) -> bool:
    try:
        type("probe", (TaskError, cls), {})
        return True
    except TypeError:  # e.g. layout conflicts between builtin bases
        return False


def _derived_class(cause_cls: type) -> type:
    derived = _DERIVED.get(cause_cls)
    if derived is None:
        derived = type(f"TaskError({cause_cls.__name__})", (TaskError, cause_cls), {
            "__init__": TaskError.__init__, "__str__": TaskError.__str__,
            "__reduce__": TaskError.__reduce__})
        _DERIVED[cause_cls] = derived
    return derived


def _rebuild_task_error(function, remote_traceback, cause, cause_cls_name):
    return TaskError(function, remote_traceback, cause, cause_cls_name).as_instanceof_cause()
