"""The variable and output tables of deploy/terraform/README.md, generated from
the parsed Terraform files (tests/deploy/test_terraform.py checks that the
README holds exactly these).

    .venv/bin/python -m tests.deploy.tf_tables      rewrite the README's tables
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from tests.deploy.test_terraform import TF, config

README = TF / "README.md"
VARIABLES_HEADING = "## Variables"
OUTPUTS_HEADING = "## Outputs"


def _cell(text: str) -> str:
    return text.replace('\\"', '"').replace("|", "\\|").replace("\n", " ").strip()


def _default(body: dict[str, Any]) -> str:
    if "default" not in body:
        return "**required**"
    value = body["default"]
    if value is None:
        return "`null`"
    return "`" + json.dumps(value, separators=(", ", ": ")) + "`"


def variables_table() -> str:
    rows = ["| Variable | Default | What it does |", "|---|---|---|"]
    for name, body in config()["variable"].items():
        rows.append(f"| `{name}` | {_default(body)} | {_cell(str(body['description']))} |")
    return "\n".join(rows) + "\n"


def outputs_table() -> str:
    rows = ["| Output | What it is |", "|---|---|"]
    for name, body in config()["output"].items():
        rows.append(f"| `{name}` | {_cell(str(body['description']))} |")
    return "\n".join(rows) + "\n"


def _table_after(text: str, heading: str) -> re.Match[str]:
    match = re.search(re.escape(heading) + r"\n\n((?:\|.*\n)+)", text)
    if match is None:
        raise ValueError(f"{README}: no table under {heading!r}")
    return match


def tables_in_readme(text: str) -> tuple[str, str]:
    return (
        _table_after(text, VARIABLES_HEADING).group(1),
        _table_after(text, OUTPUTS_HEADING).group(1),
    )


def rewrite(text: str) -> str:
    tables = ((VARIABLES_HEADING, variables_table()), (OUTPUTS_HEADING, outputs_table()))
    for heading, table in tables:
        match = _table_after(text, heading)
        text = text[: match.start(1)] + table + text[match.end(1) :]
    return text


if __name__ == "__main__":
    README.write_text(rewrite(README.read_text(encoding="utf-8")), encoding="utf-8")
    sys.exit(0)
