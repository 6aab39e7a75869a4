"""Several consumer processes on one queue: :func:`run_processes`.

A handler that spends CPU in Python (decoding, hashing, indexing) holds the GIL: one
process uses one core, however many worker threads it runs. ``run_processes(build, n,
*args)`` starts ``n`` worker processes; each calls ``build(*args)`` and runs the
:class:`~bridge.sdk.consumer.Consumer` it returns, with its own broker connection and
prefetch window, on the same queue. This process supervises them and never connects to
the broker::

    from bridge.consumer import Consumer, run_processes

    def build(url: str) -> Consumer:
        app = Consumer(url, queue="archive")
        app.add("c-store", store)
        return app

    if __name__ == "__main__":
        run_processes(build, 4, "amqp://guest:guest@127.0.0.1:5672/")

Workers are started with the "spawn" method: fresh interpreters, never a fork of a
process that may hold aio-pika's loop or threads. So ``build`` is a top-level function of
an importable module, ``args`` are picklable, the main script is imported again in every
worker (keep its start behind ``if __name__ == "__main__"``), and a worker inherits none of
this process's logging set-up: configure logging in ``build``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, Final, NoReturn, TypeVarTuple

from bridge.errors import StartupError, describe_error
from bridge.sdk.consumer import Consumer
from bridge.transport import urls
from bridge.transport.broker import Backoff

__all__ = ["RESTART", "run_processes"]

log = logging.getLogger(__name__)

Ts = TypeVarTuple("Ts")

RESTART: Final = Backoff(first=0.5, cap=10.0)
"""Delays before a worker that exited is replaced; back to the first once a worker
reports that it consumes."""


def run_processes(
    build: Callable[[*Ts], Consumer],
    processes: int,
    *args: *Ts,
    stop_timeout: float = 30.0,
    start_failures: int = 5,
) -> None:
    """Run ``processes`` consumers built by ``build(*args)`` until SIGTERM or SIGINT.

    ``processes`` 1 is ``build(*args).run_forever()`` in this process: no worker process.
    Above 1, each worker runs its consumer as ``run_forever`` does: SIGTERM stops it after
    its in-flight requests (SIGINT it ignores: a Ctrl-C reaches it as the SIGTERM this
    process relays). Call it from the main thread (it handles signals). Supervision:

    - one INFO line names the workers' pids whenever all ``processes`` of them consume
      (at start, and again after a replacement);
    - a worker that exits while the pool runs is logged (pid, exit code) and replaced
      after a delay by :data:`RESTART`;
    - ``start_failures`` workers in a row that exit before consuming (the broker is
      unreachable, the configuration is wrong) stop the pool: the others get SIGTERM and
      :class:`~bridge.errors.StartupError` is raised with the last worker's error;
    - a consumer with ``exclusive=True`` stops the pool at once the same way: an
      exclusive queue cannot be shared;
    - SIGTERM or SIGINT to this process sends SIGTERM to every worker and waits up to
      ``stop_timeout`` seconds for them (then kills the rest); then it returns;
    - a worker whose supervising process is gone (killed) stops as on SIGTERM.
    """
    if processes < 1:
        raise ValueError(f"processes must be at least 1, not {processes}")
    if processes == 1:
        build(*args).run_forever()
        return
    _Pool(build, args, processes, stop_timeout, start_failures).run()


# -- in a worker process -----------------------------------------------------------------


def _work(build: Callable[..., Consumer], args: tuple[Any, ...], reports: Connection) -> None:
    """A worker process's body. Tells the parent ``("ready", pid)`` once it consumes, or
    ``("failed", why)`` / ``("fatal", why)`` when it cannot start, and exits 1 then."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        consumer = build(*args)
    except Exception as exc:
        log.exception("worker process %d: building the consumer failed", os.getpid())
        _fail(reports, "failed", describe_error(exc))
    url = consumer.amqp_url
    if consumer.exclusive:
        why = f"queue {consumer.queue} is exclusive: worker processes cannot share it"
        _fail(reports, "fatal", why)
    try:
        asyncio.run(_serve(consumer, reports))
    except (OSError, ConnectionError) as exc:
        _fail(reports, "failed", f"cannot reach the broker at {urls.redact(url)}: {exc}", url)
    except Exception as exc:
        log.exception("worker process %d failed", os.getpid())
        _fail(reports, "failed", describe_error(exc), url)


def _fail(reports: Connection, kind: str, why: str, url: str = "") -> NoReturn:
    secret = urls.password(url) if url else None
    with contextlib.suppress(OSError):
        reports.send((kind, why.replace(secret, "***") if secret else why))
    raise SystemExit(1)


