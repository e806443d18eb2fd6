"""Running a shared model for many concurrent requests: admission, a worker pool, micro-batching, timeouts.

    runtime = Runtime(model, settings)
    pred = await runtime.run(runtime.classify_sync, RegionInput(image, mask, description, classes))

* Admission: at most ``max_concurrency`` requests work at once and ``max_queue`` wait; any more are
  refused at once with 503 "busy" (a client retries later) instead of piling up.
* Pixels in flight: an admitted request then takes its image's width x height (read from the header)
  from a budget of ``max_pixels_in_flight`` before anything is decoded, waiting in line (first come,
  first served) at most ``queue_timeout`` seconds, else 503 "busy". Decoded images, the bulk of a
  request's memory (~12 bytes a pixel), are so bounded however many large photos arrive at once; after a
  large one the freed heap is handed back to the OS (glibc would keep a burst's peak for good).
* Work (image decoding, SAM, grounding, descriptions) runs in a thread pool, off the event loop.
* Micro-batching: classifier forwards of concurrent requests run as one batch on one thread (one forward
  at a time: no CPU over-subscription). The batcher takes what is queued; it waits (at most
  ``batch_window_ms``) only while more requests are in flight than it holds, so a lone request never
  waits. A failed batch is retried item by item so one bad request cannot fail its neighbours.
* Each request has ``timeout`` seconds (504); work already started finishes in the background and
  keeps its admission slot until then, so timeouts cannot overload the machine.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from fmmc.serve.errors import ApiError, from_exception
from fmmc.serve.settings import ServeSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
TRIM_PIXELS = 8_000_000  # after a request this large (~100 MB decoded), return freed memory to the OS
_malloc_trim: Any = None


def return_free_memory() -> None:
    """``malloc_trim(0)`` where the C library has it (glibc): free heap goes back to the OS instead of
    staying in the process's arenas. Elsewhere nothing."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


