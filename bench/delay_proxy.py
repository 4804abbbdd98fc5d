"""A TCP proxy that delays every chunk, both ways, by half a round trip (bench only, not deployed).

``make bench`` puts it between the function and the Pub/Sub emulator so that each Publish RPC
pays a cloud-like round trip (this machine's kernel has no ``netem``). Each chunk read from one
side is stamped with the time it is due (arrival + ``one_way_delay``) and queued; a writer task
per direction sends the head of its queue once it is due. The reader never waits for a delay,
and chunks behind the head are due later anyway, so the delay adds latency without limiting
throughput: a chunk waits ``one_way_delay``, not for the chunks before it to have waited theirs.
The queue is bounded, so a slow receiver still pushes back on the sender as plain TCP would.

``python -m bench.delay_proxy --target HOST:PORT --port PORT --rtt-ms 20`` runs it until
SIGTERM; ``DelayProxyService`` runs that as a managed process of the local stack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from devstack.function_server import REPO_ROOT
from devstack.processes import LocalService

CHUNK_BYTES = 256 * 1024
# Chunks in flight per direction before the reader stops reading (TCP back-pressure). At one
# chunk per read, this holds far more than a 10 ms delay's worth of the traffic here.
MAX_QUEUED_CHUNKS = 4096
STARTUP_TIMEOUT_SECONDS = 30.0


class DelayProxy:
    """Forwards every connection on ``listen_port`` to ``target``, each way ``one_way_delay_s``
    late (see the module doc)."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        one_way_delay_s: float,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.one_way_delay_s = one_way_delay_s
        self.listen_host = listen_host
        self.listen_port = listen_port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen; return the port (useful with ``listen_port=0``)."""
        self._server = await asyncio.start_server(
            self._accepted, self.listen_host, self.listen_port
        )
        self.listen_port = self._server.sockets[0].getsockname()[1]
        return self.listen_port

    async def close(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _accepted(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        writers = [client_writer]
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
            writers.append(upstream_writer)
            for writer in writers:
                _no_delay(writer)
            pipes = [
                asyncio.create_task(self._pipe(client_reader, upstream_writer)),
                asyncio.create_task(self._pipe(upstream_reader, client_writer)),
            ]
            try:
                # Both directions end (EOF each way), or one fails and the other is dropped.
                await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        except OSError:
            pass  # the target refused: close the client, as a plain TCP path would
        finally:
            for writer in writers:
                writer.close()
            for writer in writers:
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await writer.wait_closed()
            self._connections.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy ``reader`` to ``writer``, each chunk sent once it is due; EOF is delayed too."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(MAX_QUEUED_CHUNKS)
        sender = asyncio.create_task(self._send_when_due(queue, writer))
        try:
            while True:
                data = await reader.read(CHUNK_BYTES)
                await queue.put((loop.time() + self.one_way_delay_s, data))
                if not data:
                    break
            await sender
        finally:
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender

    @staticmethod
    async def _send_when_due(
        queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()


def _no_delay(writer: asyncio.StreamWriter) -> None:
    """Turn off Nagle's algorithm: the delay must be the only one the proxy adds."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def accepts_connections(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port`` right now."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


class DelayProxyService(LocalService):
    """``python -m bench.delay_proxy`` as a managed process in front of ``target``."""

    service_name = "delay-proxy"

    def __init__(
        self,
        target: str,
        rtt_ms: float,
        log_dir: Path,
        port: int | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(port)
        self.target = target
        self.rtt_ms = rtt_ms
        self.log_dir = log_dir
        self.extra_env = dict(extra_env or {})

    @property
    def host(self) -> str:
        """``host:port`` to connect to instead of the target (e.g. ``PUBSUB_EMULATOR_HOST``)."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> DelayProxyService:
        """Start the proxy and wait until it accepts connections."""
        self._launch(
            [
                sys.executable,
                "-m",
                "bench.delay_proxy",
                f"--target={self.target}",
                f"--port={self.port}",
                f"--rtt-ms={self.rtt_ms}",
            ],
            self.log_dir / "delay-proxy.log",
            {**os.environ, **self.extra_env},
            lambda: accepts_connections(self.port),
            STARTUP_TIMEOUT_SECONDS,
            cwd=REPO_ROOT,
        )
        return self


async def _serve(target: str, port: int, rtt_ms: float) -> None:
    host, _, target_port = target.rpartition(":")
    proxy = DelayProxy(host, int(target_port), rtt_ms / 2000, listen_port=port)
    await proxy.start()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
    await proxy.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the proxy until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench.delay_proxy", description=__doc__)
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--port", type=int, required=True, help="port to listen on (127.0.0.1)")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="round trip to add, ms")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.target, args.port, args.rtt_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
