"""Run a CellProfiler pipeline over OMERO images on a Dask cluster.

The driver (this process) builds the image sets with CellProfiler's own machinery
(``Pipeline.prepare_run``: NamesAndTypes, Metadata, Groups or LoadData), which also
creates the run's OMERO.tables once and records their file ids as experiment
measurements. Image sets are cut into batches (a group is never split) and each batch
is one Dask task. Nothing here schedules, queues or talks to workers itself: Dask does.

On every worker process a ``WorkerPlugin`` prepares once: CellProfiler headless with
this package's plugins, the pipeline loaded, the run's initial measurements, and the
driver's OMERO session joined through a private (0600) hand-off file written inside
the worker. The session key travels only inside the plugin's pickled state (Dask's
own connection to the worker, the same channel that carries code a worker will run);
it is never a task argument, a task key, a log line or a process argument.

A batch runs the image sets in the worker's process like CellProfiler's analysis
worker does (``prepare_group`` on a group's first image set, ``run_image_set`` each,
``post_group`` on its last), then flushes ExportToOMEROTable's buffered rows and
returns CellProfiler's measurements for the batch; the driver merges them into one
HDF5 file (``--output``) and runs ``post_run``. Results are written exactly once
because every write looks for itself first: table rows by their key columns
(ImageNumber, ObjectNumber), uploads by their client key. A batch Dask re-runs
(its worker died) skips what the first attempt wrote.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import math
import os
import signal
import stat
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin

from cellprofiler_omero.core.errors import OmeroError
from cellprofiler_omero.core.hookspecs import hookimpl
from cellprofiler_omero.core.session import HANDOFF_ENV, SessionManager

log = logging.getLogger(__name__)

#: The WorkerPlugin's name prefix (one plugin per run; the run id follows).
PLUGIN_PREFIX = "cellprofiler-omero-run-"
MEASUREMENTS_FILE = "measurements.h5"
#: How long ``--scheduler`` waits for a cluster's first worker (batch jobs may queue).
WAIT_FOR_WORKERS_SECONDS = 600
#: Image sets whose values the driver holds before writing them into measurements.h5.
MERGE_EVERY = 64
#: How long a worker leaving a run waits for its running image set to finish.
TEARDOWN_WAIT_SECONDS = 60.0
#: How often the driver checks its session while a run lasts (a renewed session is
#: handed to the workers at once, so they wait for it only that long).
SESSION_CHECK_SECONDS = 15.0


class TooManyFailures(OmeroError):
    """More image sets failed than ``--max-failures`` allows; the run was stopped."""

    def __init__(self, message: str, *, failed: int, limit: int, hint: str | None = None
                 ) -> None:
        super().__init__(message, hint=hint)
        self.failed = failed
        self.limit = limit


class RunFailed(OmeroError):
    """The run could not be prepared or a batch failed as a whole (not one image set)."""


@dataclass(frozen=True)
class Batch:
    """Image sets that run together in one task; ``group_start``/``group_end`` say
    whether the batch begins/ends a group (whole groups only, or ungrouped image sets)."""

    number: int
    image_numbers: tuple[int, ...]
    grouped: bool


@dataclass
class Failure:
    """An image set that failed: where and the first line of its error."""

    image_number: int
    module: str
    error: str


@dataclass
class RunReport:
    """What a run did (the summary, ``--json``, and tests read it)."""

    pipeline: str = ""
    run_id: str = ""
    image_sets: int = 0
    done: int = 0
    failures: list[Failure] = field(default_factory=list)
    batches: int = 0
    workers: int = 0
    dashboard: str | None = None
    uploaded: int = 0
    tables: list[tuple[str, int, int]] = field(default_factory=list)
    output: str | None = None
    phases: list[tuple[str, float]] = field(default_factory=list)
    #: image number → the worker (address, pid) that ran it (groups stay on one worker).
    ran_on: dict[int, str] = field(default_factory=dict)

    def summary(self) -> str:
        """The end summary, like the demo's."""
        state = "finished" if not self.failures else "finished with failures"
        lines = ["", f"cellprofiler-omero run: {state}",
                 f"  image sets           : {self.done} done, {len(self.failures)} failed, "
                 f"of {self.image_sets} ({self.batches} batches on {self.workers} workers)"]
        for failure in self.failures[:10]:
            lines.append(f"    image set {failure.image_number} failed in {failure.module}: "
                         f"{failure.error}")
        if len(self.failures) > 10:
            lines.append(f"    … and {len(self.failures) - 10} more (see --json)")
        lines.append(f"  images uploaded      : {self.uploaded}")
        for name, file_id, rows in self.tables:
            lines.append(f"  table rows           : {rows:6d} in {name} (OriginalFile {file_id})")
        if self.output:
            lines.append(f"  measurements         : {self.output}")
        if self.dashboard:
            lines.append(f"  Dask dashboard       : {self.dashboard}")
        lines.append("  time per phase       : "
                     + ", ".join(f"{n} {s:.1f} s" for n, s in self.phases))
        return "\n".join(lines)

    def as_json(self) -> str:
        """The report as JSON (for scripts)."""
        data = asdict(self)
        data["ran_on"] = {str(k): v for k, v in self.ran_on.items()}
        return json.dumps(data, indent=2)