class MicroBatcher:
    """Collect items for up to ``window_s`` (or ``max_batch`` items) and run ``fn`` on them together."""

    def __init__(self, fn: Callable[[list[Any]], list[Any]], max_batch: int, window_s: float,
                 pending: Callable[[], int] | None = None) -> None:
        self.fn = fn
        self.max_batch = max_batch
        self.window_s = window_s
        self.pending = pending  # how many items may still arrive (requests in flight); None = unknown
        self.batches = 0
        self.items = 0
        self._q: queue.Queue[tuple[Any, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="fmmc-batcher", daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> Future:
        fut: Future = Future()
        self._q.put((item, fut))
        return fut

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.window_s
            stop = False
            while len(batch) < self.max_batch:
                try:  # whatever is already queued joins at once
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    # wait (up to the window) only when more requests are in flight than in this batch:
                    # a lone request runs at once, with no added latency
                    expected = self.pending() if self.pending is not None else self.max_batch
                    remaining = deadline - time.monotonic()
                    if len(batch) >= expected or remaining <= 0:
                        break
                    try:
                        nxt = self._q.get(timeout=remaining)
                    except queue.Empty:
                        break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[tuple[Any, Future]]) -> None:
        live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
        if not live:
            return
        self.batches += 1
        self.items += len(live)
        try:
            results = self.fn([item for item, _ in live])
        except Exception as e:  # noqa: BLE001 - retried one by one, so each request gets its own answer
            if len(live) == 1:
                live[0][1].set_exception(e)
                return
            for item, fut in live:
                try:
                    fut.set_result(self.fn([item])[0])
                except Exception as e1:  # noqa: BLE001
                    fut.set_exception(e1)
            return
        for (_, fut), res in zip(live, results):
            fut.set_result(res)


class PixelBudget:
    """At most ``limit`` pixels taken at once; waiters are served in arrival order. Event-loop side only:
    call :meth:`release` on the loop (``loop.call_soon_threadsafe`` from a worker thread)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0  # the most pixels ever taken at once
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, n: int, timeout: float) -> bool:
        """Take ``n`` pixels (clipped to the limit), waiting at most ``timeout`` s; False when that ran out."""
        n = min(n, self.limit)
        if n <= 0:
            return True
        if not self._waiters and self.used + n <= self.limit:
            self._take(n)
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait({fut}, timeout=timeout)
        except asyncio.CancelledError:
            self._leave(entry)
            raise
        if fut.done():
            return True
        self._leave(entry)
        return False

    def release(self, n: int) -> None:
        self.used -= max(0, min(n, self.limit))
        self._wake()

    def _take(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def _leave(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        if entry[1].done() and not entry[1].cancelled():
            self.release(entry[0])  # granted just as the wait ended: give it back
        elif entry in self._waiters:
            self._waiters.remove(entry)
            entry[1].cancel()
            self._wake()  # the head may have been what held the others back

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.limit:
            n, fut = self._waiters.popleft()
            if not fut.done():
                self._take(n)
                fut.set_result(None)


class Runtime:
    """One loaded model shared by all requests (see the module docstring)."""

    def __init__(self, model: Any, settings: ServeSettings) -> None:
        self.model = model
        self.settings = settings
        self.pool = ThreadPoolExecutor(max_workers=settings.max_concurrency, thread_name_prefix="fmmc-serve")
        self._slots = threading.BoundedSemaphore(settings.max_concurrency + settings.max_queue)
        self._lock = threading.Lock()  # one classifier forward at a time when not micro-batching
        self._in_flight = 0
        self._count_lock = threading.Lock()
        self.pixels = PixelBudget(settings.max_pixels_in_flight or 2 * settings.max_pixels)
        self.batcher = (MicroBatcher(self._forward, settings.max_batch, settings.batch_window_ms / 1000,
                                     pending=lambda: self._in_flight) if settings.max_batch > 1 else None)

    # ----- lifecycle -----
    def warm_up(self) -> None:
        """Build the encoder (and, with ``preload``, the segmenter and grounder) before the first request.

        Raises what the first component that cannot be built raised (``WeightsUnavailableError``, ...);
        once it has succeeded, later calls return at once.
        """
        from fmmc.grounding.prompts import get_component

        if getattr(self, "_warm", False):
            return
        t0 = time.time()
        _ = self.model.encoder
        if self.settings.preload:
            for kind in ("segmenter", "grounder"):
                get_component(self.model, kind)
        self._warm = True
        log.info("model ready in %.1fs", time.time() - t0)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # ----- admission, pixel budget, timeout -----
    async def run(self, fn: Callable[..., T], *args: Any, pixels: int = 0) -> T:
        """Run ``fn(*args)`` in the pool once admitted and ``pixels`` (the images it will decode) fit in the
        budget: 503 when full, 504 after ``settings.timeout`` seconds."""
        if not self._slots.acquire(blocking=False):
            raise ApiError(503, "busy", "the server is busy; retry in a moment", {"Retry-After": "1"})
        try:
            granted = await self.pixels.acquire(pixels, self.settings.queue_timeout)
        except BaseException:
            self._slots.release()
            raise
        if not granted:
            self._slots.release()
            raise ApiError(503, "busy", f"the server is decoding other large images (over "
                                        f"{self.pixels.limit:,} pixels in flight); retry in a moment, or send a "
                                        "smaller image", {"Retry-After": "2"})
        loop = asyncio.get_running_loop()
        with self._count_lock:
            self._in_flight += 1
        try:
            fut = self.pool.submit(fn, *args)
        except RuntimeError as e:  # pool shut down
            self._release(loop, pixels)
            raise ApiError(503, "busy", "the server is shutting down") from e
        fut.add_done_callback(lambda _: self._release(loop, pixels))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), self.settings.timeout)
        except TimeoutError as e:
            raise ApiError(504, "timeout", f"the request took longer than {self.settings.timeout:g}s") from e
        except Exception as e:  # library errors -> their HTTP status (errors.from_exception)
            raise from_exception(e) from e

    def _release(self, loop: asyncio.AbstractEventLoop, pixels: int) -> None:
        """When the work is done (also after a 504: it kept its slot and pixels until now)."""
        with self._count_lock:
            self._in_flight -= 1
        self._slots.release()
        if pixels:
            try:
                loop.call_soon_threadsafe(self.pixels.release, pixels)
            except RuntimeError:  # the loop is closed: the server has stopped
                pass
        if pixels >= TRIM_PIXELS:
            return_free_memory()  # in the worker thread that did the work, off the event loop

    # ----- classification -----
    def classify_sync(self, item: Any) -> Any:
        """The :class:`~fmmc.model.classifier.Prediction` for one
        :class:`~fmmc.model.classifier.RegionInput` (blocks; call through :meth:`run`)."""
        if self.batcher is not None:
            return self.batcher.submit(item).result()
        with self._lock:
            return self._forward([item])[0]

    def _forward(self, items: Sequence[Any]) -> list[Any]:
        return self.model.classify(list(items))  # the model's one forward, for the whole micro-batch
