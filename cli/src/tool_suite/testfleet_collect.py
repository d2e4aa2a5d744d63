"""testfleet's collection helper: writes each collected test's `xdist_group` mark (its name), as
JSON by node id, to the file named by TESTFLEET_COLLECT_OUT, so that a group's tests can be leased
together and run on one worker, as pytest-xdist's `--dist loadgroup` does."""

import json
import os


def pytest_configure(config):
    # Known without pytest-xdist installed, so `--strict-markers` suites collect.
    config.addinivalue_line("markers", "xdist_group(name): run these tests on one worker")


def pytest_collection_finish(session):
    groups = {}
    for item in session.items:
        mark = item.get_closest_marker("xdist_group")
        if mark is None:
            continue
        name = mark.kwargs.get("name", mark.args[0] if mark.args else "")
        if name:
            groups[item.nodeid] = str(name)
    with open(os.environ["TESTFLEET_COLLECT_OUT"], "w", encoding="utf-8") as out:
        json.dump(groups, out)
