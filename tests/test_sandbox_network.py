"""The network attacks: from its own network namespace and without capabilities, a
submission reaches no loopback service of the host. Shown working without the sandbox
first, so the test cannot pass by attacking nothing."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from _sandbox_helpers import BWRAP, needs_bwrap, needs_root, run

pytestmark = pytest.mark.anyio


# -- the network: sniffing, MPTCP, TCP Fast Open, UDP, unix sockets --------------------------


class Loopback:
    """Host services on loopback: a "NATS" conversation that carries a password, and
    victims (TCP, UDP, a unix socket on a file, an abstract unix socket) that count
    whoever reaches them."""

    def __init__(self, tmp: Path) -> None:
        self.secret = f"PASS swarm-{uuid.uuid4().hex}"
        self.heard: list[str] = []
        self.stop = threading.Event()
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.nats = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.unix_path = str(tmp / "victim.sock")
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(self.unix_path)
        self.abstract_name = f"swarmbus-victim-{uuid.uuid4().hex}"
        self.abstract = socket.socket(socket.AF_UNIX)
        self.abstract.bind("\0" + self.abstract_name)
        for s in (self.tcp, self.nats, self.unix, self.abstract):
            s.listen()
        for s in (self.tcp, self.nats, self.udp, self.unix, self.abstract):
            s.settimeout(0.05)
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._serve, self._chat)]
        for t in self.threads:
            t.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            for name, s in (("tcp", self.tcp), ("unix", self.unix), ("abstract", self.abstract)):
                try:
                    conn, _ = s.accept()
                except OSError:
                    continue
                self.heard.append(name)
                conn.close()
            try:
                self.udp.recv(100)
                self.heard.append("udp")
            except OSError:
                pass
            with contextlib.suppress(OSError):
                self.nats.accept()[0].close()

    def _chat(self) -> None:  # a client that keeps authenticating over loopback
        while not self.stop.is_set():
            with socket.create_connection(self.nats.getsockname()) as c:
                c.sendall(f"CONNECT {{}}\r\n{self.secret}\r\n".encode())
            time.sleep(0.02)

    def attacks(self) -> str:
        tcp, udp = self.tcp.getsockname()[1], self.udp.getsockname()[1]
        return f'''
            import socket, time, pytest

            SECRET = {self.secret!r}
            TCP, UDP, UNIX, ABSTRACT = {tcp}, {udp}, {self.unix_path!r}, {self.abstract_name!r}

            def test_sniff_loopback():
                try:
                    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
                except OSError:
                    return  # no CAP_NET_RAW
                s.settimeout(0.05)
                seen, end = b"", time.monotonic() + 1.5
                while time.monotonic() < end:
                    try:
                        seen += s.recv(65535)
                    except OSError:
                        pass
                assert SECRET.encode() not in seen

            def test_tcp_connect():
                with pytest.raises(OSError):
                    socket.create_connection(("127.0.0.1", TCP), timeout=1)

            def test_mptcp_connect():
                with pytest.raises(OSError):
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262).connect(
                        ("127.0.0.1", TCP))

            def test_tcp_fast_open():
                with pytest.raises(OSError):
                    socket.socket().sendto(b"x", socket.MSG_FASTOPEN, ("127.0.0.1", TCP))

            def test_udp():  # sendto succeeds into the void; the listener must hear nothing
                try:
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
                        b"x", ("127.0.0.1", UDP))
                except OSError:
                    pass

            @pytest.mark.parametrize("address", [UNIX, "\\0" + ABSTRACT])
            def test_unix_socket(address):
                with pytest.raises(OSError):
                    socket.socket(socket.AF_UNIX).connect(address)
            '''

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)
        for s in (self.tcp, self.nats, self.udp, self.unix, self.abstract):
            s.close()


@pytest.fixture
def loopback(tmp_path: Path) -> Iterator[Loopback]:
    lb = Loopback(tmp_path)
    yield lb
    lb.close()


@needs_bwrap
@needs_root
async def test_loopback_services_are_out_of_reach(loopback: Loopback, tmp_path: Path) -> None:
    # Without the sandbox, a root test sniffs the password and reaches every victim...
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "test_attacks.py").write_text(textwrap.dedent(loopback.attacks()))
    baseline = await anyio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=plain, capture_output=True, text=True, timeout=60))  # fmt: skip
    assert "6 failed, 1 passed" in baseline.stdout, baseline.stdout[-2000:]  # UDP: see below
    assert {"tcp", "udp", "unix", "abstract"} <= set(loopback.heard)
    loopback.heard.clear()
    # ...in its own network namespace, with no capability, it reaches nothing.
    report = await run(loopback.attacks(), limits=BWRAP)
    assert report.ok and report.passed == 7, report.output
    time.sleep(0.2)
    assert loopback.heard == []
    assert loopback.secret not in report.output
