"""A TCP forwarder to stand between a daemon and PostgreSQL, so an outage can be made without stopping the server.

    python -m benchmarks.tcpproxy --listen 127.0.0.1:6543 --target 127.0.0.1:5432

Killing the process drops every connection through it at once, like a database crash or a network
cut; starting it again on the same port ends the outage. ``ProxyProcess`` does both from Python
(tests and ``bench faults``), always as a real child process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time

READY = "tcpproxy listening"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _serve(listen: tuple[str, int], target: tuple[str, int]) -> None:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, server_writer), _pipe(server_reader, client_writer))

    server = await asyncio.start_server(handle, *listen, reuse_address=True)
    print(f"{READY} on {listen[0]}:{listen[1]} -> {target[0]}:{target[1]}", flush=True)
    async with server:
        await server.serve_forever()


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ProxyProcess:
    """A ``benchmarks.tcpproxy`` child process on a fixed port: ``start``, ``kill`` (the outage), ``start`` again."""

    def __init__(self, target: tuple[str, int], port: int | None = None, host: str = "127.0.0.1") -> None:
        self.target, self.host, self.port = target, host, port or free_port()
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 15.0) -> None:
        """Start forwarding; returns once the port accepts connections."""
        command = [sys.executable, "-m", "benchmarks.tcpproxy", "--listen", f"{self.host}:{self.port}",
                   "--target", f"{self.target[0]}:{self.target[1]}"]
        deadline = time.monotonic() + timeout
        while True:  # the port can stay busy for a moment after a kill
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            assert self.process.stdout is not None
            line = self.process.stdout.readline()
            if READY in line:
                return
            self.process.wait(5)
            if time.monotonic() > deadline:
                raise RuntimeError(f"tcpproxy did not start on port {self.port}: {line.strip()}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: every connection through the proxy is cut and new ones are refused."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def __enter__(self) -> ProxyProcess:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.kill()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tcpproxy", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, type=_address, help="HOST:PORT to accept connections on")
    parser.add_argument("--target", required=True, type=_address, help="HOST:PORT to forward them to")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.listen, args.target))


if __name__ == "__main__":
    main()
