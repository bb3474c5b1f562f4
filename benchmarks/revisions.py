"""Another revision of this repository, checked out beside it: for the
benchmarks that measure this build against a baseline in the same run."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def add_worktree(ref: str, into: Path) -> Path:
    """``ref`` checked out (detached) in a new worktree ``into/baseline``."""
    tree = into / "baseline"
    add = ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref]
    subprocess.run(add, check=True, capture_output=True)
    return tree


def remove_worktree(tree: Path) -> None:
    """Remove a worktree :func:`add_worktree` made (best effort)."""
    remove = ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)]
    subprocess.run(remove, check=False, capture_output=True)
