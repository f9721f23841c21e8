"""sd_notify messages received on a real AF_UNIX datagram socket, as systemd would receive them."""

from __future__ import annotations

import os
import secrets
import socket

import pytest

from nrt.service.systemd import Notifier


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def receive(sock) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def nothing_waiting(sock) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(5)
    return False


def test_ready_status_stopping_on_a_path_socket(listener):
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("waiting for jobs")
    assert receive(sock) == ["READY=1", "STATUS=waiting for jobs"]
    assert notifier.status("running cycle:2024-06-01T12:30:00Z")
    assert receive(sock) == ["STATUS=running cycle:2024-06-01T12:30:00Z"]
    assert notifier.stopping()
    assert receive(sock) == ["STOPPING=1"]


def test_abstract_namespace_socket():
    name = f"nrt-test-{os.getpid()}-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert receive(sock) == ["READY=1"]


def test_watchdog_pings_at_half_the_timeout(listener):
    sock, path = listener
    now = [100.0]
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}, clock=lambda: now[0])
    assert notifier.watchdog_interval == 2.0
    sent = []
    for step in range(21):  # the main loop calls every 0.5 s for 10 s
        now[0] = 100.0 + 0.5 * step
        if notifier.watchdog():
            sent.append(now[0])
            assert receive(sock) == ["WATCHDOG=1"]
    assert sent == [100.0, 102.0, 104.0, 106.0, 108.0, 110.0]
    assert nothing_waiting(sock)


def test_watchdog_meant_for_another_process_is_ignored(listener):
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert notifier.watchdog_interval is None
    assert not notifier.watchdog()
    assert nothing_waiting(sock)


def test_outside_systemd_everything_is_a_no_op():
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready() and not notifier.watchdog() and not notifier.stopping()


def test_a_vanished_socket_does_not_raise(tmp_path):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.ready() is False
