"""A small closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending its
next request the moment the previous response is complete.

It runs in its own process pinned to its own core, so that it measures the server rather
than competing with it. Raw asyncio protocols on uvloop, no HTTP library: parsing a
Content-Length response is all it needs, and it stays far from being the bottleneck.

It can also read the CPU time of other processes (the server) over exactly the window it
measures: CPU per request is steadier than requests per second on a shared machine, whose
speed drifts from one minute to the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue as queue_module
import time
from dataclasses import dataclass

import numpy as np

from clickstream.bench.cost import cpu_seconds

__all__ = ["LoadResult", "drive", "drive_in_process"]


@dataclass(frozen=True)
class LoadResult:
    seconds: float
    latencies: np.ndarray  # seconds, one per completed 200 response
    failures: int  # non-200 responses
    first_failure: str
    busy: float  # share of its core the load generator itself used while measuring
    watched: tuple[float | None, ...] = ()  # CPU seconds of each watched process meanwhile

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds


class _Connection(asyncio.Protocol):
    def __init__(self, run: _Run) -> None:
        self.run = run
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.sent = 0.0
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        if self.run.stopping:
            self.transport.close()
            return
        self.sent = time.perf_counter()
        self.transport.write(self.run.next_request())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            start = head.lower().find(b"content-length:")
            length = int(head[start + 15 : head.find(b"\r\n", start)]) if start >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self.run.record(time.perf_counter() - self.sent, head, body)
            self.send()

    def connection_lost(self, exc) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class _Run:
    def __init__(self, requests: list[bytes]) -> None:
        self.requests = requests
        self.position = 0
        self.stopping = False
        self.measuring = False
        self.latencies: list[float] = []
        self.failures = 0
        self.first_failure = ""

    def next_request(self) -> bytes:
        self.position = (self.position + 1) % len(self.requests)
        return self.requests[self.position]

    def record(self, latency: float, head: bytes, body: bytes) -> None:
        if not self.measuring:
            return
        if head.startswith(b"HTTP/1.1 200"):
            self.latencies.append(latency)
        else:
            self.failures += 1
            if not self.first_failure:
                self.first_failure = (head.split(b"\r\n", 1)[0] + b" " + body[:200]).decode(
                    errors="replace"
                )


def _cpu_of(pids: tuple[int, ...]) -> list[float | None]:
    return [cpu_seconds(pid) for pid in pids]


async def _drive(
    host: str,
    port: int,
    paths: list[str],
    concurrency: int,
    warmup: float,
    seconds: float,
    watch: tuple[int, ...],
) -> LoadResult:
    headers = f"Host: {host}:{port}\r\nUser-Agent: clickstream-bench\r\n\r\n"
    requests = [f"GET {path} HTTP/1.1\r\n{headers}".encode() for path in paths]
    run = _Run(requests)
    loop = asyncio.get_running_loop()
    connections = []
    for _ in range(concurrency):
        _, protocol = await loop.create_connection(lambda: _Connection(run), host, port)
        connections.append(protocol)
    await asyncio.sleep(warmup)
    run.measuring = True
    started, cpu, first = time.perf_counter(), time.process_time(), _cpu_of(watch)
    await asyncio.sleep(seconds)
    run.measuring = False
    took = time.perf_counter() - started
    busy = (time.process_time() - cpu) / took
    watched = tuple(
        None if a is None or b is None else b - a
        for a, b in zip(first, _cpu_of(watch), strict=True)
    )
    run.stopping = True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.lost for c in connections)), 5)
    latencies = np.array(run.latencies)
    return LoadResult(took, latencies, run.failures, run.first_failure, busy, watched)


def drive(
    host: str,
    port: int,
    paths: list[str],
    *,
    concurrency: int,
    seconds: float,
    warmup: float = 1.0,
    core: int | None = None,
    watch: tuple[int, ...] = (),
) -> LoadResult:
    """Keep `concurrency` requests in flight for `warmup + seconds`; measure the last part,
    and the CPU each process in `watch` spent meanwhile."""
    if core is not None:
        os.sched_setaffinity(0, {core})
    import uvloop

    return uvloop.run(_drive(host, port, paths, concurrency, warmup, seconds, tuple(watch)))


def _child(queue, args, kwargs) -> None:
    queue.put(drive(*args, **kwargs))


def drive_in_process(*args, **kwargs) -> LoadResult:
    """`drive` in a fresh process (spawned, so it shares no state with the caller)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, args, kwargs), daemon=True)
    process.start()
    deadline = time.monotonic() + kwargs.get("warmup", 1.0) + kwargs["seconds"] + 60
    try:
        while True:
            with contextlib.suppress(queue_module.Empty):
                return queue.get(timeout=0.5)
            if not process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the load generator failed (exit code {process.exitcode})")
    finally:
        process.join(10)
