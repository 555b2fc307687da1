"""A watch thread that dies turns /ready to 503 and says so (issue 13 item 4): the API source
against the in-repo fake API, with a serving side whose failure ends the thread itself (not an
Exception, which the reflector retries)."""

from __future__ import annotations

import logging
import types

from conftest import wait_for
from fakeapi import service
from kdns import http
from test_cluster_source import WAIT, RecordingSink, run, seed  # noqa: F401,F811 (the fixture)


class DyingSink(RecordingSink):
    def apply(self, op, obj):
        raise SystemExit("the serving side went away")


def test_a_watch_thread_that_dies_turns_ready_to_503_and_is_logged(api, run, caplog):  # noqa: F811
    caplog.set_level(logging.INFO)
    seed(api)
    sink = DyingSink()
    src = run(sink)
    synced = types.SimpleNamespace(synced=True)
    status = http.Status(lambda: synced, src.waiting_for, failed=src.failed)
    assert status.not_ready() is None
    api.create(service("prod", "new", "10.96.0.99"))
    assert wait_for(lambda: src.failed() is not None, WAIT)
    assert status.not_ready() == "not updating: the watch of services stopped (see the log)"
    assert ("the watch of services stopped: SystemExit: the serving side went away; its changes "
            "are no longer served, /ready says 503") in caplog.text
