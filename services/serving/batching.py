"""Dynamic batching: concurrent requests for one model coalesced into one run along axis 0.

Batches are formed and run on worker threads ("runners", at most `max_inflight` at once), not on the
event loop: the queue delay is then timed by a condition variable with microsecond precision
(asyncio's timers round to the selector's millisecond), and concatenation, the run and the slicing
never hold up the loop. A runner holds an executor thread for one batch at most (plus its queue
delay) and exits when the queue is empty, so batchers can share a small executor fairly.

Cheap models are the exception (`inline_max_rows`): when a full batch computes in less time than
handing work to a thread and back costs (tens of microseconds, plus GIL contention with the loop),
batches of up to that many rows run on the event loop itself. Requests that arrive in the same loop
iteration are then coalesced, at no added latency; larger requests still go to the executor. The
model manager allows it only for graphs whose cost is fixed by the request's shape.

One request's values can fail a whole batch (a value the model rejects, more memory than the
inference cap allows, more time than a run may take): such a batch runs again request by request, so
only the request at fault fails.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

import numpy as np

from flywheel.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from services.serving.deadlines import RunTimedOut
from services.serving.tensors import batch_size

Feeds = dict[str, np.ndarray]
RunFn = Callable[[Feeds], Feeds]
RunManyFn = Callable[[Feeds, int], Feeds]  # a coalesced batch's run, told how many requests it holds


class QueueFull(ResourceExhausted):
    """The model's queue is full: the request was not accepted."""


@dataclass(frozen=True, slots=True)
class Timing:
    queue_ns: int  # from infer() to the start of its batch's work on a worker thread
    compute_ns: int  # the batch's work on the worker thread: concatenate, run, slice
    batch_rows: int  # rows in the batch this request ran in


@dataclass(slots=True)
class _Request:
    feeds: Feeds
    rows: int
    key: tuple  # requests coalesce only when names, dtypes and shapes beyond dim 0 agree
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued_ns: int


def _shape_key(feeds: Mapping[str, np.ndarray]) -> tuple:
    return tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in feeds.items()))


