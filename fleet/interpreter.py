"""What this Python interpreter is, and how it was built.

The interpreter's build moves what every request costs in CPU: one built
with profile-guided and link-time optimisation costs less than one built
with neither (what ``pyenv install`` builds unless told otherwise). The
README's "The interpreter's build" has the figures, measured with
``benchmarks/latency.py --interpreters``. A worker says in its ``worker
ready`` line what runs it (:func:`summary`).
"""

from __future__ import annotations

import platform
import sys
import sysconfig
from pathlib import Path

MAPS = Path("/proc/self/maps")


def shared_libpython(maps: Path = MAPS) -> str | None:
    """The path of the ``libpython`` shared library this process runs from;
    ``None`` where the interpreter is linked statically, or where the process
    map cannot be read (not Linux)."""
    try:
        text = maps.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split(maxsplit=5)  # address perms offset device inode [path]
        if len(fields) == 6 and Path(fields[5].strip()).name.startswith("libpython"):
            return fields[5].strip()
    return None


def optimisations() -> list[str]:
    """The optimisation options CPython's ``configure`` was given, as far as
    its build configuration records them (a distribution's build may record
    none of what its packaging did)."""
    args = str(sysconfig.get_config_var("CONFIG_ARGS") or "")
    return [o for o in ("--enable-optimizations", "--with-lto") if o in args]


def describe(maps: Path = MAPS) -> str:
    """One line: implementation, version, how libpython is linked, and the
    optimisations ``configure`` recorded."""
    shared = shared_libpython(maps)
    linked = f"libpython shared ({shared})" if shared else "libpython not a shared library"
    opts = ", ".join(optimisations()) or "no optimisation options recorded"
    return f"{platform.python_implementation()} {platform.python_version()}, {linked}, {opts}"


def summary() -> dict[str, object]:
    """The fields of the worker's ``worker ready`` log line."""
    return {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "libpython_shared": shared_libpython() is not None,
        "python_optimisations": optimisations(),
    }


__all__ = ["describe", "optimisations", "shared_libpython", "summary"]
