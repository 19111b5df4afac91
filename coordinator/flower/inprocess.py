"""An in-process Flower ``Grid``: the ServerApp's messages go straight to a ClientApp object.

Tests and benchmarks of both apps run in milliseconds with it, through Flower's own
Message/Context/ClientApp classes (no transport of ours: it stands in for the SuperLink
only in tests and benchmarks; a real network uses the SuperLink). Each node has its own ``node_config`` and a persistent ``Context.state``, as a
SuperNode would keep. A handler that raises becomes an error reply, as on a
SuperNode. A node listed in ``dead`` never answers, so callers see exactly what
a killed SuperNode looks like to ``send_and_receive``: no reply before the timeout.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import itertools
import time
from collections.abc import Iterable, Mapping

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

SERVER_NODE_ID = 0


class InProcessGrid(Grid):
    """``node_configs``: node id -> node config (what ``--node-config`` gives a SuperNode)."""

    answers_without_polling = True  # its send_and_receive waits on the handlers themselves

    def __init__(self, client_app: ClientApp, node_configs: Mapping[int, Mapping], *, run_id: int = 1,
                 run_config: Mapping | None = None, dead: Iterable[int] = (), unavailable: Iterable[int] = ()):
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SERVER_NODE_ID
        TaskIdentity.task_id = 0
        self.client_app = client_app
        self.node_configs = {int(k): dict(v) for k, v in node_configs.items()}
        self.dead = set(dead)
        # nodes whose SuperNode stopped heartbeating: the SuperLink answers for them with its error
        self.unavailable = set(unavailable)
        self._run = Run.create_empty(run_id)
        self._run_config = dict(run_config or {})
        self._states: dict[int, RecordDict] = {n: RecordDict() for n in self.node_configs}
        self._ids = itertools.count(1)
        self._pending: dict[str, cf.Future] = {}
        # one worker: handlers run one after another (the OHDSI SQL translator is not thread-safe;
        # real SuperNodes run each message in its own process)
        self._pool = cf.ThreadPoolExecutor(max_workers=1)
        self.sent: list[Message] = []
        self.received: list[Message] = []  # every reply handed to the ServerApp

    # --- Grid API -----------------------------------------------------------------------
    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id,
                       ttl=ttl)

    def get_node_ids(self) -> list[int]:
        return sorted(self.node_configs)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            mid = f"m{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = mid
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            if node in self.unavailable:
                self._pending[mid] = self._pool.submit(self._unavailable, msg)
            elif node not in self.dead and node in self.node_configs:
                # a copy, as the SuperLink's serialization gives each node its own (Flower's SecAgg+
                # workflow sends one RecordDict object to every node and its mod pops keys from it)
                self._pending[mid] = self._pool.submit(self._deliver, copy.deepcopy(msg), node)
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        replies = []
        for mid in message_ids:
            fut = self._pending.get(mid)
            if fut is not None and fut.done():
                replies.append(fut.result())
                del self._pending[mid]
        self.received += replies
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        ids = self.push_messages(messages)
        deadline = None if timeout is None else time.monotonic() + timeout
        waiting = [i for i in ids if i in self._pending]
        cf.wait([self._pending[i] for i in waiting],
                timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self.pull_messages(ids)

    @staticmethod
    def _unavailable(msg: Message) -> Message:
        from flwr.common.constant import ErrorCode
        from flwr.server.superlink.linkstate.utils import NODE_UNAVAILABLE_ERROR_REASON

        reply = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason=NODE_UNAVAILABLE_ERROR_REASON), reply_to=msg)
        reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
        return reply

    # --- the "SuperNode" ------------------------------------------------------------------
    def _deliver(self, msg: Message, node: int) -> Message:
        context = Context(run_id=self._run.run_id, node_id=node, node_config=self.node_configs[node],
                          state=self._states[node], run_config=self._run_config)
        try:
            return self.client_app(msg, context)
        except Exception as exc:  # a SuperNode turns a crashing ClientApp into an error reply
            return Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
