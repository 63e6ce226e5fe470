"""``cellprofiler-omero demo``: a real CellProfiler pipeline against a local OMERO.

1. starts an emulator with the demo data (a temporary folder, or ``--data DIR``);
2. logs in as ``demo`` and hands the session to CellProfiler through a private file;
3. writes the pipeline and a file list of OMERO.web image links;
4. runs CellProfiler headless (``python -m cellprofiler -c -r …``) with this
   package's plugins: read from OMERO → find nuclei → measure → save the nuclei
   label images to OMERO → save the nuclei as ROIs on their source images → export
   the measurements as OMERO.tables (with a Roi column);
5. prints what happened: image sets, objects (and the ground truth), images
   uploaded, ROIs saved, table rows, where to find them, and how long each phase took.

The counts come from the observer hooks (``omero_image_uploaded``,
``omero_table_written``, ``omero_rois_saved``), which the CellProfiler processes
record in an events file (``cp_integration.events``); CellProfiler's log is kept for
people, never parsed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cellprofiler_omero.core import refs, runtime
from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.errors import OmeroError
from cellprofiler_omero.core.refs import Kind, ObjectRef
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.cp_integration import plugins_dir
from cellprofiler_omero.cp_integration.events import (
    EVENTS_ENV,
    ImageEvent,
    RoiEvent,
    TableEvent,
    read_events,
)
from cellprofiler_omero.cp_integration.pipelines import nuclei_pipeline

if TYPE_CHECKING:
    from cellprofiler_omero.emulator import Emulator

log = logging.getLogger(__name__)

#: The ExportToOMEROTable prefix of ``nuclei_pipeline``: its tables are
#: ``CellProfiler_<label>_run-<key>``.
_TABLE_PREFIX = "CellProfiler_"


@dataclass
class DemoReport:
    """What the demo did, for the summary (and for tests)."""

    data_dir: Path = Path()
    output_dir: Path = Path()
    server: str = ""
    dataset_id: int = 0
    image_sets: int = 0
    objects: int = 0
    ground_truth: int = 0
    uploaded: list[tuple[int, str]] = field(default_factory=list)
    tables: list[tuple[str, int, int]] = field(default_factory=list)
    #: ROIs on each source image (image id → ROIs), from ``omero_rois_saved``.
    rois: dict[int, int] = field(default_factory=dict)
    phases: list[tuple[str, float]] = field(default_factory=list)
    exit_code: int = 0
    kept_running: bool = False

    def summary(self) -> str:
        lines = [
            "",
            "cellprofiler-omero demo: finished" if self.exit_code == 0
            else f"cellprofiler-omero demo: CellProfiler exited with {self.exit_code}",
            f"  image sets processed : {self.image_sets}",
            f"  nuclei found         : {self.objects} (ground truth in the images: "
            f"{self.ground_truth})",
            f"  images uploaded      : {len(self.uploaded)} label images into Dataset "
            f"{self.dataset_id}",
            f"  ROIs saved           : {sum(self.rois.values())} nuclei as Mask ROIs on "
            f"{len(self.rois)} source images (one per nucleus; open them in OMERO.iviewer)",
        ]
        for name, file_id, rows in self.tables:
            lines.append(f"  table rows written   : {rows:6d} in {name} (OriginalFile {file_id})")
        lines += [
            "  where to find them   :",
            f"    server  {self.server} (users demo/demo), Dataset {self.dataset_id}"
            + ("" if self.kept_running else " — stopped now; rerun with --keep-running "
               "(and --data DIR to keep its data) to explore it"),
            f"    browse  cellprofiler-omero ls Dataset:{self.dataset_id} --server "
            f"{self.server.split(':')[0]} --port {self.server.split(':')[-1]}",
            f"    files   {self.output_dir} (pipeline, file list, CellProfiler log)",
            "  time per phase       : " + ", ".join(f"{n} {s:.1f} s" for n, s in self.phases),
        ]
        return "\n".join(lines)


#: What ``run_demo(then=…)`` calls after a successful run: (report, emulator, folder).
AfterDemo = Callable[["DemoReport", "Emulator", Path], None]


@contextmanager
def _phase(report: DemoReport, name: str, say: Callable[[str], None]) -> Iterator[None]:
    say(f"[demo] {name}…")
    started = time.monotonic()
    yield
    report.phases.append((name, time.monotonic() - started))


def run_demo(data_dir: Path | None = None, output_dir: Path | None = None, *,
             fields: int = 8, field_size: int = 1024, large_size: int = 8192,
             keep_running: bool = False, progress: bool | None = None,
             then: AfterDemo | None = None,
             say: Callable[[str], None] = log.info) -> DemoReport:
    """Run the whole demo and return its report (raises ``OmeroError`` on failure).

    ``say`` receives the progress lines and the summary (the CLI prints them). ``then``:
    called with the report, the still-running emulator and a folder for its own files
    once the run has succeeded (``cellprofiler-omero demo --web`` serves OMERO.web there
    until Ctrl-C); it implies ``keep_running``.
    """
    from cellprofiler_omero.emulator import Emulator, SeedOptions

    report = DemoReport()
    tmp = tempfile.TemporaryDirectory(prefix="cellprofiler-omero-demo-")
    base = Path(tmp.name)
    report.data_dir = data_dir or base / "server"
    report.output_dir = output_dir or Path("demo-output").resolve()
    keep_running = keep_running or then is not None
    report.kept_running = keep_running
    report.output_dir.mkdir(parents=True, exist_ok=True)
    emulator = Emulator(report.data_dir, seed="demo",
                        seed_options=SeedOptions(fields=fields, field_size=field_size,
                                                 large_size=large_size))
    try:
        with _phase(report, "start the OMERO emulator (demo data)", say):
            emulator.start()
        report.server = f"{emulator.host}:{emulator.port}"
        seeded = emulator.seeded
        report.dataset_id = int(seeded["dataset"])
        settings = Settings().replace({"server.host": emulator.host,
                                       "server.port": emulator.port,
                                       "auth.use_token": False})
        manager = SessionManager(settings)
        with _phase(report, "log in as demo", say):
            runtime.run(lambda: manager.connect(user="demo", password="demo"))
            handoff = manager.export_for_workers()
        with _phase(report, "write the pipeline and the file list", say):
            urls, truth = _file_list(manager, report.dataset_id)
            report.ground_truth = truth
            pipeline = report.output_dir / "demo.cppipe"
            pipeline.write_text(nuclei_pipeline(report.dataset_id, save_rois=True))
            file_list = report.output_dir / "files.txt"
            file_list.write_text("\n".join(urls) + "\n")
        with _phase(report, "run CellProfiler headless", say):
            env = {**os.environ, **handoff,
                   "CELLPROFILER_OMERO_SERVER_HOST": emulator.host,
                   "CELLPROFILER_OMERO_SERVER_PORT": str(emulator.port)}
            report.exit_code = run_cellprofiler(pipeline, file_list, report.output_dir, env,
                                                total=len(urls), report=report,
                                                progress=progress)
        runtime.run(manager.close)
        if report.exit_code != 0:
            raise OmeroError(f"CellProfiler failed (exit {report.exit_code}).",
                             hint=f"See {report.output_dir / 'cellprofiler.log'}.")
        say(report.summary())
        if then is not None:
            then(report, emulator, base if data_dir is None else data_dir.parent)
        elif keep_running:
            say(f"\nThe emulator keeps running on {report.server} (data in "
                f"{report.data_dir}); press Ctrl-C to stop it.")
            try:
                while emulator.process is not None and emulator.process.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return report
    finally:
        emulator.stop()
        if data_dir is None and not keep_running:
            tmp.cleanup()


def _file_list(manager: SessionManager, dataset_id: int) -> tuple[list[str], int]:
    async def collect() -> tuple[list[str], int]:
        conn = await manager.connection()
        images = await conn.images_in(ObjectRef(Kind.DATASET, dataset_id))
        host = conn.info.server.host
        urls, truth = [], 0
        for image in images:
            meta = await conn.image_meta(image.id)
            # The demo data's description starts with its count ("12 nuclei (ground
            # truth)"): data the emulator seeded, not a message.
            first = (meta.description or "").split(" ", 1)[0]
            truth += int(first) if first.isdigit() else 0
            urls.append(refs.web_url(ObjectRef(Kind.IMAGE, image.id, host)))
        return urls, truth

    return runtime.run(collect)


def run_cellprofiler(pipeline: Path, file_list: Path, output: Path, env: dict[str, str], *,
                     total: int, report: DemoReport, progress: bool | None = None,
                     on_line: Callable[[str], None] | None = None) -> int:
    """Run CellProfiler headless with this package's plugins and fill ``report`` from the
    run's events (``cp_integration.events``): one label image saved per image set moves
    the progress bar; the tables' rows give the image sets and the objects."""
    from tqdm import tqdm

    events_file = output / "events.jsonl"
    events_file.write_text("")  # this run's events only
    command = [sys.executable, "-m", "cellprofiler", "-c", "-r", "-p", str(pipeline),
               "--file-list", str(file_list), "-o", str(output), "--plugins-directory",
               str(plugins_dir()), "-L", "INFO"]
    bar = tqdm(total=total, unit="image set", desc="CellProfiler",
               disable=not (sys.stderr.isatty() if progress is None else progress))
    images: dict[int, ImageEvent] = {}
    tables: dict[int, TableEvent] = {}
    rois: dict[int, RoiEvent] = {}
    offset = 0

    def take_events() -> None:
        nonlocal offset
        events, offset = read_events(events_file, offset)
        for event in events:
            if isinstance(event, ImageEvent):
                if event.image_id not in images:
                    bar.update(1)
                images[event.image_id] = event
            elif isinstance(event, RoiEvent):
                rois[event.image_id] = event
            else:
                latest = tables.get(event.file_id)
                if latest is None or event.rows >= latest.rows:
                    tables[event.file_id] = event

    with (output / "cellprofiler.log").open("w") as log_file:
        process = subprocess.Popen(command, env={**env, EVENTS_ENV: str(events_file)},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        assert process.stdout is not None
        for line in process.stdout:
            log_file.write(line)
            if on_line is not None:
                on_line(line)
            take_events()
        code = process.wait()
    take_events()
    bar.close()
    report.uploaded = [(event.image_id, event.name) for event in images.values()]
    report.tables = [(event.name, file_id, event.rows) for file_id, event in tables.items()]
    report.rois = {image_id: event.rois for image_id, event in rois.items()}
    report.image_sets = _rows_of(report.tables, "Image") or len(images)
    report.objects = _rows_of(report.tables, "Nuclei")
    return code


def _rows_of(tables: list[tuple[str, int, int]], label: str) -> int:
    """Rows of the demo's table for ``label`` (``Image``: one row per image set)."""
    name = f"{_TABLE_PREFIX}{label}_run-"
    return sum(rows for table, _, rows in tables if table.startswith(name))


def report_json(report: DemoReport) -> str:
    """The report as JSON (for scripts)."""
    data: dict[str, Any] = {k: (str(v) if isinstance(v, Path) else v)
                            for k, v in report.__dict__.items()}
    return json.dumps(data, indent=2)