# -- CellProfiler in this process -----------------------------------------------------------

_cp_lock = threading.Lock()
_cp_ready = False


def setup_cellprofiler(output_dir: str | None = None) -> None:
    """CellProfiler headless, with this package's plugins (the reader and both modules)."""
    global _cp_ready
    with _cp_lock:
        import cellprofiler_core.preferences as preferences

        preferences.set_headless()  # before any preference: headless needs no wx
        if output_dir is not None:
            preferences.set_default_output_directory(output_dir)
        from cellprofiler_core.utilities.core import modules

        if _cp_ready or "ExportToOMEROTable" in modules.all_modules:
            _cp_ready = True  # already set up (by a notebook, or a test)
            return
        # mysqlclient is deliberately not installed (ExportToDatabase to MySQL only).
        logging.getLogger("cellprofiler.modules.exporttodatabase").setLevel(logging.ERROR)
        from cellprofiler_core.reader import activate_readers, fill_readers
        from cellprofiler_core.utilities.core.modules import fill_modules
        from cellprofiler_core.utilities.core.plugins import load_plugins

        from cellprofiler_omero.cp_integration import plugins_dir

        preferences.set_plugin_directory(str(plugins_dir()), globally=False)
        # Readers first: fill_modules() also loads the plugins (our reader among them),
        # and fill_readers() would clear every reader registered before it.
        fill_readers(check_config=False)
        fill_modules()
        load_plugins()
        activate_readers(check_config=False)
        _cp_ready = True


def load_pipeline(text: str) -> Any:
    """A CellProfiler ``Pipeline`` from ``.cppipe`` text (errors raised, not skipped)."""
    from cellprofiler_core.pipeline import Pipeline

    pipeline = Pipeline()
    pipeline.loadtxt(io.StringIO(text), raise_on_error=True)
    return pipeline


# -- batches --------------------------------------------------------------------------------


def make_batches(groups: Sequence[Sequence[int]], batch_size: int, *, grouped: bool
                 ) -> list[Batch]:
    """Whole groups packed into batches of about ``batch_size`` image sets (a group larger
    than that is one batch of its own); ungrouped image sets are cut every ``batch_size``."""
    batches: list[Batch] = []
    current: list[int] = []
    for group in groups:
        if current and len(current) + len(group) > batch_size:
            batches.append(Batch(len(batches) + 1, tuple(current), grouped))
            current = []
        current.extend(int(n) for n in group)
        if not grouped:
            while len(current) >= batch_size:
                batches.append(Batch(len(batches) + 1, tuple(current[:batch_size]), grouped))
                current = current[batch_size:]
    if current:
        batches.append(Batch(len(batches) + 1, tuple(current), grouped))
    return batches


# -- the worker side ------------------------------------------------------------------------


