"""Errors of gdfut.data. Each names the operator it came from."""
from __future__ import annotations

from ..exceptions import GdfutError


class DataError(GdfutError):
    """Base class of gdfut.data errors."""


class BatchFormatError(DataError, TypeError):
    """A batch function returned something that is not a batch."""


class ColumnNotFoundError(DataError, KeyError):
    """A column that the block does not have."""

    def __str__(self):            # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class UserCodeException(DataError):
    """An operator's user function raised; ``__cause__`` is its error (which
    is also an instance of the original exception class)."""

    def __init__(self, operator: str, message: str):
        super().__init__(f"{operator}: {message}")
        self.operator, self.message = operator, message

    def __reduce__(self):
        return (type(self), (self.operator, self.message))
