"""Small value classes without ``dataclasses``: equality, hashing, repr and pickling from a
list of fields.

The classes every command loads (``Meta``, ``Entry``, ``Commit``, the repository layout,
the tar source's options) are records rather than dataclasses: importing ``dataclasses``
(it imports ``inspect``, ``ast``, ``dis``, ``tokenize``) and the code it compiles for
each class cost about 15 ms of start-up on every command, as much as exporting a
thousand small files.  So are the value classes of deploy and the boot verifier
(``pack.manifest``, ``pack.keys``, ``overlay.state``, ``overlay.objcheck``, ...): about
12 ms of a deploy's 63 ms of imports.  A subclass lists its fields in ``_fields`` and
writes its own ``__init__``; a ``Frozen`` record refuses assignment after it (its
``__init__`` sets fields with ``_set_fields``, or, made once per manifest row or object,
one ``object.__setattr__`` each).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

R = TypeVar("R", bound="Record")


class Record:
    """Equality (same class, same fields), repr and pickling by ``_fields``."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    _key: ClassVar[Any]  # a function of an instance: the tuple of its fields

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields = cls._fields
        key: Callable[[Any], tuple[Any, ...]]
        if len(fields) == 1:
            one = operator.attrgetter(fields[0])
            key = lambda obj: (one(obj),)  # noqa: E731
        elif fields:
            key = operator.attrgetter(*fields)
        else:
            key = lambda obj: ()  # noqa: E731
        cls._key = staticmethod(key)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return bool(self._key(self) == self._key(other))

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={value!r}" for name, value in zip(self._fields, self._key(self),
                                                                        strict=True))
        return f"{type(self).__qualname__}({values})"

    def as_dict(self) -> dict[str, Any]:
        """The fields by name, in order (as a shallow ``dataclasses.asdict``)."""
        return dict(zip(self._fields, self._key(self), strict=True))

    def replace(self: R, **changes: Any) -> R:
        """A copy with ``changes`` to some fields (as ``dataclasses.replace``)."""
        return type(self)(**(self.as_dict() | changes))

    def _set_fields(self, *values: object) -> None:
        """Set every field, in ``_fields`` order: what an ``__init__`` does (a hot path's
        ``__init__`` sets each itself instead, a little faster)."""
        for name, value in zip(self._fields, values, strict=True):
            object.__setattr__(self, name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, tuple(self._key(self)))  # every __init__ takes the fields in order


class Frozen(Record):
    """A record whose fields cannot be assigned once made; hashable."""

    __slots__ = ()

    def __hash__(self) -> int:
        return hash(self._key(self))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a {type(self).__name__}")


class Mutable(Record):
    """A record whose fields may change: not hashable (as a dataclass with eq)."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]
