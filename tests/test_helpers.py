"""The tests' own port allocation (tests/helpers.py): a port handed out twice once let one
service answer another's health check, so the rules are checked here."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests import helpers


def test_ports_are_never_handed_out_twice() -> None:
    block = helpers._block()
    given = [helpers.free_port() for _ in range(300)]
    assert len(set(given)) == 300
    assert all(port in block for port in given)


def test_a_port_something_listens_on_is_passed_over() -> None:
    block = helpers._block()
    index = block.index(helpers.free_port())
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", block[index]))
        taken.listen()
        helpers._next = index  # its turn again
        assert helpers.free_port() != block[index]


def test_consecutive_ports_are_all_free() -> None:
    base = helpers.free_ports(5)
    for port in range(base, base + 5):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_each_worker_has_a_block_of_its_own_outside_the_ephemeral_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
    low, high = (int(part) for part in text.split())
    blocks = []
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    for n in range(4):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{n}")
        helpers._block.cache_clear()
        blocks.append(helpers._block())
    monkeypatch.undo()
    helpers._block.cache_clear()  # this process's own block again on next use
    for i, block in enumerate(blocks):
        assert len(block) >= 200
        assert block.stop <= low or block.start > high
        for other in blocks[i + 1 :]:
            assert block.stop <= other.start or other.stop <= block.start