class CellProfilerOmeroRun(WorkerPlugin):
    """The run's Dask ``WorkerPlugin``: prepares each worker process once for one run."""

    def __init__(self, run_id: str, pipeline_text: str, measurements: bytes,
                 handoff_file: str, environment: dict[str, str], *,
                 ignore_interrupts: bool = False) -> None:
        self.name = PLUGIN_PREFIX + run_id
        self.run_id = run_id
        self.pipeline_text = pipeline_text
        self.measurements = measurements
        # The path of the driver's private (0600) hand-off file, never its contents: the
        # plugin travels through the scheduler, which logs its messages at DEBUG.
        self.handoff_file = handoff_file
        self.environment = environment
        #: Workers of the run's own LocalCluster ignore Ctrl-C (the terminal sends it to
        #: the whole process group): the driver stops them itself, without tracebacks.
        self.ignore_interrupts = ignore_interrupts
        self.pipeline: Any = None
        self.initial: Any = None
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def __repr__(self) -> str:  # never the session key (dashboards and logs show reprs)
        return f"<cellprofiler-omero run {self.run_id}>"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("pipeline", "initial", "lock", "stopping"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.pipeline = None
        self.initial = None
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def setup(self, worker: Any = None) -> None:
        """Join the session (private file in this process), prepare CellProfiler."""
        from cellprofiler_core.utilities.measurement import load_measurements_from_buffer

        if not os.access(self.handoff_file, os.R_OK):
            raise RunFailed(
                f"This worker cannot read the session hand-off {self.handoff_file}.",
                hint="Give --output a folder on a file system the workers share (the "
                     "hand-off is a private file there while the run lasts), and run the "
                     "workers as the same user.")
        if self.ignore_interrupts and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # also on a restarted worker
        os.environ.update(self.environment)
        os.environ[HANDOFF_ENV] = self.handoff_file
        setup_cellprofiler(tempfile.gettempdir())
        self.pipeline = load_pipeline(self.pipeline_text)
        from cellprofiler_omero.cp_integration.export_table import ExportToOMEROTable

        for module in self.pipeline.modules():
            if isinstance(module, ExportToOMEROTable):
                # The driver writes the rows from the measurements it gathers anyway
                # (measured: see ARCHITECTURE.md, "Who writes the rows").
                module.enabled = False
        self.pipeline.calculate_last_image_uses()
        self.initial = load_measurements_from_buffer(self.measurements)
        log.info("worker prepared for run %s (pid %d)", self.run_id, os.getpid())

    async def teardown(self, worker: Any = None) -> None:
        """Let a running batch finish its image set (a stopped run's batch goes no further),
        then detach from the session (the driver removes the hand-off file)."""
        import asyncio

        from cellprofiler_omero.core import runtime
        from cellprofiler_omero.core import session as core_session

        self.stopping.set()
        idle = await asyncio.to_thread(self.lock.acquire, True, TEARDOWN_WAIT_SECONDS)
        try:
            manager = core_session._manager
            if manager is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(runtime.run, manager.close)
            if os.environ.get(HANDOFF_ENV) == self.handoff_file:
                del os.environ[HANDOFF_ENV]
        finally:
            if idle:
                self.lock.release()


def worker_plugin(run_id: str, pipeline_text: str, measurements: bytes, handoff_file: str,
                  environment: dict[str, str], *, ignore_interrupts: bool = False
                  ) -> CellProfilerOmeroRun:
    """The ``distributed.WorkerPlugin`` that prepares each worker for run ``run_id``."""
    return CellProfilerOmeroRun(run_id, pipeline_text, measurements, handoff_file,
                                environment, ignore_interrupts=ignore_interrupts)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_batch(run_id: str, image_numbers: Sequence[int], grouped: bool) -> dict[str, Any]:
    """One batch on this worker (a Dask task): returns its measurements and outcomes."""
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins[PLUGIN_PREFIX + run_id]
    assert isinstance(plugin, CellProfilerOmeroRun)
    with plugin.lock, _garbage_collected_in_this_thread():
        # One batch at a time: a CellProfiler pipeline is not thread-safe.
        return _run_batch(plugin, list(image_numbers), grouped,
                          f"{worker.address} pid {os.getpid()}")


@contextlib.contextmanager
def _garbage_collected_in_this_thread() -> Iterator[None]:
    """While CellProfiler works in this thread (a worker's batch, or the driver's run),
    Python's cyclic garbage collector runs only here: automatic collection is off, and
    the caller collects the young generations between image sets (``gc.collect(1)``),
    as this does at the end.

    CellProfiler keeps its measurements in HDF5 (h5py). Freeing an h5py object takes
    h5py's global lock; if the collector frees one on another thread (Dask's event loop,
    which allocates all the time, or this package's Ice loop) while this thread holds
    that lock and waits for the GIL, the process deadlocks (h5py/h5py#2019,
    dask/dask#7547: a CI run hung there). Only the young generations are collected here:
    a full collection of CellProfiler's heap cost ~0.8 s of CPU per batch (measured); the
    old generation is collected automatically afterwards, when CellProfiler is done (the
    driver's run, which may last hours, also makes a full collection every
    ``MERGE_EVERY`` image sets).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.collect(1)
        if was_enabled:
            gc.enable()


def _run_batch(plugin: CellProfilerOmeroRun, image_numbers: list[int], grouped: bool, where: str
               ) -> dict[str, Any]:
    from cellprofiler_core.measurement import Measurements
    from cellprofiler_core.pipeline import RunException
    from cellprofiler_core.workspace import Workspace

    pipeline = plugin.pipeline
    m = Measurements(copy=plugin.initial)
    failures: list[dict[str, Any]] = []
    current: dict[str, int] = {"n": 0}

    def on_event(_pipeline: Any, event: Any) -> None:
        if isinstance(event, RunException):
            failures.append({"image_number": current["n"], "module": event.module.module_name,
                             "error": _first_line(event.error)})
            event.cancel_run = False
            event.skip_thisset = True  # this image set only; the batch goes on

    pipeline.add_listener(on_event)
    done: list[int] = []
    try:
        last_workspace = None
        for n in image_numbers:
            if plugin.stopping.is_set():
                break  # the run was stopped: its result is not wanted, the rest not run
            if m["Image", "Group_Index", n] == 1:
                # The first image set of a group (always, ungrouped pipelines: their one
                # group's modules keep per-run state in the measurements).
                group_numbers = [i for i in image_numbers
                                 if m["Image", "Group_Number", i] == m["Image", "Group_Number", n]]
                workspace = Workspace(pipeline, None, None, None, m, None, None)
                pipeline.prepare_group(workspace, m.get_grouping_keys(), group_numbers)
            current["n"] = n
            before = len(failures)
            last_workspace = pipeline.run_image_set(m, n, None, None, None)
            gc.collect(1)  # here, not on another thread (_garbage_collected_in_this_thread)
            if len(failures) == before:
                errors = [f for f in m.get_feature_names("Image") if f.startswith("ModuleError_")]
                if any(m["Image", f, n] for f in errors):
                    failures.append({"image_number": n, "module": errors[0].split("_", 1)[1],
                                     "error": "failed (see the worker's log)"})
            if len(failures) == before:
                done.append(n)
        if grouped and last_workspace is not None:
            pipeline.post_group(last_workspace, m.get_grouping_keys())
        # Images saved behind the pipeline are complete before the batch counts as done
        # (a failed one fails the batch, which Dask runs again: uploads are keyed).
        from cellprofiler_omero.cp_integration.save_images import finish_uploads

        finish_uploads()
        # The batch's own values as plain data (extracted here, in parallel, rather than
        # by the driver from an HDF5 copy of the whole run: measured, that was ~1 s of
        # driver CPU per image set); relationships, when there are any, as CellProfiler's
        # HDF5 for ``copy_relationships``.
        values = _batch_values(m, plugin.initial, done)
        relationships = m.file_contents() if done and m.get_relationship_groups() else None
    finally:
        pipeline.remove_listener(on_event)
        m.close()
    return {"values": values, "relationships": relationships, "done": done,
            "failures": failures, "where": where, "image_numbers": image_numbers}


def _changed(before: Any, after: Any) -> bool:
    import numpy as np

    if isinstance(before, np.ndarray) or isinstance(after, np.ndarray):
        a, b = np.asarray(before), np.asarray(after)
        return a.shape != b.shape or bool(np.any(a != b))
    return bool(before != after)


def _batch_values(m: Any, initial: Any, numbers: list[int]) -> dict[tuple[str, str],
                                                                       dict[int, Any]]:
    """``(object, feature) → {image number: value}`` of these image sets: every object
    feature, and the Image features that differ from what ``prepare_run`` wrote (as
    CellProfiler's ``AnalysisRunner.copy_recieved_measurements`` copies only those, so
    the driver's metadata, some of it empty, stays as it is)."""
    out: dict[tuple[str, str], dict[int, Any]] = {}
    if not numbers:
        return out
    for obj in m.get_object_names():
        if obj == "Experiment":
            continue  # written by prepare_run / post_run on the driver
        for feature in m.get_feature_names(obj):
            pairs = list(zip(numbers, m[obj, feature, numbers], strict=True))
            if obj == "Image" and initial.has_feature("Image", feature):
                before = initial["Image", feature, numbers]
                pairs = [(n, v) for (n, v), b in zip(pairs, before, strict=True)
                         if _changed(b, v)]
            if pairs:
                out[(obj, feature)] = dict(pairs)
    return out


# -- the driver side ------------------------------------------------------------------------


def _exporters(cp_pipeline: Any) -> list[Any]:
    from cellprofiler_omero.cp_integration.export_table import ExportToOMEROTable

    return [m for m in cp_pipeline.modules() if isinstance(m, ExportToOMEROTable)]


class _ImageSetView:
    """The run's measurements as ExportToOMEROTable reads them for one image set: the
    batch's values and the Image values ``prepare_run`` wrote come from memory (reading
    each from CellProfiler's HDF5 cost most of the driver's CPU), anything else from the
    measurements themselves."""

    def __init__(self, measurements: Any, values: dict[tuple[str, str], dict[int, Any]],
                 prepared: dict[str, dict[int, Any]], image_number: int) -> None:
        self._m = measurements
        self._values = values
        self._prepared = prepared
        self.image_set_number = image_number

    def __getattr__(self, name: str) -> Any:
        return getattr(self._m, name)

    def has_feature(self, obj: str, feature: str) -> bool:
        return ((obj, feature) in self._values or (obj == "Image" and feature in self._prepared)
                or bool(self._m.has_feature(obj, feature)))

    def get_current_measurement(self, obj: str, feature: str) -> Any:
        n = self.image_set_number
        found = self._values.get((obj, feature))
        if found is not None and n in found:
            return found[n]
        if obj == "Image" and feature in self._prepared:
            return self._prepared[feature].get(n)
        return self._m.get_current_measurement(obj, feature)

    def get_current_image_measurement(self, feature: str) -> Any:
        return self.get_current_measurement("Image", feature)


def _write_rows(cp_pipeline: Any, measurements: Any, image_numbers: Sequence[int],
                values: dict[tuple[str, str], dict[int, Any]],
                prepared: dict[str, dict[int, Any]]) -> None:
    """ExportToOMEROTable's rows of these (merged) image sets, written by the driver: the
    module's own ``run`` on each image set, its writers opened by ``prepare_run`` (keyed
    appends every "write rows every N image sets", and at ``post_run``)."""
    from cellprofiler_core.object import ObjectSet
    from cellprofiler_core.workspace import Workspace

    exporters = _exporters(cp_pipeline)
    if not exporters:
        return
    for n in sorted(image_numbers):
        measurements.next_image_set(n)
        view = _ImageSetView(measurements, values, prepared, n)
        for module in exporters:
            module.run(Workspace(cp_pipeline, module, view, ObjectSet(), view, None))


def _copy_measurements(values: dict[tuple[str, str], dict[int, Any]],
                       relationships: bytes | None, measurements: Any) -> None:
    """Write a batch's values into the run's measurements (one write per feature), and
    its relationships as CellProfiler's analysis runner copies them."""
    from cellprofiler_core.utilities.measurement import load_measurements_from_buffer

    if relationships is not None:
        received = load_measurements_from_buffer(relationships)
        try:
            measurements.copy_relationships(received)
        finally:
            received.close()
    for (obj, feature), by_number in values.items():
        numbers = sorted(by_number)
        measurements[obj, feature, numbers] = [by_number[n] for n in numbers]


@contextlib.contextmanager
def _phase(report: RunReport, name: str, say: Callable[[str], None]) -> Iterator[None]:
    say(f"[run] {name}…")
    started = time.monotonic()
    try:
        yield
    finally:
        report.phases.append((name, time.monotonic() - started))


class _RunHandoff:
    """The run's private copy (0600) of the session hand-off, kept current: when the
    driver's session is renewed (the server ended it), the copy is rewritten with the new
    key, and workers whose session ended rejoin from it (``core.session`` re-reads a
    hand-off on renewal)."""

    def __init__(self, manager: SessionManager, path: Path) -> None:
        self.manager = manager
        self.path = path
        self.renewals = 0

    def write(self) -> dict[str, str]:
        env = self.manager.export_for_workers()  # rewrites the manager's own hand-off
        if not env:
            raise RunFailed("Not connected to OMERO; cannot hand the session to workers.",
                            hint="Log in first (`cellprofiler-omero login`).")
        payload = Path(env[HANDOFF_ENV]).read_text()
        # Written aside and renamed over the copy: a worker never reads half a file.
        part = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex[:8]}")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "w") as handle:
            handle.write(payload)
        os.replace(part, self.path)
        data = json.loads(payload)
        return {"CELLPROFILER_OMERO_SERVER_HOST": str(data["host"]),
                "CELLPROFILER_OMERO_SERVER_PORT": str(data["port"])}

    @hookimpl
    def omero_session_changed(self, old: Any, new: Any, reason: str) -> None:
        """A renewed driver session goes to the workers (runs on the loop thread)."""
        if new is not None and reason == "renew":
            self.renewals += 1
            try:
                self.write()
            except (OSError, OmeroError) as exc:
                log.warning("could not hand the renewed session to the workers: %s", exc)
            else:
                log.info("renewed session handed to the workers (%s)", self.path)


@contextlib.contextmanager
def _handoff(manager: SessionManager, folder: Path, check_seconds: float
             ) -> Iterator[tuple[str, dict[str, str]]]:
    """A private copy (0600) of the session hand-off in ``folder`` (the run's output, which
    cluster workers share), kept current and removed after the run; and the workers'
    environment. While it lasts, the driver checks its session every ``check_seconds``
    (a ping through ``SessionManager.call``, which renews an ended session)."""
    from cellprofiler_omero.core import runtime

    handoff = _RunHandoff(manager, folder / f".cellprofiler-omero-{uuid.uuid4().hex}.session")
    name = f"cellprofiler-omero-run-handoff-{uuid.uuid4().hex[:8]}"
    stop = threading.Event()

    def check() -> None:
        while not stop.wait(check_seconds):
            try:
                runtime.run(manager.call, _ping, None)
            except Exception as exc:  # the run's own calls report it; keep checking
                log.info("session check failed: %s", _first_line(exc))

    checker = threading.Thread(target=check, name=name, daemon=True)
    try:
        environment = handoff.write()
        manager.registry.register(handoff, name)
        checker.start()
        yield str(handoff.path), environment
    finally:
        stop.set()
        if checker.is_alive():
            checker.join(timeout=5)
        with contextlib.suppress(ValueError):
            manager.registry.pm.unregister(name=name)
        handoff.path.unlink(missing_ok=True)


async def _ping(conn: Any) -> None:
    await conn.ping()


def run_pipeline(pipeline: str | Path, urls: Sequence[str], manager: SessionManager, *,
                 workers: int | None = None, scheduler: str | None = None,
                 batch_size: int | None = None, output: str | Path | None = None,
                 max_failures: int | None = None, progress: bool | None = None,
                 say: Callable[[str], None] = log.info,
                 on_batch: Callable[[dict[str, Any]], None] | None = None,
                 client: Any = None, loaddata: str | Path | None = None,
                 session_check_seconds: float = SESSION_CHECK_SECONDS) -> RunReport:
    """Run ``pipeline`` over the image ``urls`` on a Dask cluster and return the report.

    ``manager`` must be connected (the workers join its session). Without ``scheduler``
    a ``LocalCluster`` of ``workers`` processes (default: the machine's cores) runs the
    batches and is stopped afterwards. ``max_failures`` stops the run (``TooManyFailures``)
    once more image sets than that have failed. CellProfiler's measurements of the run are
    written to ``output``/measurements.h5. Usable from a notebook, where ``client`` (a
    ``distributed.Client``) reuses a cluster already running; ``on_batch`` sees each
    batch's result as it arrives.

    ``loaddata``: a LoadData CSV (``cellprofiler-omero urls --loaddata``) that lists the
    image sets instead of ``urls`` (then empty); the pipeline's LoadData module reads a
    copy of it in ``output``, which the workers share. ``session_check_seconds``: how
    often the driver checks its session during the run, renewing it (and the workers'
    hand-off) when the server ended it.
    """
    from cellprofiler_omero.core import session as core_session

    report = RunReport(pipeline=str(pipeline), run_id=uuid.uuid4().hex[:12])
    pipeline_text = Path(pipeline).read_text()
    out_dir = Path(output) if output is not None else Path(tempfile.mkdtemp(
        prefix="cellprofiler-omero-run-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    core_session.set_manager(manager)  # the modules' prepare_run uses this session
    # The driver's thread writes CellProfiler's HDF5 measurements (prepare_run, the merge)
    # while Dask's client loop and the Ice loop run Python beside it: the same rule as
    # in a worker's batch (_garbage_collected_in_this_thread).
    with _garbage_collected_in_this_thread():
        with _phase(report, "prepare the image sets and tables", say):
            setup_cellprofiler(str(out_dir))
            if loaddata is not None:
                pipeline_text = _use_loaddata(pipeline_text, Path(loaddata), out_dir)
            measurements, workspace, cp_pipeline, batches = _prepare(
                pipeline_text, urls, out_dir, batch_size, workers)
        report.image_sets = len(measurements.get_image_numbers())
        report.batches = len(batches)
        report.output = str(out_dir / MEASUREMENTS_FILE)
        own_cluster = client is None and scheduler is None  # a LocalCluster started here
        try:
            with _handoff(manager, out_dir, session_check_seconds) as (handoff_file, environment), \
                    _cluster(scheduler, workers, client) as client:
                report.dashboard = _dashboard(client)
                if report.dashboard:
                    say(f"[run] Dask dashboard: {report.dashboard}")
                plugin = worker_plugin(report.run_id, pipeline_text,
                                       measurements.file_contents(), handoff_file, environment,
                                       ignore_interrupts=own_cluster)
                with _phase(report, "start the workers", say):
                    client.register_plugin(plugin, name=plugin.name)
                    report.workers = len(client.scheduler_info(n_workers=-1)["workers"])
                try:
                    with _phase(report, "run the image sets", say):
                        _run_batches(client, report, batches, measurements, cp_pipeline,
                                     max_failures, progress, on_batch)
                finally:
                    # The workers detach from the session (teardown) and forget the run.
                    with contextlib.suppress(Exception):
                        # Bounded: once in CI a worker never answered and the run hung here
                        # (Client.unregister_worker_plugin has no timeout of its own).
                        client.sync(client._unregister_worker_plugin, name=plugin.name,
                                    callback_timeout=UNREGISTER_TIMEOUT_SECONDS)
            with _phase(report, "finish the tables and measurements", say):
                cp_pipeline.post_run(workspace)
                report.tables = _tables(cp_pipeline)
                report.uploaded = _uploaded(measurements, cp_pipeline)
        finally:
            # Stopped or not, the rows of the image sets done so far go out (a rerun adds
            # the rest to the same tables) and what was merged stays readable in --output.
            if not report.tables:
                for module in _exporters(cp_pipeline):
                    with contextlib.suppress(Exception):
                        module.flush()
            measurements.flush()
            measurements.close()
    say(report.summary())
    return report


def _use_loaddata(pipeline_text: str, csv_file: Path, out_dir: Path) -> str:
    """The pipeline with its LoadData module reading a copy of ``csv_file`` in the run's
    output folder (the workers share it; LoadData reads its CSV on the workers too)."""
    import shutil

    from cellprofiler_core.modules.loaddata import LoadData
    from cellprofiler_core.preferences import ABSOLUTE_FOLDER_NAME

    cp_pipeline = load_pipeline(pipeline_text)
    loaders = [m for m in cp_pipeline.modules() if isinstance(m, LoadData) and m.enabled]
    if not loaders:
        raise RunFailed(
            f"{csv_file} is a LoadData CSV, but the pipeline has no LoadData module: it "
            "takes its images from NamesAndTypes.",
            hint="Give the images as OMERO references or a file list instead "
                 "(`cellprofiler-omero urls Plate:7 -o files.txt`), or use a pipeline "
                 "whose first module is LoadData.")
    if len(loaders) > 1:
        raise RunFailed(f"The pipeline has {len(loaders)} LoadData modules; a CSV target "
                        "feeds one.", hint="Keep one LoadData module in the pipeline.")
    copy = out_dir / f"loaddata-{csv_file.name}"
    if csv_file.resolve() != copy.resolve():
        shutil.copyfile(csv_file, copy)
    loaders[0].csv_directory.value = f"{ABSOLUTE_FOLDER_NAME}|{out_dir.resolve()}"
    loaders[0].csv_file_name.value = copy.name
    out = io.StringIO()
    cp_pipeline.dump(out)
    return out.getvalue()


def _prepare(pipeline_text: str, urls: Sequence[str], out_dir: Path, batch_size: int | None,
             workers: int | None) -> tuple[Any, Any, Any, list[Batch]]:
    from cellprofiler_core.image import ImageSetList
    from cellprofiler_core.measurement import Measurements
    from cellprofiler_core.workspace import Workspace

    cp_pipeline = load_pipeline(pipeline_text)
    if urls:  # none with a LoadData CSV: the module reads it in prepare_run
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
            handle.write("\n".join(urls) + "\n")
        try:
            cp_pipeline.read_file_list(handle.name)
        finally:
            Path(handle.name).unlink(missing_ok=True)
    target = out_dir / MEASUREMENTS_FILE
    target.unlink(missing_ok=True)
    measurements = Measurements(filename=str(target), mode="w")
    workspace = Workspace(cp_pipeline, None, None, None, measurements, ImageSetList())
    if not cp_pipeline.prepare_run(workspace):
        raise RunFailed("CellProfiler could not prepare the run (no image sets, or a "
                        "module's settings are not valid).",
                        hint="Open the pipeline in CellProfiler with these images and fix "
                             "what it reports.")
    numbers = list(measurements.get_image_numbers())
    if not numbers:
        raise RunFailed("The pipeline found no image sets among the images.",
                        hint="Check NamesAndTypes' rules against the images.")
    keys, groupings = cp_pipeline.get_groupings(workspace)
    grouped = bool(keys)
    groups = [list(g[1]) for g in groupings] if grouped else [[n] for n in numbers]
    size = batch_size or max(1, math.ceil(len(numbers) / (4 * max(1, workers or os.cpu_count()
                                                                  or 1))))
    return measurements, workspace, cp_pipeline, make_batches(groups, size, grouped=grouped)


@contextlib.contextmanager
def _cluster(scheduler: str | None, workers: int | None, client: Any = None
             ) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    if client is not None:  # someone else's cluster: used, not stopped
        yield client
        return
    if scheduler is not None:
        with Client(scheduler) as client:
            try:  # a cluster that is still starting (jobs queued) gets its first worker
                client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS_SECONDS)
            except TimeoutError:
                raise RunFailed(f"The Dask scheduler {scheduler} has no workers (none "
                                f"joined within {WAIT_FOR_WORKERS_SECONDS} s).",
                                hint="Start workers for it (e.g. cluster.scale(…) with "
                                     "dask-jobqueue), then run again.") from None
            yield client
        return
    n = workers or os.cpu_count() or 1
    # One thread per worker process: CellProfiler runs one image set at a time per process.
    # The worker processes start with Ctrl-C ignored (a disposition they inherit): the
    # terminal sends it to the whole process group, and the driver stops them itself.
    with _interrupts_ignored():
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=":0")
    with cluster, Client(cluster) as client:
        client.wait_for_workers(n)
        try:
            yield client
        except KeyboardInterrupt:
            # The user stopped the run: the scheduler's own shutdown noise (e.g. a
            # CommClosedError traceback from a worker it is closing) is not theirs to read.
            logging.getLogger("distributed").setLevel(logging.CRITICAL)
            raise


#: How long the end of a run waits for the workers to forget its plugin.
UNREGISTER_TIMEOUT_SECONDS = 60


@contextlib.contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """SIGINT ignored while this lasts (only the main thread may change it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _dashboard(client: Any) -> str | None:
    try:
        link = client.dashboard_link
    except Exception:  # no dashboard (bokeh not installed): not an error
        return None
    return str(link) if link else None


def _run_batches(client: Any, report: RunReport, batches: list[Batch], measurements: Any,
                 cp_pipeline: Any, max_failures: int | None, progress: bool | None,
                 on_batch: Callable[[dict[str, Any]], None] | None) -> None:
    from distributed import as_completed
    from tqdm import tqdm

    # The Image values prepare_run wrote (metadata, URLs …), read once for every image
    # set: the rows of each image set read them from memory.
    numbers = list(measurements.get_image_numbers())
    prepared = {feature: dict(zip(numbers, measurements["Image", feature, numbers],
                                  strict=True))
                for feature in measurements.get_feature_names("Image")}
    futures = [client.submit(run_batch, report.run_id, batch.image_numbers, batch.grouped,
                             key=f"cellprofiler-batch-{report.run_id}-{batch.number}",
                             pure=False)
               for batch in batches]
    pending: dict[tuple[str, str], dict[int, Any]] = {}
    pending_sets = 0
    generation = 1  # of the collection after the next result (2: a full one)
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=report.image_sets, unit="image set", desc="image sets", disable=not show,
               file=sys.stderr, dynamic_ncols=True)
    try:
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as exc:
                raise RunFailed(f"A batch failed as a whole: {_first_line(exc)}",
                                hint="See the workers' logs.") from exc
            _write_rows(cp_pipeline, measurements, result["done"], result["values"], prepared)
            # Merged into the HDF5 file every MERGE_EVERY image sets: its cost is per
            # feature written, so fewer, larger writes (measured: most of the driver's CPU).
            _copy_measurements({}, result["relationships"], measurements)
            for key, by_number in result["values"].items():
                pending.setdefault(key, {}).update(by_number)
            pending_sets += len(result["done"])
            if pending_sets >= MERGE_EVERY:
                _copy_measurements(pending, None, measurements)
                pending, pending_sets = {}, 0
                # The old generation too, now and then: automatic collection is off for
                # the whole run, which may last hours.
                generation = 2
            for n in result["image_numbers"]:
                report.ran_on[int(n)] = result["where"]
            report.done += len(result["done"])
            report.failures += [Failure(**f) for f in result["failures"]]
            gc.collect(generation)  # here, not on another thread
            generation = 1  # (_garbage_collected_in_this_thread)
            bar.update(len(result["image_numbers"]))
            bar.set_postfix(failed=len(report.failures))
            if on_batch is not None:
                on_batch(result)
            if max_failures is not None and len(report.failures) > max_failures:
                first = report.failures[0]
                raise TooManyFailures(
                    f"{len(report.failures)} image set(s) failed, more than --max-failures "
                    f"{max_failures}; the run was stopped (first: image set "
                    f"{first.image_number} in {first.module}: {first.error}).",
                    failed=len(report.failures), limit=max_failures,
                    hint="Fix the failing images, or raise --max-failures; rerunning "
                         "continues the same tables.")
    finally:
        bar.close()
        client.cancel([f for f in futures if not f.done()])
        _copy_measurements(pending, None, measurements)  # stopped or not: what is done


def _tables(cp_pipeline: Any) -> list[tuple[str, int, int]]:
    from cellprofiler_omero.cp_integration.export_table import ExportToOMEROTable

    found: list[tuple[str, int, int]] = []
    for module in cp_pipeline.modules():
        if isinstance(module, ExportToOMEROTable):
            found += list(getattr(module, "_summary", []))
    return found


def _uploaded(measurements: Any, cp_pipeline: Any) -> int:
    from cellprofiler_omero.cp_integration.save_images import SaveImagesToOMERO

    count = 0
    numbers = measurements.get_image_numbers()
    for module in cp_pipeline.modules():
        if isinstance(module, SaveImagesToOMERO) and measurements.has_feature(
                "Image", module.id_feature):
            values = measurements["Image", module.id_feature, numbers]
            count += sum(1 for v in values if v is not None and not (
                isinstance(v, float) and math.isnan(v)) and int(v) > 0)
    return count
