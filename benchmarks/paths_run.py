"""``cellprofiler-omero run`` on Dask: how table rows should reach OMERO, and scale-out.

Two measurements, on a fresh emulator (``python -m cellprofiler_omero.benchmarks.paths_run``):

* **rows** — the same rows (``--image-sets`` × ``--objects`` object rows, keyed by
  ImageNumber and ObjectNumber) written to one table either by N worker processes
  appending their own image sets' keyed rows after every batch (what ExportToOMEROTable
  does unchanged), or by one process (the driver) appending everything in large
  batches; at N = 2 and 8. Time to all rows on the server, and the Ice calls.
* **scale** — ``run_pipeline`` (the demo nuclei pipeline, compute-bound fields) with 1
  and 2 LocalCluster workers: image sets per second and their ratio, plus the OMERO
  cost per image set (pixel bytes read, label bytes written, table rows).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellprofiler_omero.core.model import ColumnKind, ColumnSpec, TableSchema, TableTarget


@dataclass(frozen=True)
class RowsWorkload:
    image_sets: int = 96
    objects: int = 40
    batch: int = 4  # image sets per Dask batch (one keyed append each)
    features: int = 30


def _schema(features: int) -> TableSchema:
    cols = [ColumnSpec("ImageNumber", ColumnKind.LONG), ColumnSpec("ObjectNumber", ColumnKind.LONG),
            ColumnSpec("Image", ColumnKind.IMAGE)]
    cols += [ColumnSpec(f"F{i:03d}", ColumnKind.DOUBLE) for i in range(features)]
    return TableSchema("Bench_Nuclei", tuple(cols))


def _rows(numbers: Sequence[int], w: RowsWorkload) -> dict[str, list[Any]]:
    n = [i for i in numbers for _ in range(w.objects)]
    rows: dict[str, list[Any]] = {"ImageNumber": n,
                                  "ObjectNumber": [o + 1 for _ in numbers
                                                   for o in range(w.objects)],
                                  "Image": [1] * len(n)}
    for f in range(w.features):
        rows[f"F{f:03d}"] = [float(i * f) for i in range(len(n))]
    return rows


def _manager(host: str, port: int) -> Any:
    from cellprofiler_omero.core import runtime
    from cellprofiler_omero.core.config import Settings
    from cellprofiler_omero.core.session import SessionManager

    mgr = SessionManager(Settings().replace({"server.host": host, "server.port": port,
                                             "auth.use_token": False}))
    runtime.run(lambda: mgr.connect(user="demo", password="demo"))
    return mgr


def _append_batches(args: tuple[str, int, int, int, list[list[int]], RowsWorkload]
                    ) -> tuple[float, float, int]:
    """One worker process, logged in already: a keyed append per batch of image sets (as
    after each task); returns (start, end) on the system's monotonic clock and its calls."""
    from cellprofiler_omero.core import runtime
    from cellprofiler_omero.core.tables import TableWriter

    host, port, dataset, file_id, batches, w = args
    mgr = _manager(host, port)
    writer = TableWriter(mgr, TableTarget("Dataset", dataset), _schema(w.features),
                         file_id=file_id, key_columns=("ImageNumber", "ObjectNumber"))
    runtime.run(writer.open)  # joined and the table opened: not part of the appends
    started = time.perf_counter()
    for numbers in batches:
        writer.add_rows(_rows(numbers, w))
        runtime.run(writer.flush)
    ended = time.perf_counter()
    runtime.run(mgr.close)
    return started, ended, len(batches)


def measure_rows(host: str, port: int, dataset: int, workers: int, w: RowsWorkload
                 ) -> dict[str, float]:
    """Seconds to put every row on the server: workers appending keyed rows vs the driver
    gathering and appending in large batches."""
    from cellprofiler_omero.core import runtime
    from cellprofiler_omero.core.tables import TableWriter

    mgr = _manager(host, port)
    out: dict[str, float] = {}
    numbers = list(range(1, w.image_sets + 1))
    batches = [numbers[i:i + w.batch] for i in range(0, len(numbers), w.batch)]
    for mode in ("workers append keyed rows", "driver gathers and writes"):
        writer = TableWriter(mgr, TableTarget("Dataset", dataset), _schema(w.features),
                             key_columns=("ImageNumber", "ObjectNumber"))
        info = runtime.run(writer.open)
        if mode.startswith("workers"):
            shares: list[list[list[int]]] = [batches[i::workers] for i in range(workers)]
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(workers) as pool:
                spans = pool.map(_append_batches, [(host, port, dataset, info.file_id,
                                                    share, w) for share in shares])
            # From the first append to the last row on the server (CLOCK_MONOTONIC is
            # one clock for every process; process start-up and logins excluded).
            out[mode] = max(e for _, e, _ in spans) - min(s for s, _, _ in spans)
        else:
            started = time.perf_counter()
            writer.add_rows(_rows(numbers, w))  # the rows as the driver holds them
            runtime.run(writer.flush)
            out[mode] = time.perf_counter() - started
        check = TableWriter(mgr, TableTarget("Dataset", dataset), _schema(w.features),
                            file_id=info.file_id)
        rows = runtime.run(check.open).rows
        assert rows == w.image_sets * w.objects, (mode, rows)
    runtime.run(mgr.close)
    return out


