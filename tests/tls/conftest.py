"""The tls tier: the brokers' TLS and SASL listeners.

``scripts/test.sh`` exports what each broker script's ``tls-env`` prints:

- ``FLEET_TEST_TLS_DIR``: the certificates ``scripts/tls.sh`` made (``ca.pem``,
  ``client.pem``/``client.key`` for mutual TLS, ``other-ca.pem`` that signed
  nothing the brokers present);
- per listener, a URL (``FLEET_TEST_AMQPS_URL``, ``FLEET_TEST_KAFKA_SSL_URL``, ...)
  and, where it logs in with a password, that password in
  ``<the URL's variable>_PASSWORD``: the URLs name the user only.

Under ``CI=true`` a missing variable fails the test, as for every tier.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import missing

pytestmark = pytest.mark.tls


def tls_env(name: str) -> str:
    """The variable ``name`` (a listener's URL, a password, the certificate
    directory); fails under CI and skips elsewhere when it is not set."""
    value = os.environ.get(name)
    if not value:
        missing(f"{name} is not set: start the brokers with scripts/test.sh or set it")
    return value


@pytest.fixture(scope="session")
def tls_dir() -> Path:
    """The directory of the test CA and the client certificate."""
    return Path(tls_env("FLEET_TEST_TLS_DIR"))