async def _serve(consumer: Consumer, reports: Connection) -> None:
    """Run ``consumer`` until SIGTERM, or until the supervising process is gone (killed
    itself: its workers must not consume on unsupervised)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    parent = multiprocessing.parent_process()
    if parent is not None:

        def orphaned() -> None:
            loop.remove_reader(parent.sentinel)
            log.warning("worker process %d: the supervising process is gone", os.getpid())
            stop.set()

        loop.add_reader(parent.sentinel, orphaned)
    await consumer.start()
    reports.send(("ready", os.getpid()))
    try:
        await stop.wait()
    finally:
        await consumer.close()


# -- in the supervising process ----------------------------------------------------------


@dataclass
class _Worker:
    process: BaseProcess
    reports: Connection
    ready: bool = False
    error: str | None = None


class _Pool:
    """Keeps ``size`` worker processes running; see :func:`run_processes`."""

    def __init__(
        self,
        build: Callable[..., Consumer],
        args: tuple[Any, ...],
        size: int,
        stop_timeout: float,
        start_failures: int,
    ) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._build = build
        self._args = args
        self._size = size
        self._stop_timeout = stop_timeout
        self._start_failures = start_failures
        self._workers: dict[int, _Worker] = {}
        self._restarts: dict[int, float] = {}
        """Slots without a worker: when to start one (``time.monotonic()``)."""
        self._delays: Iterator[float] = RESTART.delays()
        self._failures = 0
        self._announced = False
        self._signal: int | None = None
        """The signal that stops the pool, once one came."""
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)

    def run(self) -> None:
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for slot in range(self._size):
                self._start(slot)
            while self._signal is None:
                self._step()
            name = signal.Signals(self._signal).name
            log.info("%s: stopping %d worker processes", name, len(self._workers))
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._signal is None:
            self._signal = signum
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"\0")

    def _start(self, slot: int) -> None:
        reports, child_end = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_work,
            args=(self._build, self._args, child_end),
            name=f"consumer-worker-{slot}",
        )
        process.start()
        child_end.close()  # the worker holds the only writer: its exit is an EOF here
        self._workers[slot] = _Worker(process, reports)

    def _step(self) -> None:
        """Wait for a report, an exit, a signal or a due restart, and handle it."""
        now = time.monotonic()
        timeout = max(0.0, min(self._restarts.values()) - now) if self._restarts else None
        watched: list[Any] = [self._wake_read]
        for worker in self._workers.values():
            watched += [worker.reports, worker.process.sentinel]
        wait(watched, timeout)
        if self._signal is not None:
            return
        for slot, worker in list(self._workers.items()):
            self._read_reports(worker)
            if not worker.process.is_alive():
                self._exited(slot, worker)
        full = len(self._workers) == self._size
        if full and not self._announced and all(w.ready for w in self._workers.values()):
            self._announced = True
            pids = ", ".join(str(w.process.pid) for w in self._workers.values())
            log.info("%d worker processes consuming (pids %s)", self._size, pids)
        now = time.monotonic()
        for slot, due in list(self._restarts.items()):
            if due <= now:
                del self._restarts[slot]
                self._start(slot)

    def _read_reports(self, worker: _Worker) -> None:
        try:
            while worker.reports.poll():
                kind, detail = worker.reports.recv()
                if kind == "ready":
                    worker.ready = True
                    self._failures = 0
                    self._delays = RESTART.delays()
                elif kind == "fatal":
                    raise StartupError(str(detail))
                else:
                    worker.error = str(detail)
        except (EOFError, OSError):
            pass  # the worker is gone: its exit says the rest

    def _exited(self, slot: int, worker: _Worker) -> None:
        worker.process.join()
        worker.reports.close()
        del self._workers[slot]
        self._announced = False
        pid, how = worker.process.pid, _exit_text(worker.process.exitcode)
        delay = next(self._delays)
        if worker.ready:
            log.warning("worker process %s %s; starting another in %.1f s", pid, how, delay)
        else:
            self._failures += 1
            why = f": {worker.error}" if worker.error else ""
            if self._failures >= self._start_failures:
                raise StartupError(
                    f"worker processes keep failing to start ({self._failures} in a row "
                    f"exited before consuming; the last {how}{why})"
                )
            log.warning(
                "worker process %s %s before consuming%s; starting another in %.1f s",
                pid, how, why, delay,
            )  # fmt: skip
        self._restarts[slot] = time.monotonic() + delay

    def _stop_all(self) -> None:
        """SIGTERM to every worker, wait up to the stop timeout, then kill the rest."""
        self._restarts.clear()
        workers = list(self._workers.values())
        for worker in workers:
            if worker.process.is_alive():
                worker.process.terminate()
        deadline = time.monotonic() + self._stop_timeout
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        for worker in workers:
            if worker.process.is_alive():
                log.warning(
                    "worker process %s did not stop within %g s: killed",
                    worker.process.pid,
                    self._stop_timeout,
                )
                worker.process.kill()
                worker.process.join(5)
            worker.reports.close()
        self._workers.clear()


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