@dataclass(frozen=True)
class RunWorkload:
    """The harness's ``run`` section: the 1-vs-2-worker run and (full runs) the rows."""

    fields: int = 24  # start-up weighs half as much as over 12 (1.67× vs 1.75× measured)
    size: int = 1024
    worker_counts: tuple[int, ...] = (1, 2)
    rows: RowsWorkload | None = RowsWorkload()
    rows_workers: tuple[int, ...] = (2, 8)


def run(target: Any, parent: TableTarget, w: RunWorkload) -> dict[str, Any]:
    """The harness section: image sets/s with 1 and 2 workers (ratio), the OMERO cost per
    image set (Ice calls, bytes read and written) and, when asked, who should write rows."""
    if target.emulator is None:
        return {"status": "skipped", "reason": "runs only against the emulator (it writes)"}
    emu = target.emulator
    out: dict[str, Any] = {"status": "ok"}
    if w.rows is not None:
        out["rows"] = {str(n): measure_rows(emu.host, emu.port, parent.id, n, w.rows)
                       for n in w.rows_workers}
    out.update(measure_scale(emu, parent.id, w.fields, w.size, w.worker_counts))
    return out


def _session_key(mgr: Any) -> str:
    from cellprofiler_omero.core.session import HANDOFF_ENV

    return str(json.loads(Path(mgr.export_for_workers()[HANDOFF_ENV]).read_text())["key"])


def _cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds the processes have used so far (those still alive)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _busy_seconds(task_stream: list[dict[str, Any]]) -> float:
    """Seconds the workers spent computing tasks (Dask's task stream)."""
    return sum(ss["stop"] - ss["start"] for task in task_stream
               for ss in task.get("startstops", ()) if ss.get("action") == "compute")


