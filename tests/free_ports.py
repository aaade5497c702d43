"""Ports for servers a test starts in another process (the demo's emulator, dg dev, a daemon).

A port the kernel hands out for ``bind(("127.0.0.1", 0))`` comes from the ephemeral range
(32768-60999 on Linux), the same range every outbound connection of every other test takes its
local port from. Between the probe and the server's own bind, another xdist worker's HTTP
client can take it: the server then fails with "address already in use" (seen in CI). So the
ports here come from below that range, from a slice of it that belongs to this xdist worker,
and are probed before they are returned.
"""

import os
import random
import socket

LOW, HIGH = 20_000, 32_000
SLICE = 1_500  # ports per xdist worker (gw0, gw1, ... up to 8 workers)


def _worker_range() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    start = LOW + (index % ((HIGH - LOW) // SLICE)) * SLICE
    return range(start, start + SLICE)


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(count: int = 1) -> int:
    """A port P with P .. P + count - 1 all free (the emulator takes P and P + 1)."""
    ports = _worker_range()
    for _ in range(200):
        port = random.randrange(ports.start, ports.stop - count)
        if all(_free(port + offset) for offset in range(count)):
            return port
    raise RuntimeError(f"no {count} adjacent free port(s) in {ports.start}-{ports.stop}")
