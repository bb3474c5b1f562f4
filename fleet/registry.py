"""Extension points: one registry each, filled from Python entry points.

Every extension point of the fleet (transports, scaling policies, actuators,
model runtimes) is a :class:`Registry`. An entry is a *spec* object that
declares its own name and its own configuration model; the registry maps a
name to it. Entries come from two places:

- the entry-point group (``fleet.transports``, ``fleet.policies``, ...) of
  every installed distribution, this one included (see ``pyproject.toml``).
  A third-party package adds a transport or a policy by declaring an entry
  point in its own metadata; nothing in this repository changes. An entry
  point is loaded only when its name is asked for, so naming the ``kafka``
  transport is what imports ``aiokafka``.
- :meth:`Registry.register`, for code that builds specs at run time.

A name nobody registered, an entry point that fails to import, or one that
names an object of the wrong kind raises :class:`~fleet.errors.ConfigError`
that says which, and lists the names that are known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from fleet.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to specs of one kind, from entry points and :meth:`register`.

    ``spec_type`` is checked on every entry loaded; ``names_of`` gives the
    names a spec answers to (by default its ``name`` attribute), and an entry
    point must be registered under one of them, so an entry and its spec never
    disagree about what it is called.
    """

    def __init__(
        self,
        group: str,
        what: str,
        spec_type: type[T],
        *,
        names_of: Callable[[T], Iterable[str]] | None = None,
    ) -> None:
        self.group = group
        self.what = what
        self.spec_type = spec_type
        self._names_of = names_of or (lambda spec: (str(getattr(spec, "name")),))  # noqa: B009
        self._added: dict[str, T] = {}
        self._loaded: dict[str, T] = {}

    def _entry_points(self) -> dict[str, EntryPoint]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Every name known now, registered or declared by an entry point."""
        return sorted(set(self._added) | set(self._entry_points()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def get(self, name: str) -> T:
        """The spec registered as ``name``; :class:`ConfigError` if none."""
        if name in self._added:
            return self._added[name]
        if name in self._loaded:
            return self._loaded[name]
        ep = self._entry_points().get(name)
        if ep is None:
            known = ", ".join(self.names()) or "(none)"
            raise ConfigError(f"unknown {self.what} {name!r}; known: {known}")
        spec = self._load(name, ep)
        self._loaded[name] = spec
        return spec

    def _load(self, name: str, ep: EntryPoint) -> T:
        try:
            spec = ep.load()
        except Exception as exc:  # an import error in a plug-in is a configuration problem
            raise ConfigError(
                f"{self.what} {name!r} (entry point {ep.value!r} in {self.group}) "
                f"cannot be loaded: {type(exc).__name__}: {exc}"
            ) from exc
        self._check(name, spec, source=f"entry point {ep.value!r}")
        return spec  # type: ignore[no-any-return]

    def _check(self, name: str, spec: object, *, source: str) -> None:
        if not isinstance(spec, self.spec_type):
            raise ConfigError(
                f"{self.what} {name!r} ({source}) is a {type(spec).__name__}, "
                f"not a {self.spec_type.__name__}"
            )
        answers = list(self._names_of(spec))
        if name not in answers:
            raise ConfigError(
                f"{self.what} {name!r} ({source}) calls itself {', '.join(map(repr, answers))}"
            )

    def register(self, spec: T, *, name: str | None = None) -> None:
        """Add ``spec`` under each of its names (or only ``name``)."""
        for n in [name] if name is not None else list(self._names_of(spec)):
            self._check(n, spec, source="register()")
            self._added[n] = spec

    def unregister(self, name: str) -> None:
        self._added.pop(name, None)
        self._loaded.pop(name, None)

    @contextmanager
    def registered(self, spec: T) -> Iterator[T]:
        """``with registry.registered(spec):`` adds it for the block only."""
        names = list(self._names_of(spec))
        self.register(spec)
        try:
            yield spec
        finally:
            for n in names:
                self.unregister(n)

    def forget_loaded(self) -> None:
        """Drop what was loaded from entry points (after installing a plug-in)."""
        self._loaded.clear()


__all__ = ["Registry"]
