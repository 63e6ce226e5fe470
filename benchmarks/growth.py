"""How reading and table writing scale: plane size 256² → 16384², image sets 10 → 1,000.

**Reads.** Each plane size is uploaded once (one uint16 channel; planes above the
emulator's pyramid threshold get a pyramid, as on a real server) and then read in full
by a *fresh* Python process per size and transport, so that its memory peak belongs to
that read alone and not to anything the harness allocated before. The child joins the
harness's session through the private hand-off file, fetches the metadata, then times
one ``ImageReader.read`` of the whole plane (tiled reads under the message limit). Its
memory is watched from outside with psutil (RSS sampled every few milliseconds) and
from inside (the kernel's high-water mark, ``VmHWM``, on Linux); the larger is the peak.
The idle RSS just before the read is recorded too, so the read's own share shows.

**Uploads.** The largest plane is also uploaded by a fresh process
(``core.uploading.upload``), its peak memory taken the same way; the array it uploads
is part of that peak (the figure to read is how far above 1× the plane it goes).

Every network profile gets its own points (the planes are uploaded once per run, read
under each profile), so the table shows peak memory per profile.

**Tables.** ``TableWriter`` time for 10 → 1,000 image sets of 10 rows × 100 columns.

Run as ``python -m cellprofiler_omero.benchmarks.growth CHILD-JSON`` only by the harness.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cellprofiler_omero.benchmarks.paths_tables import make_rows, table_writer_pass
from cellprofiler_omero.benchmarks.target import Target
from cellprofiler_omero.benchmarks.timing import describe, repeat
from cellprofiler_omero.core import runtime
from cellprofiler_omero.core.model import TableTarget
from cellprofiler_omero.core.uploading import upload

#: How often the harness samples the child's RSS.
SAMPLE_SECONDS = 0.005
CHILD_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class GrowthWorkload:
    sizes: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192, 16384)
    transports: tuple[str, ...] = ("ice", "pixelbuffer")
    image_sets: tuple[int, ...] = (10, 30, 100, 300, 1000)
    table_columns: int = 100
    rows_per_image_set: int = 10
    table_repetitions: int = 2
    #: The largest plane's upload in a fresh process (its peak memory does not depend on
    #: the network: the harness measures it under the first profile only).
    upload: bool = True


def plane(size: int) -> np.ndarray:
    """A cheap, non-constant ``size``² uint16 plane (random numbers take seconds at 16384²)."""
    ramp = np.arange(size, dtype=np.uint16)
    return np.add.outer(ramp * np.uint16(3), ramp)


#: Planes uploaded for the reads, by emulator and size: once per harness run, read under
#: every network profile.
_uploaded: dict[tuple[int, int], int] = {}


def upload_planes(target: Target, sizes: Sequence[int]) -> dict[int, int]:
    """One single-channel image per size; ``{size: image id}`` (uploaded once per
    target: later network profiles read the same images)."""
    ids = {size: _uploaded[(id(target), size)] for size in sizes
           if (id(target), size) in _uploaded}
    with target.session() as manager:
        for size in sizes:
            if size in ids:
                continue
            pixels = plane(size)
            result = runtime.run(lambda p=pixels, s=size: upload(
                manager, p, name=f"bench_growth_{s}", axes="YX"))
            ids[size] = _uploaded[(id(target), size)] = result.id
            del pixels
    return ids


def watch(command: list[str], env: dict[str, str]) -> tuple[dict[str, Any], int]:
    """Run a child, sampling its RSS; its JSON answer (last stdout line) and peak RSS."""
    import psutil

    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    peak = 0
    deadline = time.monotonic() + CHILD_TIMEOUT_SECONDS
    try:
        watched = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                peak = max(peak, watched.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                break
            if time.monotonic() > deadline:
                process.kill()
                raise TimeoutError(f"the growth child ran over {CHILD_TIMEOUT_SECONDS:.0f} s")
            time.sleep(SAMPLE_SECONDS)
    finally:
        out, err = process.communicate()
    if process.returncode != 0:
        tail = " | ".join(err.strip().splitlines()[-3:])
        raise RuntimeError(f"the growth child failed ({process.returncode}): {tail}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError("the growth child printed no result")
    return json.loads(lines[-1]), peak


def read_point(target: Target, image_id: int, size: int, transport: str,
               handoff: dict[str, str], action: str = "read") -> dict[str, Any]:
    """One fresh-process read of the whole plane (``action="upload"``: an upload of a
    new plane of that size, ``image_id`` unused); its time and memory."""
    from cellprofiler_omero.benchmarks.paths_e2e import clean_env

    settings = {"server.host": target.host, "server.port": target.port,
                "transports.read": [transport], "auth.use_token": False,
                "auth.keepalive_seconds": 3600}
    if target.pixelbuffer_url:
        settings["pixelbuffer.servers"] = {target.host: target.pixelbuffer_url}
    child = {"image_id": image_id, "settings": settings, "action": action, "size": size}
    command = [sys.executable, "-m", "cellprofiler_omero.benchmarks.growth",
               json.dumps(child)]
    point: dict[str, Any] = {"size": size, "transport": transport,
                             "plane_bytes": size * size * 2, "image_id": image_id}
    try:
        answer, sampled_peak = watch(command, clean_env(handoff))
    except Exception as exc:
        return {**point, "error": describe(exc)}
    peak = max(sampled_peak, int(answer.get("hwm_rss") or 0))
    return {**point, **answer, "sampled_peak_rss": sampled_peak, "peak_rss": peak,
            "peak_vs_plane": peak / point["plane_bytes"],
            "read_rss_delta": peak - answer["rss_before"]}


def run(target: Target, parent: TableTarget, workload: GrowthWorkload) -> dict[str, Any]:
    """Every read point and table point; the growth section (the plot comes later)."""
    transports = [t for t in workload.transports
                  if t != "pixelbuffer" or target.pixelbuffer_url]
    ids = upload_planes(target, workload.sizes)
    points = []
    with target.session() as manager:
        handoff = manager.export_for_workers()
        for size in workload.sizes:
            for transport in transports:
                points.append(read_point(target, ids[size], size, transport, handoff))
        largest = max(workload.sizes)
        uploads = ([read_point(target, 0, largest, "ice", handoff, action="upload")]
                   if workload.upload else [])
    tables = []
    with target.session() as manager:
        for sets in workload.image_sets:
            rows = make_rows(sets * workload.rows_per_image_set, workload.table_columns,
                             workload.rows_per_image_set)
            timing = repeat(functools.partial(table_writer_pass, manager, parent, rows),
                            repetitions=workload.table_repetitions, warmup=0,
                            unit="rows/s")
            tables.append({"image_sets": sets, "rows": rows.rows, "seconds": timing.median,
                           "all_seconds": timing.seconds,
                           "rows_per_s": timing.rate(timing.median)})
    return {"status": "ok", "workload": asdict(workload), "read": points,
            "upload": uploads, "tables": tables}


# -- the child --------------------------------------------------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """In the fresh process: join the session, read the plane once, report."""
    import gc

    import psutil

    from cellprofiler_omero.core.config import Settings
    from cellprofiler_omero.core.reading import ImageReader
    from cellprofiler_omero.core.refs import Kind, ObjectRef
    from cellprofiler_omero.core.session import SessionManager

    me = psutil.Process()
    manager = SessionManager(Settings().replace(spec["settings"]))
    runtime.run(manager.connect)  # the hand-off file names the server and session
    if spec.get("action") == "upload":
        try:
            return _upload_child(manager, int(spec["size"]), me)
        finally:
            runtime.run(manager.close)
    reader = ImageReader(manager, ObjectRef(Kind.IMAGE, int(spec["image_id"])))
    try:
        runtime.run(reader.metadata)
        gc.collect()
        rss_before = me.memory_info().rss
        started = time.perf_counter()
        data = runtime.run(lambda: reader.read(c=[0]))
        seconds = time.perf_counter() - started
        nbytes = int(data.nbytes)
        transport = reader.transport
        rss_after = me.memory_info().rss
        del data
    finally:
        runtime.run(reader.aclose)
        runtime.run(manager.close)
    return {"seconds": seconds, "bytes": nbytes, "served_by": transport,
            "rss_before": rss_before, "rss_after_read": rss_after, "hwm_rss": _high_water()}


def _upload_child(manager: Any, size: int, me: Any) -> dict[str, Any]:
    """Upload one new ``size``² plane; time and memory (the array is made first)."""
    import gc

    pixels = plane(size)
    gc.collect()
    rss_before = me.memory_info().rss
    started = time.perf_counter()
    runtime.run(lambda: upload(manager, pixels, name=f"bench_growth_upload_{size}",
                               axes="YX"))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "bytes": int(pixels.nbytes), "served_by": "ice",
            "rss_before": rss_before, "rss_after_read": me.memory_info().rss,
            "hwm_rss": _high_water()}


def _high_water() -> int | None:
    """This process's peak RSS in bytes (``VmHWM``), where the kernel tells it (Linux).

    Not ``getrusage``'s ``ru_maxrss``: Linux carries it over from the parent through
    fork and exec, so a child would report the harness's own size as its peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:  # not Linux: psutil's samples stand alone
        pass
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m cellprofiler_omero.benchmarks.growth CHILD-JSON "
              "(run by the benchmark harness)", file=sys.stderr)
        return 2
    result = child(json.loads(args[0]))
    print(json.dumps(result), flush=True)
    runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
