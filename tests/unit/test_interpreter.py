"""What the worker says of the interpreter that runs it: read from the
process's own memory map, checked here against synthetic maps and against
what the dynamic linker says of the running executable."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fleet import interpreter

pytestmark = pytest.mark.unit

SHARED = """\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1234   /opt/py/bin/python3.11
7f29a0000000-7f29a0200000 r-xp 00100000 fe:01 5678   /opt/py/lib/libpython3.11.so.1.0
7f29a1000000-7f29a1021000 rw-p 00000000 00:00 0
7ffd1c3e2000-7ffd1c403000 rw-p 00000000 00:00 0      [stack]
"""
STATIC = """\
55d0c0a00000-55d0c0a01000 r-xp 00000000 fe:01 1234   /usr/bin/python3.11
7f29a2000000-7f29a2100000 r-xp 00000000 fe:01 999    /usr/lib/libc.so.6
7f29a1000000-7f29a1021000 rw-p 00000000 00:00 0
"""


def test_the_optimisations_are_those_configure_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = "'--prefix=/opt/py' '--enable-shared' '--enable-optimizations' '--with-lto'"
    monkeypatch.setattr(interpreter.sysconfig, "get_config_var", lambda name: recorded)
    assert interpreter.optimisations() == ["--enable-optimizations", "--with-lto"]
    assert interpreter.describe().endswith(", --enable-optimizations, --with-lto")
    monkeypatch.setattr(interpreter.sysconfig, "get_config_var", lambda name: None)
    assert interpreter.optimisations() == []
    assert interpreter.describe().endswith(", no optimisation options recorded")


def test_a_shared_libpython_in_the_map_is_named(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text(SHARED)
    assert interpreter.shared_libpython(maps) == "/opt/py/lib/libpython3.11.so.1.0"
    assert "libpython shared (/opt/py/lib/libpython3.11.so.1.0)" in interpreter.describe(maps)


def test_a_map_without_libpython_and_an_unreadable_one_name_none(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text(STATIC)
    assert interpreter.shared_libpython(maps) is None
    assert "libpython not a shared library" in interpreter.describe(maps)
    assert interpreter.shared_libpython(tmp_path / "absent") is None


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="no /proc: not Linux")
def test_this_process_agrees_with_the_dynamic_linker() -> None:
    """``ldd`` on the running executable lists libpython exactly when the
    interpreter runs from the shared library."""
    ldd = shutil.which("ldd")
    assert ldd is not None
    listed = subprocess.run([ldd, sys.executable], capture_output=True, text=True, check=False)
    linked = "libpython" in listed.stdout
    assert (interpreter.shared_libpython() is not None) == linked
    summary = interpreter.summary()
    assert summary == {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "libpython_shared": linked,
        "python_optimisations": interpreter.optimisations(),
    }
    assert interpreter.describe().startswith(f"CPython {platform.python_version()}, ")