class DynamicBatcher:
    """Coalesces concurrent `infer` calls; each caller gets exactly its own rows back.

    One event loop per batcher. `run` computes one request; `run_many`, when given, a coalesced batch
    (with the number of requests in it). `max_batch_size <= 1` disables coalescing: each request runs alone
    in the executor. `max_queue_size` > 0 bounds the requests waiting for a worker thread, coalesced
    or alone (ResourceExhausted beyond, at once): nothing queues without bound behind a slow model.
    Requests run on the event loop (`inline_max_rows`) never wait in a queue.
    """

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int,
        max_queue_delay_us: int,
        executor: concurrent.futures.Executor | None = None,
        max_inflight: int = 2,
        max_queue_size: int = 0,
        inline_max_rows: int = 0,
        run_many: RunManyFn | None = None,
    ) -> None:
        self._run = run
        self._run_many = run_many
        self.inline_max_rows = max(0, inline_max_rows)
        self._inline: list[_Request] = []  # loop side: waiting for this iteration's flush
        self._flush_scheduled = False
        self.max_batch_size = max_batch_size
        self._delay_ns = max(0, max_queue_delay_us) * 1000
        self._max_inflight = max(1, max_inflight)
        self._max_queue_size = max(0, max_queue_size)
        self._own_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(thread_name_prefix="flywheel-batcher")
        self._cond = threading.Condition()  # guards everything below
        self._forming = threading.Lock()  # one runner forms a batch at a time
        self._pending: deque[_Request] = deque()
        self._pending_rows = 0
        self._waiting_alone = 0  # requests submitted to run alone, not started yet
        self._runners = 0
        self._executing = 0  # batches computing right now; 0 means a new request need not wait
        self._inflight: set[concurrent.futures.Future] = set()
        self._closed = False
        self.batches_run = 0
        self.requests_run = 0

    @property
    def coalescing(self) -> bool:
        return self.max_batch_size > 1

    async def infer(self, feeds: Feeds) -> tuple[Feeds, Timing]:
        """The outputs for exactly these rows, and how long they queued and computed."""
        rows = batch_size(feeds)
        loop = asyncio.get_running_loop()
        request = _Request(feeds, rows, _shape_key(feeds), loop.create_future(), loop, time.perf_counter_ns())
        if rows <= self.inline_max_rows:
            if self._closed:
                raise Unavailable("the model is being unloaded")
            if not self.coalescing:
                self._count(1)
                return _outcome(self._compute_batch([request])[0])
            self._inline.append(request)
            if not self._flush_scheduled:  # runs after the requests already scheduled in this iteration
                self._flush_scheduled = True
                loop.call_soon(self._flush_inline)
        elif self.coalescing:
            self._enqueue(request)
        else:
            self._submit_alone(request)
        return await request.future

    async def close(self) -> None:
        """Fails requests still queued, lets running batches finish, releases an owned executor."""
        with self._cond:
            self._closed = True
            dropped = list(self._pending)
            self._pending.clear()
            self._pending_rows = 0
            self._cond.notify_all()
            inflight = list(self._inflight)
        dropped += self._inline
        self._inline = []
        for request in dropped:
            if not request.future.done():
                request.future.set_exception(Unavailable("the model was unloaded before this request ran"))
        if inflight:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in inflight), return_exceptions=True)
        if self._own_executor:
            self._executor.shutdown(wait=False)

    # -- loop side ------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Requests accepted and not yet running."""
        with self._cond:
            return len(self._pending) + self._waiting_alone

    def _admit(self) -> None:
        """Refuses a request when the queue is full (call holding the condition)."""
        if self._closed:
            raise Unavailable("the model is being unloaded")
        if not self._max_queue_size or len(self._pending) + self._waiting_alone < self._max_queue_size:
            return
        if any(r.future.done() for r in self._pending):  # callers that gave up hold no place
            self._remove([])
        if len(self._pending) + self._waiting_alone >= self._max_queue_size:
            raise QueueFull(
                f"the model's inference queue is full ({self._max_queue_size} requests waiting); retry later"
            )

    def _submit_alone(self, request: _Request) -> None:
        with self._cond:
            self._admit()
            self._waiting_alone += 1
        try:
            self._submit(self._run_alone, request)
        except BaseException:
            with self._cond:
                self._waiting_alone -= 1
            raise

    def _enqueue(self, request: _Request) -> None:
        with self._cond:
            self._admit()
            self._pending.append(request)
            self._pending_rows += request.rows
            start_runner = self._runners < self._max_inflight
            if start_runner:
                self._runners += 1
            # A forming runner only needs waking once a full batch may be waiting; else its deadline wakes it.
            if self._pending_rows >= self.max_batch_size:
                self._cond.notify()
        if start_runner:
            try:
                self._submit(self._drain)
            except RuntimeError:  # a shared executor was shut down under us: take the request back
                with self._cond:
                    self._runners -= 1
                    self._remove([request])
                raise Unavailable("the inference executor is shut down") from None

    def _submit(self, fn: Callable[..., None], *args: object) -> None:
        with self._cond:
            if self._closed:
                raise Unavailable("the model is being unloaded")
            future = self._executor.submit(fn, *args)
            self._inflight.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: concurrent.futures.Future) -> None:
        with self._cond:
            self._inflight.discard(future)

    def _flush_inline(self) -> None:
        """On the loop: runs what this iteration queued, in batches of compatible requests (FIFO)."""
        self._flush_scheduled = False
        waiting, self._inline = [r for r in self._inline if not r.future.done()], []
        while waiting:
            batch, rows, rest = [waiting[0]], waiting[0].rows, []
            for request in waiting[1:]:
                if request.key == batch[0].key and rows + request.rows <= self.max_batch_size:
                    batch.append(request)
                    rows += request.rows
                else:
                    rest.append(request)
            waiting = rest
            self._count(len(batch))
            for request, result in zip(batch, self._compute_batch(batch), strict=True):
                _resolve([(request.future, result)])

    def _count(self, requests: int) -> None:
        with self._cond:
            self.batches_run += 1
            self.requests_run += requests

    # -- worker threads -------------------------------------------------------------------------

    def _run_alone(self, request: _Request) -> None:
        with self._cond:
            self._waiting_alone -= 1
        self._count(1)
        self._execute([request])

    def _drain(self) -> None:
        """A runner: forms and runs one batch, then queues itself again while work is pending.

        Going back through the executor's queue after every batch, rather than looping here, lets
        the batchers of several models share one executor without a busy model starving the others.
        """
        batch = self._take_batch()
        if batch is None:
            return
        try:
            self._execute(batch)
        finally:
            with self._cond:
                self._executing -= 1
                self._cond.notify()
        with self._cond:
            again = bool(self._pending) and not self._closed
            if not again:
                self._runners -= 1
        if again:
            try:
                self._submit(self._drain)
            except (Unavailable, RuntimeError):  # closed, or the executor shut down meanwhile
                with self._cond:
                    self._runners -= 1

    def _take_batch(self) -> list[_Request] | None:
        with self._forming, self._cond:
            while True:
                batch, full = self._select()
                if not batch or self._closed:
                    self._runners -= 1
                    return None
                remaining_ns = batch[0].enqueued_ns + self._delay_ns - time.perf_counter_ns()
                # Idle model: run now, waiting would only add latency. Busy model: requests pile up while
                # the running batch computes, so waiting (up to the delay) buys a fuller batch.
                if full or remaining_ns <= 0 or self._executing == 0:
                    break
                self._cond.wait(remaining_ns / 1e9)
            self._remove(batch)
            self._executing += 1
            self.batches_run += 1
            self.requests_run += len(batch)
            return batch

    def _select(self) -> tuple[list[_Request], bool]:
        """The oldest live request plus compatible ones that fit (FIFO); full = nothing more can join."""
        batch: list[_Request] = []
        rows = 0
        for request in self._pending:
            if request.future.done():  # cancelled by its caller
                continue
            if not batch:
                batch, rows = [request], request.rows
                if rows >= self.max_batch_size:  # never split: an oversized request runs alone
                    return batch, True
                continue
            if request.key != batch[0].key:
                continue
            if rows + request.rows > self.max_batch_size:
                return batch, True
            batch.append(request)
            rows += request.rows
            if rows == self.max_batch_size:
                return batch, True
        return batch, False

    def _remove(self, batch: list[_Request]) -> None:
        taken = {id(r) for r in batch}
        kept = [r for r in self._pending if id(r) not in taken and not r.future.done()]
        self._pending = deque(kept)
        self._pending_rows = sum(r.rows for r in kept)

    def _execute(self, batch: list[_Request]) -> None:
        _settle(batch, self._compute_batch(batch))

    def _compute_batch(self, batch: list[_Request]) -> list:
        """Each request's (outputs, timing), or the exception the run raised, for every request."""
        started = time.perf_counter_ns()
        try:
            outputs, rows = self._compute(batch)
        except (InvalidArgument, ResourceExhausted, RunTimedOut) as exc:
            if len(batch) == 1:
                return [exc]
            # Failures that follow a request's values: each request again on its own, so one bad one fails alone.
            return [self._alone(r) for r in batch]
        except Exception as exc:
            return [exc] * len(batch)
        compute_ns = time.perf_counter_ns() - started
        return [(out, Timing(started - r.enqueued_ns, compute_ns, rows)) for out, r in zip(outputs, batch, strict=True)]

    def _alone(self, request: _Request) -> object:
        started = time.perf_counter_ns()
        try:
            outputs = self._run(request.feeds)
        except Exception as exc:
            return exc
        return outputs, Timing(started - request.enqueued_ns, time.perf_counter_ns() - started, request.rows)

    def _compute(self, batch: list[_Request]) -> tuple[list[Feeds], int]:
        if len(batch) == 1:  # nothing to concatenate or slice
            return [self._run(batch[0].feeds)], batch[0].rows
        names = list(batch[0].feeds)
        feeds = {name: np.concatenate([r.feeds[name] for r in batch]) for name in names}
        outputs = self._run_many(feeds, len(batch)) if self._run_many else self._run(feeds)
        return _split(outputs, [r.rows for r in batch]), sum(r.rows for r in batch)


def _split(outputs: Feeds, rows: list[int]) -> list[Feeds]:
    """Each request's rows of every output (views, not copies)."""
    total = sum(rows)
    for name, array in outputs.items():
        if np.ndim(array) == 0 or len(array) != total:
            raise FailedPrecondition(f"output {name!r} is not batched along its first dimension; disable batching")
    bounds = np.cumsum([0, *rows]).tolist()
    return [{name: array[a:b] for name, array in outputs.items()} for a, b in itertools.pairwise(bounds)]


def _settle(batch: list[_Request], results: list) -> None:
    """Hands results (or exceptions) to each caller's loop; a caller that gave up is skipped."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, object]]] = {}
    for request, result in zip(batch, results, strict=True):
        by_loop.setdefault(request.loop, []).append((request.future, result))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, items)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _outcome(result: object) -> tuple[Feeds, Timing]:
    if isinstance(result, BaseException):
        raise result
    return cast("tuple[Feeds, Timing]", result)  # what _compute_batch returns when the run succeeded


def _resolve(items: list[tuple[asyncio.Future, object]]) -> None:
    for future, result in items:
        if future.done():
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
