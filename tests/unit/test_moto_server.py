"""scripts/moto_server.py's EC2 mends: a tag write never changes a tag dict
that another request is reading, and CreateRouteTable makes one table per
ClientToken, however often a retry sends it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import boto3
import pytest
from moto import mock_aws
from moto.ec2.exceptions import TagLimitExceeded
from moto.ec2.models.tags import TagBackend
from moto.ec2.responses.route_tables import RouteTables

pytestmark = pytest.mark.unit

SERVER = Path(__file__).resolve().parents[2] / "scripts" / "moto_server.py"


def _server() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleet_test_moto_server", SERVER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def mended(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's classes with the server's EC2 mends, put back as they were after."""
    for name in ("create_tags", "delete_tags", "delete_tag_keys"):
        monkeypatch.setattr(TagBackend, name, getattr(TagBackend, name))
    monkeypatch.setattr(RouteTables, "create_route_table", RouteTables.create_route_table)
    _server()._tags_whole_and_route_tables_once()


def test_a_read_of_tags_under_way_survives_a_write(mended: None) -> None:
    backend = TagBackend()
    backend.create_tags(["rtb-1"], {"Name": "public"})
    reading = iter(backend.tags["rtb-1"].items())  # as moto's describe_tags reads them
    assert next(reading) == ("Name", "public")
    backend.create_tags(["rtb-1"], {"Role": "nat"})
    backend.delete_tags(["rtb-1"], {"Name": None})  # type: ignore[dict-item]
    backend.delete_tag_keys(["rtb-1"], ["Missing"])
    # moto as it comes: RuntimeError, dictionary keys changed during iteration
    assert list(reading) == []
    assert backend.tags["rtb-1"] == {"Role": "nat"}


def test_a_refused_tag_write_changes_nothing(mended: None) -> None:
    backend = TagBackend()
    backend.create_tags(["rtb-1"], {f"k{i}": "v" for i in range(50)})
    with pytest.raises(TagLimitExceeded):
        backend.create_tags(["rtb-1"], {"one-too-many": "v"})
    assert len(backend.tags["rtb-1"]) == 50 and "one-too-many" not in backend.tags["rtb-1"]


def test_a_route_table_is_made_once_per_client_token(mended: None) -> None:
    with mock_aws():
        ec2 = boto3.client(
            "ec2",
            region_name="eu-west-3",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        made = [
            ec2.create_route_table(VpcId=vpc, ClientToken=token)["RouteTable"]["RouteTableId"]
            for token in ("first", "first", "second")
        ]
        assert made[0] == made[1] != made[2]
        tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]}])
        assert len(tables["RouteTables"]) == 3  # the main one and the two tokens'
