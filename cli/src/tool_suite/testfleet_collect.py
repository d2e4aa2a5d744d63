"""testfleet's collection helper: writes, as JSON to the file named by TESTFLEET_COLLECT_OUT, each
collected test's `xdist_group` mark (`groups`: so that a group's tests can be leased together and run
on one worker, as pytest-xdist's `--dist loadgroup` does) and the module or class whose broader
fixtures it uses (`shares`: so that a lease is filled with such mates first, and a worker sets those
fixtures up once for them)."""

import json
import os

import pytest


def pytest_configure(config):
    # Known without pytest-xdist installed, so `--strict-markers` suites collect.
    config.addinivalue_line("markers", "xdist_group(name): run these tests on one worker")


def _group(item):
    mark = item.get_closest_marker("xdist_group")
    if mark is None:
        return None
    name = mark.kwargs.get("name", mark.args[0] if mark.args else "")
    return str(name) or None


def _shares(item):
    """The package, module or class whose fixtures of that scope the test uses, by node id."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    scopes = set()
    for name in info.names_closure:
        defs = info.name2fixturedefs.get(name)
        if defs:
            # The last definition is the one that applies to this test.
            scopes.add(str(defs[-1].scope))
    module = item.nodeid.split("::")[0]
    if "package" in scopes:
        return os.path.dirname(module) or "."
    if "module" in scopes:
        return module
    cls = item.getparent(pytest.Class)
    if "class" in scopes and cls is not None:
        return cls.nodeid
    # Function and session scopes: nothing is gained by running tests together.
    return None


def pytest_collection_finish(session):
    groups, shares = {}, {}
    for item in session.items:
        group = _group(item)
        if group:
            groups[item.nodeid] = group
        shared = _shares(item)
        if shared:
            shares[item.nodeid] = shared
    with open(os.environ["TESTFLEET_COLLECT_OUT"], "w", encoding="utf-8") as out:
        json.dump({"groups": groups, "shares": shares}, out)
