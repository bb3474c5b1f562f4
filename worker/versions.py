"""How model versions are ordered: numeric ones first, in numeric order
(``1 < 2 < 10``), then the others by name."""

from __future__ import annotations


def version_key(version: str) -> tuple[int, int, str]:
    """Numeric versions first, in numeric order; then the others by name."""
    return (0, int(version), version) if version.isdigit() else (1, 0, version)


__all__ = ["version_key"]
