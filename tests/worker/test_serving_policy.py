"""model.toml: parsing, checks, the versions served, labels and splits."""

from __future__ import annotations

import tomllib
import uuid
from collections import Counter
from pathlib import Path

import pytest

from fleet.errors import ConfigError, ModelNotFound
from worker.repository import update_policy
from worker.serving_policy import ModelPolicy, parse_split, pick

pytestmark = pytest.mark.unit

FULL = """
default = "stable"

[versions]
latest = 2

[labels]
stable = "3"
canary = "4"
live = { "3" = 90, "4" = 10 }
"""


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "model.toml").write_text(text)
    return tmp_path


def test_a_full_file_is_read_and_checked() -> None:
    policy = ModelPolicy.model_validate(tomllib.loads(FULL))
    assert policy.default == "stable"
    assert policy.labels == {"stable": {"3": 1.0}, "canary": {"4": 1.0}, "live": {"3": 90, "4": 10}}
    assert policy.served(["1", "2", "3", "4", "10"]) == ["3", "4", "10"]  # newest two + labels
    policy.check(["3", "4"], source="m")
    assert ModelPolicy.model_validate(tomllib.loads(policy.to_toml())) == policy


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[versions]\nlatest = 0\n", "versions.latest"),
        ('[versions]\nlatest = 1\nspecific = ["1"]\n', "not both"),
        ("[versions]\nnewest = 1\n", "unknown field"),
        ('[labels]\n"9x" = "1"\n', "label '9x'"),
        ('[labels]\nlive = { "1" = 0 }\n', "weight > 0"),
        ("[labels]\nlive = {}\n", "names no version"),
        ('[labels]\nstable = "7"\n', "no version 7 in the repository"),
        ('[labels]\n"1" = "1"\n', "label '1'"),
        ('default = "nope"\n', "neither a label nor a version"),
        ("default = \n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_a_config_error_naming_what_is_wrong(
    tmp_path: Path, text: str, words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        ModelPolicy.read(_write(tmp_path, text), ["1", "2"])


def test_a_label_may_not_be_a_versions_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a version's name"):
        ModelPolicy.read(_write(tmp_path, '[labels]\nv2 = "1"\n'), ["1", "v2"])


def test_no_file_is_no_policy(tmp_path: Path) -> None:
    assert ModelPolicy.read(tmp_path, ["1"]) is None


def test_specific_versions_and_all() -> None:
    assert ModelPolicy.model_validate({"versions": {"specific": ["2", "9"]}}).served(
        ["1", "2", "3"]
    ) == ["2"]
    assert ModelPolicy().served(["10", "9", "a"]) == ["9", "10", "a"]


def test_a_split_has_its_odds_and_the_same_id_the_same_version() -> None:
    split = {"3": 90.0, "4": 10.0}
    ids = [uuid.UUID(int=i).hex for i in range(20_000)]
    got = Counter(pick(split, i) for i in ids)
    assert abs(got["4"] / len(ids) - 0.10) < 0.01, got
    assert all(pick(split, i) == pick(split, i) for i in ids[:100])
    policy = ModelPolicy.model_validate({"labels": {"live": split, "one": "3"}})
    assert policy.resolve("one", "x") == "3" and policy.resolve("2", "x") == "2"
    assert policy.resolve("live", ids[0]) == pick(split, ids[0])


def test_parse_split() -> None:
    assert parse_split(["3"]) == {"3": 1.0}
    assert parse_split(["3=90", "4=10.5"]) == {"3": 90.0, "4": 10.5}
    for bad, words in [
        (["3=x"], "number"),
        (["3=0"], "weight > 0"),
        (["=5"], "VERSION"),
        (["3", "3"], "twice"),
        (["3", "4=1"], "every version a weight"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_split(bad)


def test_update_policy_writes_a_checked_file(tmp_path: Path, built_models: Path) -> None:
    import shutil

    root = tmp_path / "repo"
    for v in ("1", "2"):
        shutil.copytree(built_models / "digits" / "1", root / "m" / v)
    policy, where = update_policy(root, "m", lambda p: p.with_label("stable", {"2": 1}))
    assert where == str(root / "m" / "model.toml")
    assert ModelPolicy.read(root / "m", ["1", "2"]) == policy
    with pytest.raises(ConfigError, match="no version 7"):
        update_policy(root, "m", lambda p: p.with_label("stable", {"7": 1}))
    assert ModelPolicy.read(root / "m", ["1", "2"]) == policy  # nothing written
    with pytest.raises(ModelNotFound, match="'other'"):
        update_policy(root, "other", lambda p: p)
    removed, _ = update_policy(root, "m", lambda p: p.with_label("stable", None))
    assert removed.labels == {}
