"""testfleet's pytest worker: a pytest session that stays up and runs the node ids it is sent,
one at a time, so that the interpreter and the suite's conftest imports are paid once per worker
rather than once per batch (as pytest-xdist's workers do).

Commands come as JSON lines on the FIFO named by TESTFLEET_WORKER_IN: {"id": NODE_ID, "env": {...}}.
Before each test the worker prints a line saying it starts, and after it one with its verdict,
both on stdout behind a record separator; everything else the process prints is its own output.
Each file is collected once, the first time one of its tests is asked for; module and class
fixtures live on while the next test shares them, as in a plain pytest run.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
from _pytest.runner import collect_one_node

# pytest 8 and later; older ones collect each file with a session-wide collection of its own.
Directory = getattr(pytest, "Directory", None)

MARK = "\x1etestfleet-worker "


def _say(kind, **fields):
    fields["kind"] = kind
    sys.__stdout__.write("\n" + MARK + json.dumps(fields) + "\n")
    sys.__stdout__.flush()


def _reason(report):
    if hasattr(report, "wasxfail"):
        why = report.wasxfail
        if why.startswith("reason: "):
            why = why[len("reason: "):]
        return "xfail: " + why if why else "xfail"
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        why = longrepr[2]
        return why[len("Skipped: "):] if why.startswith("Skipped: ") else why
    return str(longrepr or "")


class _Worker:
    def __init__(self, config):
        self.config = config
        self.items = {}
        self.files = set()
        # Directory nodes by path, each kept from the first time it was collected.
        self.dirs = {}
        self.reports = []

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session):
        # Nothing is collected up front: each file is, when one of its tests is first asked for.
        session.items = []
        return True

    def pytest_runtest_logreport(self, report):
        self.reports.append(report)

    def _collect(self, session, node_id):
        path = node_id.split("::", 1)[0]
        if path in self.files:
            return
        self.files.add(path)
        try:
            items = self._collect_file(session, path)
        except Exception as e:  # a file that does not collect: each of its tests says why
            _say("collect_error", path=path, message=str(e))
            return
        for item in items:
            self.items.setdefault(item.nodeid, item)

    def _collect_file(self, session, path):
        """The items of one file. The first file is collected as pytest collects its arguments;
        later ones from the directory nodes collected then: pytest 9.1 ties the fixtures of a
        subdirectory's conftest.py to that directory's node, and a second session-wide collection
        would make new nodes that no longer see them."""
        target = Path(session.config.rootpath, path)
        known = None
        if Directory is not None:
            known = next((self.dirs[d] for d in target.parents if d in self.dirs), None)
        if known is None:
            items = session.perform_collect([path], genitems=True)
            self._remember_dirs(items)
            return items
        node = known
        while True:
            report = collect_one_node(node)
            if not report.passed:
                raise RuntimeError(str(report.longrepr))
            # A file may be collected by several collectors (its Module, and its DoctestModule
            # under --doctest-modules): the tests are those of all of them.
            files = [
                c for c in report.result
                if c.path == target and not isinstance(c, Directory)
            ]
            if files:
                break
            child = next(
                (c for c in report.result
                 if isinstance(c, Directory) and c.path in target.parents),
                None,
            )
            if child is None:
                return []  # not a test file pytest collects (collect_ignore, python_files)
            self.dirs.setdefault(child.path, child)
            node = child
        items = [item for f in files for item in session.genitems(f)]
        # As a collection does: conftest and plugin hooks see, mark or deselect the items.
        session.config.hook.pytest_collection_modifyitems(
            session=session, config=session.config, items=items
        )
        return items

    def _remember_dirs(self, items):
        if Directory is None:
            return
        for item in items:
            for parent in item.iter_parents():
                if isinstance(parent, Directory):
                    self.dirs.setdefault(parent.path, parent)

    def _verdict(self, node_id):
        failed = [r for r in self.reports if r.failed]
        skipped = [r for r in self.reports if r.skipped]
        duration = sum(r.duration for r in self.reports)
        sections = []
        for r in self.reports:
            if r.failed:
                sections.append(str(r.longreprtext))
        for r in self.reports:
            for title, content in r.sections:
                if content.strip():
                    sections.append("----- %s -----\n%s" % (title, content))
        output = "\n".join(s for s in sections if s)
        if failed:
            first = failed[0]
            if first.when == "call":
                crash = getattr(first.longrepr, "reprcrash", None)
                message = crash.message if crash is not None else str(first.longrepr or "")
            else:
                message = "failed on %s" % first.when
            return dict(status="failed", message=message, duration=duration, output=output)
        if skipped:
            return dict(status="skipped", message=_reason(skipped[0]), duration=duration, output=output)
        return dict(status="passed", message="", duration=duration, output=output)

    def pytest_runtestloop(self, session):
        state = session._setupstate
        with open(os.environ["TESTFLEET_WORKER_IN"], "r", encoding="utf-8") as commands:
            _say("ready")
            for line in commands:
                line = line.strip()
                if not line:
                    continue
                command = json.loads(line)
                node_id = command["id"]
                env = command.get("env", {})
                os.environ.update(env)
                if "TMPDIR" in env:
                    # The lease's own temporary directory: Python's tempfile caches the first.
                    tempfile.tempdir = None
                self._collect(session, node_id)
                item = self.items.get(node_id)
                _say("start", id=node_id)
                if item is None:
                    _say("result", id=node_id, status="not_found", message="", duration=0.0, output="")
                    continue
                # What the last test set up and this one does not share (its module, its class)
                # is torn down first, as pytest does between two tests.
                try:
                    state.teardown_exact(item)
                except Exception as e:
                    sys.stderr.write("teardown before %s failed: %r\n" % (node_id, e))
                self.reports = []
                # Torn down after it: its own fixtures, not what the next test may share.
                item.ihook.pytest_runtest_protocol(item=item, nextitem=item.parent)
                _say("result", id=node_id, **self._verdict(node_id))
        state.teardown_exact(None)
        return True


def pytest_configure(config):
    # Known without pytest-xdist installed, as when testfleet collected the suite.
    config.addinivalue_line("markers", "xdist_group(name): run these tests on one worker")
    config.pluginmanager.register(_Worker(config), "testfleet-worker")
