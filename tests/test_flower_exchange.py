"""Pulling a round's replies as they come (coordinator.flower.exchange) instead of every 3 s.

The grid below is a stand-in for the SuperLink's queue only (push gives ids, pull hands out the
replies whose time has come); the real SuperLink path runs in tests/e2e and the Cox network
benchmark. Time is simulated: ``sleep`` advances the grid's clock, so the waits are exact."""

from __future__ import annotations

import itertools

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from coordinator.flower import exchange
from coordinator.flower.exchange import MAX_POLL_S, poll_wait, send_and_receive


class QueueGrid:
    def __init__(self, ready_at: dict[int, float]):
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0  # replies need a run
        self.ready_at, self.now, self.pulls = ready_at, 0.0, 0
        self._ids = itertools.count(1)
        self._pending: dict[str, Message] = {}

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            mid = f"m{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = mid
            reply = Message(RecordDict({"r": ConfigRecord({"node": msg.metadata.dst_node_id})}), reply_to=msg)
            self._pending[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, ids):
        self.pulls += 1
        out = [self._pending.pop(i) for i in list(ids) if i in self._pending
               and self.ready_at[self._pending[i].content["r"]["node"]] <= self.now]
        return out

    def sleep(self, s: float) -> None:
        self.now += s


def messages(nodes):
    return [Message(RecordDict({"q": ConfigRecord({})}), dst_node_id=n, message_type="query", group_id="g")
            for n in nodes]


def test_replies_are_pulled_soon_after_they_arrive(monkeypatch):
    grid = QueueGrid({1: 2.0, 2: 5.5, 3: 5.6})
    monkeypatch.setattr(exchange.time, "monotonic", lambda: grid.now)
    replies = send_and_receive(grid, messages([1, 2, 3]), timeout=60, sleep=grid.sleep)
    assert sorted(r.content["r"]["node"] for r in replies) == [1, 2, 3]
    # the last reply was there at 5.6 s; Flower's own loop would have returned at 6 s at best (3 s
    # steps) and on average 1.5 s late; this one within one poll (0.1 s + 0.1 s per second so far)
    assert 5.6 <= grid.now <= 5.6 + poll_wait(5.6)
    assert grid.pulls < 25  # not a busy loop


def test_long_rounds_poll_at_most_once_a_second_and_the_timeout_holds(monkeypatch):
    grid = QueueGrid({1: 1.0, 2: 10_000.0})  # node 2 never answers in time
    monkeypatch.setattr(exchange.time, "monotonic", lambda: grid.now)
    replies = send_and_receive(grid, messages([1, 2]), timeout=300, sleep=grid.sleep)
    assert [r.content["r"]["node"] for r in replies] == [1]
    assert grid.now == pytest.approx(300)  # waits out the timeout exactly, not a poll beyond it
    assert grid.pulls <= 300 / MAX_POLL_S + 20
    assert [poll_wait(t) for t in (0, 4, 9, 60)] == [0.1, 0.5, 1.0, 1.0]


def test_a_grid_that_answers_without_polling_keeps_its_own_path():
    class Direct:
        answers_without_polling = True

        def send_and_receive(self, msgs, *, timeout):
            return [f"direct {timeout}"]

    assert send_and_receive(Direct(), [], timeout=7) == ["direct 7"]
