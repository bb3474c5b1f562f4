"""URLs shown, logged or written never show a password; secrets come from the
environment or a file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.errors import ConfigError
from fleet.redact import (
    dataclass_repr,
    insert_password,
    redact_text,
    redact_url,
    strip_password,
    url_password,
)
from fleet.settings import password_from_env, resolve_password

pytestmark = pytest.mark.unit

SECRET = "s3cr%t/pw"  # percent-encoded in URLs: s3cr%25t%2Fpw
URL = "amqp://fleet:s3cr%25t%2Fpw@mq.example:5672/vhost"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param(URL, "amqp://fleet:***@mq.example:5672/vhost", id="password"),
        pytest.param("amqp://fleet@mq:5672/", "amqp://fleet@mq:5672/", id="user-only"),
        pytest.param("kafka://127.0.0.1:9092", "kafka://127.0.0.1:9092", id="no-userinfo"),
        pytest.param("memory://demo", "memory://demo", id="memory"),
        pytest.param("amqp://u:p@w@h/", "amqp://u:***@h/", id="at-in-password"),
        pytest.param(
            "amqp://u:pw@h/?heartbeat=5&max_queue_length=10",
            "amqp://u:***@h/?heartbeat=5&max_queue_length=10",
            id="query-kept-as-is",
        ),
        pytest.param(
            "kafka://h:9092?sasl_password=hunter2&sasl_mechanism=PLAIN",
            "kafka://h:9092?sasl_password=***&sasl_mechanism=PLAIN",
            id="secret-query-value",
        ),
        pytest.param(
            "amqps://u:pw@h/?management_url=https%3A%2F%2Fmon%3Ahunter2%40h%3A15671",
            "amqps://u:***@h/?management_url=https://mon:***@h:15671",
            id="nested-url",
        ),
        pytest.param("not a url", "not a url", id="no-url"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_url_that_does_not_parse_is_still_masked() -> None:
    shown = redact_url("amqp://u:hunter2@[::1/")
    assert "hunter2" not in shown and "***" in shown


def test_redact_text_masks_every_url_in_a_message() -> None:
    text = f"cannot reach {URL} nor 'amqp://a:hunter2@b/': refused"
    shown = redact_text(text)
    assert shown == (
        "cannot reach amqp://fleet:***@mq.example:5672/vhost nor 'amqp://a:***@b/': refused"
    )


def test_strip_password_keeps_the_user_and_the_rest() -> None:
    assert strip_password(URL) == "amqp://fleet@mq.example:5672/vhost"
    assert strip_password("amqp://fleet@mq/?heartbeat=5") == "amqp://fleet@mq/?heartbeat=5"
    nested = "amqps://u:pw@h/?management_url=https%3A%2F%2Fmon%3Ahunter2%40h%3A15671"
    assert "hunter2" not in strip_password(nested) and "pw" not in strip_password(nested)


def test_a_password_goes_in_and_comes_out_percent_encoded() -> None:
    assert url_password(URL) == SECRET
    assert insert_password("amqp://fleet@mq.example:5672/vhost", SECRET) == URL
    with pytest.raises(ValueError, match="no user"):
        insert_password("amqp://mq/", SECRET)


def test_dataclass_repr_redacts_string_fields() -> None:
    @dataclass
    class Holder:
        broker: str
        n: int

    assert dataclass_repr(Holder(URL, 3)) == (
        "Holder(broker='amqp://fleet:***@mq.example:5672/vhost', n=3)"
    )


# ---------------------------------------------------------------- secrets from the environment


def test_the_password_comes_from_the_environment() -> None:
    env = {"FLEET_BROKER_PASSWORD": SECRET}
    assert resolve_password("amqp://fleet@mq.example:5672/vhost", "FLEET_BROKER", env=env) == URL


def test_the_password_comes_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "broker-password"
    secret.write_text(SECRET + "\n", encoding="utf-8")
    env = {"FLEET_BROKER_PASSWORD_FILE": str(secret)}
    assert password_from_env("FLEET_BROKER", env) == SECRET
    assert resolve_password("amqp://fleet@mq.example:5672/vhost", "FLEET_BROKER", env=env) == URL
    explicit = resolve_password(
        "amqp://fleet@mq.example:5672/vhost", "FLEET_BROKER", password_file=secret, env={}
    )
    assert explicit == URL


def test_a_password_in_the_url_is_kept() -> None:
    env = {"FLEET_BROKER_PASSWORD": "other"}
    assert resolve_password(URL, "FLEET_BROKER", env=env) == URL


def test_a_url_without_a_user_takes_no_password() -> None:
    env = {"FLEET_BROKER_PASSWORD": SECRET}
    assert resolve_password("kafka://h:9092", "FLEET_BROKER", env=env) == "kafka://h:9092"
    assert resolve_password("memory://x", "FLEET_BROKER", env=env) == "memory://x"


def test_a_default_user_takes_the_password_for_a_url_without_one() -> None:
    env = {"FLEET_RESULTS_PASSWORD": SECRET}
    got = resolve_password("redis://h:6379/0", "FLEET_RESULTS", env=env, default_user="default")
    assert got == "redis://default:s3cr%25t%2Fpw@h:6379/0"
    nothing = resolve_password("redis://h:6379/0", "FLEET_RESULTS", env={}, default_user="default")
    assert nothing == "redis://h:6379/0"  # no password anywhere: the URL as it was


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param(
            {"FLEET_BROKER_PASSWORD": "a", "FLEET_BROKER_PASSWORD_FILE": "/x"},
            "not both",
            id="both",
        ),
        pytest.param(
            {"FLEET_BROKER_PASSWORD_FILE": "/nonexistent/secret"}, "cannot read", id="missing"
        ),
    ],
)
def test_bad_password_sources_are_config_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_password("amqp://fleet@mq/", "FLEET_BROKER", env=env)


def test_an_empty_password_file_is_a_config_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="empty"):
        password_from_env("FLEET_BROKER", {"FLEET_BROKER_PASSWORD_FILE": str(empty)})


def test_a_password_file_beside_a_password_in_the_url_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError, match="carries a password") as info:
        resolve_password(URL, "FLEET_BROKER", password_file=secret, env={})
    assert SECRET not in info.value.message and "s3cr" not in info.value.message


def test_config_errors_mask_a_url_a_validator_names() -> None:
    from pydantic import BaseModel, field_validator

    from fleet.config_file import validate

    class Section(BaseModel):
        endpoint: str

        @field_validator("endpoint")
        @classmethod
        def _refuse(cls, value: str) -> str:
            raise ValueError(f"cannot reach {value}")

    with pytest.raises(ConfigError) as bad:
        validate(Section, {"endpoint": "https://user:hunter2@api.example/"}, source="f.toml")
    assert "endpoint: Value error, cannot reach https://user:***@api.example/" in bad.value.message
    assert "hunter2" not in bad.value.message


def test_a_url_without_a_user_reads_no_secret() -> None:
    env = {"FLEET_BROKER_PASSWORD_FILE": "/nonexistent/secret"}
    assert resolve_password("memory://demo", "FLEET_BROKER", env=env) == "memory://demo"
