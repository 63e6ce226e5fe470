"""What this machine can do at best, with no OMERO involved: the reads' upper bounds.

* **loopback socket**: one TCP connection on 127.0.0.1, a thread sending a buffer
  with ``sendall`` and the receiver reading with ``recv_into`` into a preallocated
  buffer — no protocol, no copies beyond the kernel's. No read over the network
  (Ice or HTTP, here to an emulator on the same host) can beat it.
* **big-endian decode**: turning OMERO's big-endian uint16 bytes into a native
  array in memory, exactly as the transports do (``numpy.frombuffer`` on a ``>u2``
  view, assigned into a preallocated array). Every read pays it once per byte.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cellprofiler_omero.benchmarks.timing import Pass, measure

CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class CeilingsWorkload:
    socket_bytes: int = 512 * 1024 * 1024
    decode_bytes: int = 128 * 1024 * 1024
    repetitions: int = 5
    warmup: int = 1


@contextlib.contextmanager
def socket_path(total: int) -> Iterator[Pass]:
    """A connected loopback pair; each pass moves ``total`` bytes from sender to receiver."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    receiver = socket.create_connection(("127.0.0.1", port))
    sender, _ = listener.accept()
    listener.close()
    payload = memoryview(bytes(CHUNK))
    inbox = bytearray(total)
    failures: list[BaseException] = []

    def send() -> None:
        try:
            left = total
            while left > 0:
                n = min(left, CHUNK)
                sender.sendall(payload[:n])
                left -= n
        except OSError as exc:  # the receiver failed first; it reports
            failures.append(exc)

    def one_pass() -> float:
        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        view = memoryview(inbox)
        got = 0
        while got < total:
            n = receiver.recv_into(view[got:], min(CHUNK, total - got))
            if n == 0:
                raise ConnectionError("the sender closed the loopback connection early")
            got += n
        thread.join()
        if failures:
            raise failures[0]
        return float(total)

    try:
        yield one_pass
    finally:
        sender.close()
        receiver.close()


@contextlib.contextmanager
def decode_path(total: int) -> Iterator[Pass]:
    """``total`` bytes of big-endian uint16 decoded into a preallocated native array."""
    count = total // 2
    wire = np.arange(count, dtype=np.uint16).astype(">u2").tobytes()
    out = np.empty(count, dtype=np.uint16)

    def one_pass() -> float:
        out[...] = np.frombuffer(wire, dtype=">u2")
        return float(count * 2)

    yield one_pass


def run(workload: CeilingsWorkload) -> dict[str, Any]:
    """Both ceilings; the ceilings section of the results."""
    return {
        "status": "ok",
        "workload": asdict(workload),
        "socket": measure(lambda: socket_path(workload.socket_bytes),
                          repetitions=workload.repetitions, warmup=workload.warmup),
        "decode": measure(lambda: decode_path(workload.decode_bytes),
                          repetitions=workload.repetitions, warmup=workload.warmup),
    }
