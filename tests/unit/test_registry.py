"""The registry behind every extension point, filled through real entry points
of a distribution written into a temporary directory (nothing installed)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.errors import ConfigError
from fleet.registry import Registry

pytestmark = pytest.mark.unit

GROUP = "fleet.test-widgets"


@dataclass(frozen=True)
class Widget:
    name: str
    size: int = 1


def _plugin(tmp_path: Path, entries: dict[str, str], module: str) -> None:
    """A distribution ``widget_plugin`` with ``entries`` in :data:`GROUP`."""
    dist = tmp_path / "widget_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: widget-plugin\nVersion: 1.0\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
    (dist / "entry_points.txt").write_text(f"[{GROUP}]\n{lines}\n")
    (tmp_path / "widget_plugin.py").write_text(module)


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("widget_plugin", None)


def registry() -> Registry[Widget]:
    return Registry(GROUP, "widget", Widget)


def test_an_entry_point_is_loaded_by_name(plugin_path: Path) -> None:
    module = f"from {__name__} import Widget\nBIG = Widget('big', 3)\nraise_on_import = False\n"
    _plugin(plugin_path, {"big": "widget_plugin:BIG"}, module)
    widgets = registry()
    assert widgets.names() == ["big"]
    assert "widget_plugin" not in sys.modules, "listing names loads nothing"
    assert widgets.get("big") == Widget("big", 3)


def test_an_unknown_name_lists_the_known_ones(plugin_path: Path) -> None:
    _plugin(plugin_path, {"big": "widget_plugin:BIG"}, "")
    with pytest.raises(ConfigError, match=r"unknown widget 'small'; known: big"):
        registry().get("small")


def test_a_broken_entry_point_is_a_clear_error(plugin_path: Path) -> None:
    _plugin(plugin_path, {"big": "widget_plugin:BIG"}, "import no_such_module_here\n")
    with pytest.raises(ConfigError, match=r"widget 'big'.*cannot be loaded.*no_such_module_here"):
        registry().get("big")


def test_an_entry_of_the_wrong_kind_is_refused(plugin_path: Path) -> None:
    _plugin(plugin_path, {"big": "widget_plugin:BIG"}, "BIG = 'a string'\n")
    with pytest.raises(ConfigError, match=r"is a str, not a Widget"):
        registry().get("big")


def test_an_entry_must_answer_to_its_name(plugin_path: Path) -> None:
    module = f"from {__name__} import Widget\nBIG = Widget('huge')\n"
    _plugin(plugin_path, {"big": "widget_plugin:BIG"}, module)
    with pytest.raises(ConfigError, match=r"calls itself 'huge'"):
        registry().get("big")


def test_registered_specs_last_for_the_block() -> None:
    widgets = registry()
    with widgets.registered(Widget("temp", 2)):
        assert widgets.get("temp").size == 2
        assert "temp" in widgets
    assert "temp" not in widgets
    with pytest.raises(ConfigError):
        widgets.get("temp")
