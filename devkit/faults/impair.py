"""An impairing TCP proxy: what 200 ms ± 50 delay, 5 % loss and reordering look like above TCP.

TCP hides packet loss and reordering from the application: a lost segment comes back after a
retransmission timeout, and reordered segments are delivered in order once the gap is filled.
So, seen from MQTT, a lossy and reordering link is a stream whose chunks arrive late, some much
later (a retransmission, at least 200 ms — Linux's minimum RTO), and in bursts. This proxy
reproduces exactly that per direction: each chunk is held for `delay_ms ± jitter_ms`; with
probability `loss` it is held one retransmission timeout more; order within a connection is
kept (as TCP keeps it). `cut()` closes every connection abruptly (a broken link), which is
what makes MQTT sessions redeliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from dataclasses import dataclass, field

from devkit.localservices import free_port

RTO_MIN_MS = 200.0  # Linux TCP_RTO_MIN


@dataclass
class Impairment:
    """What to do to the bytes; change it while the proxy runs."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0  # probability that a chunk waits one retransmission timeout more
    rto_ms: float = RTO_MIN_MS

    def hold_s(self, rng: random.Random) -> float:
        """How long one chunk is held."""
        d = self.delay_ms + (rng.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0)
        if self.loss and rng.random() < self.loss:
            d += self.rto_ms
        return max(d, 0.0) / 1000.0


@dataclass
class ProxyStats:
    connections: int = 0
    chunks: int = 0
    bytes: int = 0
    retransmit_like: int = 0
    cuts: int = 0
    swallowed: int = 0  # chunks discarded while frozen


@dataclass
class ImpairedProxy:
    """Listen on 127.0.0.1:`port`, forward to `target_host:target_port`, impairing both ways.

    Runs its own event loop in a thread so tests and benchmarks of any style can use it.
    """

    target_host: str
    target_port: int
    impairment: Impairment = field(default_factory=Impairment)
    port: int = 0
    seed: int = 1
    stats: ProxyStats = field(default_factory=ProxyStats)

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self._rng = random.Random(self.seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="impaired-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.frozen = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ImpairedProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=5)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def __enter__(self) -> ImpairedProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cut(self) -> None:
        """Break every open connection (RST-like close); new connections are still accepted."""
        asyncio.run_coroutine_threadsafe(self._cut(), self._loop).result(timeout=5)

    def freeze(self) -> None:
        """Black-hole every connection: bytes are swallowed both ways, nothing is closed.

        What a lamp losing power looks like to the broker: no FIN, no DISCONNECT, just silence,
        so only the keepalive timeout can tell.
        """
        self.frozen = True

    def thaw(self) -> None:
        """Forward bytes again (those swallowed meanwhile are gone)."""
        self.frozen = False

    async def _cut(self) -> None:
        self.stats.cuts += 1
        for w in list(self._writers):
            transport = w.transport
            with contextlib.suppress(Exception):
                transport.abort()
        self._writers.clear()

    # -- forwarding --------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.stats.connections += 1
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst, (writer, up_writer)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        # A queue per direction keeps order: a chunk is released at max(its due time, the previous one's).
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = asyncio.create_task(self._send(queue, dst, pair))
        last_due = 0.0
        try:
            while True:
                chunk = await src.read(65536)
                if not chunk:
                    break
                if self.frozen:
                    self.stats.swallowed += 1
                    continue
                hold = self.impairment.hold_s(self._rng)
                if hold > (self.impairment.delay_ms + self.impairment.jitter_ms) / 1000.0:
                    self.stats.retransmit_like += 1
                self.stats.chunks += 1
                self.stats.bytes += len(chunk)
                last_due = max(time.monotonic() + hold, last_due)
                queue.put_nowait((last_due, chunk))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    async def _send(
        self,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        dst: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while (item := await queue.get()) is not None:
                due, chunk = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if dst.is_closing():
                    break
                dst.write(chunk)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for w in pair:
                self._writers.discard(w)
                with contextlib.suppress(Exception):
                    w.close()
