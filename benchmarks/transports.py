"""Read throughput of the Ice and pixel-buffer transports, side by side, on one emulator.

Run it as ``python -m cellprofiler_omero.benchmarks.transports`` (or
``python benchmarks/transports.py``). It starts an emulator, uploads a few
multichannel images, reads every channel of every image through each transport
(a warm-up pass, then timed repetitions, with readers kept open as a pipeline keeps
them), and prints MB/s per transport and their ratio. It reports; it asserts nothing.

The pieces are importable for a larger harness: ``start_emulator``, ``upload_images``,
``manager_for``, ``measure`` (one transport → a result dict) and ``format_table``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellprofiler_omero.core import runtime
from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.reading import ImageReader
from cellprofiler_omero.core.refs import parse_image
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.core.uploading import upload
from cellprofiler_omero.emulator import Emulator, SeedOptions

#: Seed as little demo data as the emulator allows: the benchmark uploads its own images.
MINIMAL_SEED = SeedOptions(fields=0, large_size=0, plate_rows=1, plate_columns=1,
                           plate_fields=1, plate_field_size=32)


@dataclass(frozen=True)
class Workload:
    """What is read: ``images`` images of ``channels`` channels of ``size``² uint16."""

    images: int = 3
    channels: int = 3
    size: int = 2048
    repetitions: int = 5
    warmup: int = 1


def start_emulator() -> Emulator:
    """A started emulator with minimal demo data (the caller stops it)."""
    return Emulator(seed_options=MINIMAL_SEED).start()


def settings_for(emulator: Emulator, transport: str, **overrides: Any) -> Settings:
    """Settings that read through ``transport`` only, from ``emulator``."""
    values: dict[str, Any] = {
        "server.host": emulator.host, "server.port": emulator.port,
        "auth.use_token": False, "auth.keepalive_seconds": 3600,
        "transports.read": [transport],
        "pixelbuffer.servers": {emulator.host: emulator.http_url},
    }
    values.update(overrides)
    return Settings().replace(values)


def manager_for(emulator: Emulator, transport: str, **overrides: Any) -> SessionManager:
    """A session manager logged in as demo, reading through ``transport``."""
    manager = SessionManager(settings_for(emulator, transport, **overrides))
    runtime.run(lambda: manager.connect(user="demo", password="demo"))
    return manager


def upload_images(manager: SessionManager, workload: Workload) -> list[int]:
    """Upload the workload's images (random uint16, ``(C, Y, X)``); their ids."""
    rng = np.random.default_rng(1)
    ids = []
    for index in range(workload.images):
        pixels = rng.integers(0, 2**16, (workload.channels, workload.size, workload.size),
                              dtype=np.uint16)
        result = runtime.run(lambda p=pixels, i=index: upload(
            manager, p, name=f"bench_{i}", axes="CYX"))
        ids.append(result.id)
    return ids


def measure(manager: SessionManager, image_ids: Sequence[int], *, repetitions: int = 5,
            warmup: int = 1) -> dict[str, Any]:
    """Time reading every channel of every image; MB/s best and median.

    Readers stay open across passes (as a pipeline keeps them), so a pass measures
    moving pixels, not opening images; the warm-up pass opens them.
    """
    readers = [ImageReader(manager, parse_image(f"Image:{i}")) for i in image_ids]

    async def one_pass() -> int:
        total = 0
        for reader in readers:
            data = await reader.read(c=None)
            total += data.nbytes
        return total

    try:
        nbytes = 0
        for _ in range(warmup):
            nbytes = runtime.run(one_pass)
        seconds = []
        for _ in range(repetitions):
            start = time.perf_counter()
            nbytes = runtime.run(one_pass)
            seconds.append(time.perf_counter() - start)
        transports = {reader.transport for reader in readers}
    finally:
        for reader in readers:
            runtime.run(reader.aclose)
    best, median = min(seconds), statistics.median(seconds)
    return {
        "transport": ",".join(sorted(transports)),
        "images": len(image_ids),
        "bytes_per_pass": nbytes,
        "seconds": seconds,
        "best_s": best,
        "median_s": median,
        "best_mb_s": nbytes / best / 1e6,
        "median_mb_s": nbytes / median / 1e6,
    }


def format_table(results: Sequence[dict[str, Any]], baseline: str = "ice") -> str:
    """A small text table of ``measure`` results with each one's ratio to ``baseline``."""
    base = next((r for r in results if r["transport"] == baseline), None)
    lines = [f"{'transport':<12} {'MB/pass':>8} {'best MB/s':>10} {'median MB/s':>12} "
             f"{'best s':>8} {'median s':>9} {'ratio (median)':>15}"]
    for r in results:
        ratio = r["median_mb_s"] / base["median_mb_s"] if base else float("nan")
        lines.append(f"{r['transport']:<12} {r['bytes_per_pass'] / 1e6:>8.1f} "
                     f"{r['best_mb_s']:>10.1f} {r['median_mb_s']:>12.1f} "
                     f"{r['best_s']:>8.3f} {r['median_s']:>9.3f} {ratio:>14.2f}x")
    return "\n".join(lines)


def run_benchmark(workload: Workload, transports: Sequence[str] = ("ice", "pixelbuffer")
                  ) -> list[dict[str, Any]]:
    """Start an emulator, upload the workload, measure each transport; the results."""
    emulator = start_emulator()
    try:
        uploader = manager_for(emulator, "ice")
        try:
            ids = upload_images(uploader, workload)
        finally:
            runtime.run(uploader.close)
        results = []
        for transport in transports:
            manager = manager_for(emulator, transport)
            try:
                results.append(measure(manager, ids, repetitions=workload.repetitions,
                                       warmup=workload.warmup))
            finally:
                runtime.run(manager.close)
        return results
    finally:
        emulator.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    defaults = Workload()
    parser.add_argument("--images", type=int, default=defaults.images)
    parser.add_argument("--channels", type=int, default=defaults.channels)
    parser.add_argument("--size", type=int, default=defaults.size)
    parser.add_argument("--repetitions", type=int, default=defaults.repetitions)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    args = parser.parse_args(argv)
    workload = Workload(args.images, args.channels, args.size, args.repetitions, args.warmup)
    print(f"{workload.images} images × {workload.channels} channels × {workload.size}² "
          f"uint16; {workload.warmup} warm-up pass(es), {workload.repetitions} timed")
    results = run_benchmark(workload)
    print(format_table(results))
    runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
