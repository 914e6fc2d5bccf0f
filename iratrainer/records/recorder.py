"""Recording a session as it goes, without ever stalling the simulation loop.

The loop hands new events and controls to :meth:`SessionRecorder.push` (a queue put,
microseconds); a writer thread commits them in batches. ``longest_write_s`` is the
longest database commit and ``longest_push_s`` the longest time the loop spent handing
over a batch (what `bench scoring` reports). If the process dies, the batches already
committed are in the database and the session reads ``aborted`` at the next open.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import asdict
from typing import Any

from iratrainer.records.store import Store

__all__ = ["SessionRecorder"]

FLUSH_EVERY_S = 2.0  # simulated seconds between batches


class SessionRecorder:
    """Writes one session's events and controls in the background.

    Args:
        store: the records store (its connection is used by the writer thread only while
            the session runs).
        sid: the session id from :meth:`Store.start_session`.
    """

    def __init__(self, store: Store, sid: str) -> None:
        self.store = store
        self.sid = sid
        self._q: queue.Queue[Any] = queue.Queue()
        self._events_sent = 0
        self._controls_sent = 0
        self._last_flush_t = 0.0
        self.longest_write_s = 0.0
        self.longest_push_s = 0.0
        self.batches = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="iratrainer-recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            events, controls, first, t_sim = item
            t0 = time.perf_counter()
            try:
                self.store.append(self.sid, events, controls, first, t_sim)
            except BaseException as exc:  # noqa: BLE001 - reported by finish()
                self.error = exc
            self.longest_write_s = max(self.longest_write_s, time.perf_counter() - t0)
            self.batches += 1

    def maybe_push(self, proc: Any, control_log: list[tuple[int, Any]], force: bool = False) -> None:
        """Hand over what is new since the last batch, every ``FLUSH_EVERY_S`` simulated seconds."""
        if not force and proc.time_s - self._last_flush_t < FLUSH_EVERY_S:
            return
        t0 = time.perf_counter()
        ev = [e.as_dict() for e in proc.events[self._events_sent:]]
        co = [(self._controls_sent + k, step, asdict(c)) for k, (step, c) in enumerate(control_log[self._controls_sent:])]
        self._q.put((ev, co, self._events_sent, proc.time_s))
        self._events_sent += len(ev)
        self._controls_sent += len(co)
        self._last_flush_t = proc.time_s
        self.longest_push_s = max(self.longest_push_s, time.perf_counter() - t0)

    def finish(self) -> None:
        """Wait for the writer; raise what it met."""
        self._q.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error
