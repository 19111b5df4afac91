"""One round of messages: push them through the Grid and pull the replies as they come.

Flower 1.42's ``Grid.send_and_receive`` sleeps a fixed 3 s between pulls, so every round of a
study, a Cox fit or a training run waits on average 1.5 s after its last reply has reached the
SuperLink. :func:`send_and_receive` uses the same public Grid calls (``push_messages`` and
``pull_messages``) and pulls again after ``FIRST_POLL_S``, the wait growing by ``POLL_GROWTH_S``
per elapsed second up to ``MAX_POLL_S``: a short round (a Cox evaluation: a few seconds) is
answered within a fraction of a second of its last reply, and a long one (a training round of
minutes) costs one small pull a second. A grid that answers without polling (the in-process grid
of tests and benchmarks) keeps its own ``send_and_receive``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp import Grid

FIRST_POLL_S = 0.1
POLL_GROWTH_S = 0.1  # added to the wait per second of the round so far
MAX_POLL_S = 1.0


def poll_wait(elapsed: float) -> float:
    """Seconds to wait before the next pull, ``elapsed`` seconds into the round."""
    return min(MAX_POLL_S, FIRST_POLL_S + POLL_GROWTH_S * max(0.0, elapsed))


def send_and_receive(grid: Grid, messages: Iterable[Message], *, timeout: float,
                     sleep: Callable[[float], None] = time.sleep) -> list[Message]:
    """Every reply that arrived within ``timeout`` seconds (Flower's errors for a node included)."""
    if getattr(grid, "answers_without_polling", False):
        return list(grid.send_and_receive(messages, timeout=timeout))
    waiting = set(grid.push_messages(messages))
    start = time.monotonic()
    replies: list[Message] = []
    while True:
        got = list(grid.pull_messages(waiting))
        replies += got
        waiting -= {m.metadata.reply_to_message_id for m in got}
        elapsed = time.monotonic() - start
        if not waiting or elapsed >= timeout:
            return replies
        sleep(min(poll_wait(elapsed), max(0.0, timeout - elapsed)))
