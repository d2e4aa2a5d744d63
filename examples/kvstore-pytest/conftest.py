"""Fixtures: a client connected to the kvstore container testfleet starts for the client tests."""

import os

import pytest

import kvclient


@pytest.fixture
def kv():
    addr = os.environ.get("KVSTORE_ADDR")
    if not addr:
        pytest.fail("KVSTORE_ADDR is set by testfleet from testfleet.toml; run this suite with `testfleet run`")
    client = kvclient.Client(addr)
    yield client
    client.close()