def measure_scale(emu: Any, dataset: int, fields: int, size: int,
                  worker_counts: Sequence[int]) -> dict[str, Any]:
    """Image sets per second of ``run_pipeline`` (demo pipeline) with each worker count,
    timed over the "run the image sets" phase (cluster start and worker set-up apart),
    and the OMERO cost of one image set: the Ice calls the run made in its session
    (driver and workers share it; per-run calls such as table creation and worker joins
    spread over the image sets), pixel bytes read, label bytes written, table rows.

    One LocalCluster grows from the smallest worker count to the largest (fewer cluster
    starts); ``busy`` is the share of the workers' time spent computing batches (Dask's
    task stream): what the run loses to the driver, the scheduler and idle workers.
    """
    import omero.model
    from distributed import Client, LocalCluster, get_task_stream
    from omero.gateway import BlitzGateway
    from omero.rtypes import rstring

    from cellprofiler_omero.core import runtime
    from cellprofiler_omero.core.uploading import upload
    from cellprofiler_omero.cp_integration.distributed import run_pipeline
    from cellprofiler_omero.cp_integration.pipelines import nuclei_pipeline
    from cellprofiler_omero.emulator import synthetic

    mgr = _manager(emu.host, emu.port)
    urls = []
    for i in range(fields):
        pixels, _ = synthetic.nuclei_and_cells(5000 + i, size)
        image = runtime.run(lambda p=pixels, i=i: upload(
            mgr, p, name=f"scale field {i}", axes="CYX", dataset_id=dataset,
            channel_names=["DAPI", "Cytoplasm"]))
        urls.append(f"omero:iid={image.id}")
    read_bytes = int(pixels.nbytes)  # both channels of one field
    conn = BlitzGateway("demo", "demo", host=emu.host, port=emu.port)
    assert conn.connect()
    out: dict[str, Any] = {"fields": fields, "size": size, "per_image_set": {},
                           "workers": {}}
    key = _session_key(mgr)
    counts = sorted(worker_counts)
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(n_workers=counts[0], threads_per_worker=1, processes=True,
                         dashboard_address=":0") as cluster, Client(cluster) as client:
        for n in counts:
            cluster.scale(n)
            client.wait_for_workers(n)
            ds = omero.model.DatasetI()
            ds.setName(rstring(f"scale {n}"))
            target = int(conn.getUpdateService().saveAndReturnObject(ds).getId().getValue())
            pipeline = Path(tmp) / f"scale-{n}.cppipe"
            pipeline.write_text(nuclei_pipeline(target, table_prefix=f"Scale{n}"))
            before = emu.call_counts(session_key=key)
            worker_pids = list(client.run(os.getpid).values())
            cpu_before = (_cpu_seconds(worker_pids), time.process_time(),
                          _cpu_seconds([emu.process.pid]))
            with get_task_stream(client) as stream:
                report = run_pipeline(pipeline, urls, mgr, client=client, batch_size=1,
                                      output=Path(tmp) / f"out-{n}", progress=False)
            cpu_after = (_cpu_seconds(worker_pids), time.process_time(),
                         _cpu_seconds([emu.process.pid]))
            after = emu.call_counts(session_key=key)
            seconds = dict(report.phases)["run the image sets"]
            done = max(1, report.done)
            calls = {op: (c - before.get(op, 0)) / done for op, c in after.items()
                     if c != before.get(op, 0)}
            out["workers"][str(n)] = {
                "image_sets": report.done, "seconds": seconds,
                "sets_per_s": report.done / seconds,
                "busy": _busy_seconds(stream.data) / (n * seconds),
                # CPU seconds per image set of the whole run (preparing and finishing
                # included) by process. They move less than wall time when other programs
                # share the cores, but they do move: the same commit's workers took 2.8 s
                # per image set at a load average of 3-7 and 4.75 s at 13 (12 × 1024²,
                # 2 vCPUs), so compare two commits side by side, under the same load.
                "cpu_per_image_set": {
                    name: (a - b) / done for name, a, b in
                    zip(("workers", "driver", "emulator"), cpu_after, cpu_before,
                        strict=True)}}
            out[f"{n} workers image sets/s"] = report.done / seconds
            rows = sum(r for _, _, r in report.tables)
            out["per_image_set"] = {
                "ice_calls": sum(calls.values()),
                "calls_by_operation": dict(sorted(calls.items(), key=lambda kv: -kv[1])),
                "pixel_bytes_read": read_bytes,
                "label_bytes_written": size * size * 2,
                "table_rows_written": rows / done,
                "images_uploaded": report.uploaded / done}
    conn.close()
    runtime.run(mgr.close)
    if len(counts) >= 2:
        a, b = counts[0], counts[1]
        out["ratio"] = out[f"{b} workers image sets/s"] / out[f"{a} workers image sets/s"]
        out[f"ratio {b}/{a} workers"] = out["ratio"]
    cpu = out["workers"][str(counts[-1])]["cpu_per_image_set"]
    cores = os.cpu_count() or 1
    # With the driver and the emulator on the same cores, at best every core computes:
    # one worker runs at 1/workers-CPU, ``cores`` workers share the cores with the rest.
    out["ratio_bound"] = min(counts[-1], cores) * cpu["workers"] / max(
        1e-9, cpu["workers"] + cpu["driver"] + cpu["emulator"])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rows measurement (2 and 8 workers) and the 1-vs-2-worker run; print JSON."""
    parser = argparse.ArgumentParser(prog="paths_run", description=__doc__)
    parser.add_argument("--image-sets", type=int, default=RowsWorkload.image_sets)
    parser.add_argument("--objects", type=int, default=RowsWorkload.objects)
    parser.add_argument("--workers", type=int, nargs="*", default=[2, 8],
                        help="worker counts of the rows measurement (none: skip it)")
    parser.add_argument("--scale-fields", type=int, default=8,
                        help="image sets for the 1-vs-2-worker run (0: skip it)")
    parser.add_argument("--scale-size", type=int, default=512)
    args = parser.parse_args(argv)
    from cellprofiler_omero.emulator import Emulator

    w = RowsWorkload(image_sets=args.image_sets, objects=args.objects)
    results: dict[str, Any] = {"workload": w.__dict__, "rows": {}}
    with tempfile.TemporaryDirectory() as tmp, Emulator(Path(tmp)) as emu:
        import omero.model
        from omero.gateway import BlitzGateway
        from omero.rtypes import rstring

        conn = BlitzGateway("demo", "demo", host=emu.host, port=emu.port)
        assert conn.connect()
        ds = omero.model.DatasetI()
        ds.setName(rstring("bench run"))
        dataset = int(conn.getUpdateService().saveAndReturnObject(ds).getId().getValue())
        conn.close()
        for n in args.workers:
            results["rows"][str(n)] = measure_rows(emu.host, emu.port, dataset, n, w)
            print(f"{n} workers: " + ", ".join(f"{k} {v:.2f} s" for k, v in
                                               results["rows"][str(n)].items()),
                  file=sys.stderr, flush=True)
        if args.scale_fields:
            results["scale"] = measure_scale(emu, dataset, args.scale_fields,
                                             args.scale_size, (1, 2))
            print(f"scale: {results['scale']}", file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
