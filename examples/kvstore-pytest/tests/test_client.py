"""The client against the real server, in the container testfleet starts. The container is shared
by the tests on one agent, so each test uses keys of its own."""

import os

import pytest

import kvclient


def test_set_then_get(kv):
    assert kv.set("py:capital", "Lisbon") is True
    assert kv.get("py:capital") == "Lisbon"


def test_a_missing_key_is_none(kv):
    assert kv.get("py:never-set") is None


def test_delete_reports_what_it_removed(kv):
    kv.set("py:gone", "soon")
    assert kv.delete("py:gone") == 1
    assert kv.delete("py:gone") == 0


def test_a_second_connection_sees_the_writes(kv):
    kv.set("py:shared", "yes")
    other = kvclient.Client(os.environ["KVSTORE_ADDR"])
    try:
        assert other.get("py:shared") == "yes"
    finally:
        other.close()


def test_the_server_refuses_garbage_and_keeps_serving(kv):
    with pytest.raises(kvclient.KvError):
        kv.call("FLY", "me")
    assert kv.set("py:after-garbage", "ok") is True


@pytest.mark.parametrize("n", [1, 10, 100])
def test_many_keys_are_counted(kv, n):
    before = kv.count()
    for i in range(n):
        kv.set(f"py:many-{n}-{i}", str(i))
    assert kv.count() >= before + n
