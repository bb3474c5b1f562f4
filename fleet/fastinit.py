"""Fast constructors for the frozen, slotted dataclasses made on every message.

A frozen dataclass's ``__init__`` sets each field with ``object.__setattr__``
(it must step around its own ``__setattr__``, which refuses): a lookup and a
call per field, most of what a :class:`~fleet.tensor.Tensor` or a
:class:`~fleet.contract.Reply` costs to make. Decoding makes several per
request, so :func:`positional` builds, once per class, a function that takes
every field in declaration order and sets each slot through its descriptor
directly: the same object, about twice as fast. Only for callers that pass
every field, already checked (the wire decoder, the tensor splitter).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def positional(cls: type[T]) -> Callable[..., T]:
    """A function ``make(field1, field2, ...)`` that returns an instance of
    the slotted dataclass ``cls`` with those fields, every one given, in the
    order :func:`dataclasses.fields` lists them. ``__post_init__`` is not
    run: a class that has one is refused."""
    if not dataclasses.is_dataclass(cls) or "__slots__" not in vars(cls):
        raise TypeError(f"{cls.__name__} is not a slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__, which would be skipped")
    names = [f.name for f in dataclasses.fields(cls)]
    clash = [n for n in names if n in ("_obj", "_new", "_cls") or n.startswith("_set_")]
    if clash:
        raise TypeError(f"{cls.__name__}: field {clash[0]!r} clashes with the constructor's names")
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    scope.update({f"_set_{name}": getattr(cls, name).__set__ for name in names})
    sets = "".join(f"    _set_{name}(_obj, {name})\n" for name in names)
    source = f"def make({', '.join(names)}):\n    _obj = _new(_cls)\n{sets}    return _obj\n"
    exec(source, scope)
    make: Callable[..., T] = scope["make"]
    make.__qualname__ = make.__name__ = f"make_{cls.__name__}"
    return make


__all__ = ["positional"]
