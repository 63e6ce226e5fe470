"""Pipelines end to end, from OMERO and from local TIFFs, saving to OMERO and to disk.

Three comparisons, each between runs that differ in one thing only:

* **I/O-significant** (the one that says whether the network is hidden): 4 channels ×
  2048² uint16 per image set, light measurement (``MeasureImageIntensity`` of every
  channel) and one channel saved to local disk with CellProfiler's ``SaveImages``; from
  OMERO vs from local TIFFs (``io``, image sets per second).
* **saving**: the same pipeline from OMERO, saving with ``SaveImagesToOMERO`` vs
  ``SaveImages`` to local disk (``save``). The figure is the time from CellProfiler
  preparing the run to the end of the process, because ``SaveImagesToOMERO`` uploads
  behind the pipeline and the run ends only once those uploads are complete.
* **compute-bound** (the demo pipeline, below; the top-level figures): 2 channels ×
  1024², nuclei found and measured.

The compute-bound runs use one pipeline text — ``cp_integration.pipelines.nuclei_pipeline`` without
SaveImages/Export, so nothing but the source of the pixels differs: Images (planes
extracted) → NamesAndTypes (C0 = DNA, C1 = Cyto) → IdentifyPrimaryObjects →
MeasureObjectSizeShape → MeasureObjectIntensity. CellProfiler runs headless in a
subprocess, as ``cellprofiler-omero demo`` runs it, with this package's plugins.

* **OMERO**: a file list of OMERO.web image links, read by this package's reader
  over Ice (the session is handed to CellProfiler through the private hand-off file).
* **local**: the same pixels written beforehand as one 2-channel TIFF per image set
  (``tifffile``, ``(Y, X, C)`` contiguous samples) and listed by plain file path.
  CellProfiler's ImageIO reader reads them and "Extract image planes" splits the two
  channels into ``C`` 0 and 1, so the same NamesAndTypes rules pick DNA and Cyto.
  Bio-Formats is switched off for this run (``--enable-readers imageio_reader``): it
  needs Java, and would otherwise claim TIFFs before ImageIO does.

Image sets per second are counted over the processing window, from CellProfiler
preparing the file list (plane extraction included) to the last module of the last
image set, so interpreter start-up — the same for both — does not dilute the ratio.
Start-up and whole-run times are recorded too.

**What bounds the I/O-significant ratio over a slow network.** Every image set after
the first is read while the one before is processed (at ``wan``, 4 × 2048² uint16 =
33.5 MB is 1.34 s on a 200 Mbit/s wire against ~1.6 s of processing per image set), and
the first image set's reads start as soon as NamesAndTypes has made the image sets
(``reader.start_first_image_set``) — but inside the window nothing is there for them to
overlap: CellProfiler runs the first image set a few milliseconds later and waits for
its pixels. So the OMERO window is at least the local one plus the first image set's
time on the wire (less the local first read from disk): with 8 image sets and 12.7 s
locally, at most 12.7 / (12.7 + 1.34) ≈ 0.90× at ``wan``, whatever the reader does;
0.95× would take a local window of ≥ 25 s (16 such image sets). At ``campus`` the wire
time is 0.27 s and the ratio is ~1.0×. A real server's wire is the same floor (TCP's
slow start over a long path, not modelled here, only adds to it).

**Start-up** (process start to the window) of an OMERO run adds joining the session
that was handed over: importing omero-py and Ice (~0.6 s of CPU) and ~25 round trips
(two Glacier2 sessions, the secure router's then the plain one's, plus the service
look-ups), ~0.5 s at ``wan``; the metadata of the whole file list is one batch of
queries (``tests/test_reader_startup.py`` pins it: no call per image). The join starts
in the background as CellProfiler loads this package's reader plugin
(``session.connect_early``), which it does only ~0.1–0.2 s before it reads the file list
(``import cellprofiler_core.modules`` imports every module, ~1.2 s, then the plugins;
``Pipeline.load`` is the first to import it). With the join the plugin starts reading the
file list's first image (``reader.warm_first_image``): its metadata batch, then z=0, t=0
of every channel. But the window opens only once that metadata is in (preparing the run
waits for it), so the warm's reads start at the window's start, ~0.1 s before
``start_first_image_set`` would start them with 8 images (measured at ``wan``: set 1's
4 planes in 1.46–1.47 s after the window opens, the wire's 1.34 s plus round trips).
The warm gains what CellProfiler's preparation costs after the metadata (more with a
long file list); hiding the first image set would take starting the join ≥ 2.8 s
before preparing the run (1.2 s join + 0.15 s metadata + 1.47 s pixels), i.e. before
CellProfiler's own imports, which no plugin hook allows.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellprofiler_omero.benchmarks.report import ratio
from cellprofiler_omero.benchmarks.target import Target
from cellprofiler_omero.core import refs, runtime
from cellprofiler_omero.core.reading import ImageReader
from cellprofiler_omero.core.refs import Kind, ObjectRef
from cellprofiler_omero.core.uploading import upload

_IMAGE_LINE = re.compile(r"Image # (\d+), module (\w+) # (\d+)")
#: Lines CellProfiler logs when it starts preparing the run (the first one seen counts).
_START_MARKERS = ("filter_file_list", "Times reported")


@dataclass(frozen=True)
class E2EWorkload:
    """How many demo fields (2 channels, ``size``² uint16) the compute-bound pipeline
    processes (``compute_bound=False``: not run), and the I/O-significant image sets
    (``io_channels`` × ``io_size``² uint16) of the I/O and saving pipelines."""

    image_sets: int = 12
    size: int = 1024
    compute_bound: bool = True
    io_image_sets: int = 8
    io_channels: int = 4
    io_size: int = 2048


@dataclass
class PipelineRun:
    """When CellProfiler's lines arrived, and what they said."""

    exit_code: int = 0
    wall_s: float = 0.0
    window_start_s: float | None = None
    window_end_s: float | None = None
    #: When the first image set finished (its read overlaps nothing: see the bound above).
    first_done_s: float | None = None
    completed: set[int] = field(default_factory=set)
    log_tail: list[str] = field(default_factory=list)

    @property
    def window_s(self) -> float | None:
        if self.window_start_s is None or self.window_end_s is None:
            return None
        return self.window_end_s - self.window_start_s

    def to_json(self) -> dict[str, Any]:
        window = self.window_s
        start = self.window_start_s
        return {"exit_code": self.exit_code, "image_sets": len(self.completed),
                "wall_s": self.wall_s, "startup_s": start,
                "window_s": window,
                # From preparing the run to the process's end: post_run included (where
                # uploads behind the pipeline are waited for).
                "to_end_s": self.wall_s - start if start is not None else None,
                "sets_per_s": len(self.completed) / window if window else None,
                "first_set_s": (self.first_done_s - start
                                if start is not None and self.first_done_s is not None
                                else None),
                "steady_sets_per_s": self.steady_sets_per_s()}

    def steady_sets_per_s(self) -> float | None:
        """Image sets per second after the first one finished (None with < 2 sets)."""
        if (self.first_done_s is None or self.window_end_s is None
                or len(self.completed) < 2 or self.window_end_s <= self.first_done_s):
            return None
        return (len(self.completed) - 1) / (self.window_end_s - self.first_done_s)


def last_module(pipeline_text: str) -> int:
    """The number of the pipeline's last module (an image set is done when it logs)."""
    numbers = [int(n) for n in re.findall(r"module_num:(\d+)", pipeline_text)]
    return max(numbers) if numbers else 0


def follow(lines: Any, started: float, final_module: int, run: PipelineRun,
           log_file: Any = None, clock: Any = time.perf_counter) -> None:
    """Timestamp CellProfiler's output line by line (window start, finished sets)."""
    for line in lines:
        now = clock() - started
        if log_file is not None:
            log_file.write(line)
        run.log_tail = [*run.log_tail[-39:], line.rstrip()]
        if run.window_start_s is None and any(m in line for m in _START_MARKERS):
            run.window_start_s = now
        match = _IMAGE_LINE.search(line)
        if match:
            if run.window_start_s is None:
                run.window_start_s = now
            if int(match.group(3)) == final_module:
                run.completed.add(int(match.group(1)))
                run.window_end_s = now
                if run.first_done_s is None:
                    run.first_done_s = now


def run_cellprofiler(pipeline: Path, file_list: Path, output: Path, env: dict[str, str],
                     extra_args: tuple[str, ...] = ()) -> PipelineRun:
    """CellProfiler headless with this package's plugins; its timing (log in ``output``)."""
    from cellprofiler_omero.cp_integration import plugins_dir

    command = [sys.executable, "-m", "cellprofiler", "-c", "-r", "-p", str(pipeline),
               "--file-list", str(file_list), "-o", str(output), "--plugins-directory",
               str(plugins_dir()), "-L", "INFO", *extra_args]
    output.mkdir(parents=True, exist_ok=True)
    run = PipelineRun()
    started = time.perf_counter()
    with (output / "cellprofiler.log").open("w") as log_file:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert process.stdout is not None
        follow(process.stdout, started, last_module(pipeline.read_text()), run, log_file)
        run.exit_code = process.wait()
    run.wall_s = time.perf_counter() - started
    return run


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any of the user's own cellprofiler-omero settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELLPROFILER_OMERO_")}
    env["CELLPROFILER_OMERO_CONFIG"] = os.devnull  # no settings file either
    env.update(extra)
    return env


def write_tiffs(target: Target, image_ids: list[int], folder: Path) -> list[Path]:
    """Each image's pixels (read once over Ice) as a ``(Y, X, C)`` TIFF; the paths."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with target.session() as manager:
        for number, image_id in enumerate(image_ids, 1):
            reader = ImageReader(manager, ObjectRef(Kind.IMAGE, image_id))
            try:
                data = runtime.run(lambda r=reader: r.read(c=None))  # (1, C, Y, X)
            finally:
                runtime.run(reader.aclose)
            path = folder / f"field_{number:03d}.tif"
            tifffile.imwrite(path, np.moveaxis(data[0], 0, -1), photometric="minisblack",
                             planarconfig="contig")
            paths.append(path)
    return paths


LOCAL_DISK = "SaveImages to local disk"
TO_OMERO = "SaveImagesToOMERO"
IO_PIPELINE = ("Images (planes extracted) → NamesAndTypes (C0–C3 = Ch0–Ch3) → "
               "MeasureImageIntensity (Ch0–Ch3) → {save} (Ch0, 16-bit, sequential names)")


def io_pipeline(channels: int, save: str) -> str:
    """The I/O-significant pipeline (see the module docstring) as ``.cppipe`` text;
    ``save`` is ``LOCAL_DISK`` or ``TO_OMERO``. Each text is new (its image names carry
    a fresh token), so SaveImagesToOMERO's exactly-once key never finds an earlier
    run's images and every run really uploads."""
    import cellprofiler_core.preferences as preferences

    preferences.set_headless()  # before any module import: they read the preferences
    # mysqlclient is deliberately not installed; keep CellProfiler's import-time warning
    # about it (cellprofiler.modules imports ExportToDatabase) out of the output.
    logging.getLogger("cellprofiler.modules.exporttodatabase").setLevel(logging.ERROR)
    import cellprofiler_core.modules.namesandtypes as nt_module
    from cellprofiler.modules import saveimages
    from cellprofiler.modules.measureimageintensity import MeasureImageIntensity
    from cellprofiler_core.modules.groups import Groups
    from cellprofiler_core.modules.images import Images
    from cellprofiler_core.modules.metadata import Metadata
    from cellprofiler_core.modules.namesandtypes import NamesAndTypes
    from cellprofiler_core.pipeline import Pipeline

    from cellprofiler_omero.cp_integration import save_images as to_omero

    pipeline = Pipeline()
    modules: list[Any] = []

    def add(cls: Any) -> Any:
        module = cls()
        module.set_module_num(len(modules) + 1)
        pipeline.add_module(module)
        modules.append(module)
        return module

    images = add(Images)
    images.filter_choice.value = "No filtering"
    images.want_split.value = True  # one plane per channel: NamesAndTypes picks them by C
    add(Metadata)
    names = add(NamesAndTypes)
    names.assignment_method.value = nt_module.ASSIGN_RULES
    for _ in range(channels - 1):
        names.add_assignment()
    for channel, assignment in enumerate(names.assignments):
        assignment.rule_filter.value = f'and (metadata does C "{channel}")'
        assignment.image_name.value = f"Ch{channel}"
    names.matching_choice.value = nt_module.MATCH_BY_ORDER
    add(Groups)
    measure = add(MeasureImageIntensity)
    measure.images_list.value = ", ".join(f"Ch{c}" for c in range(channels))
    token = f"bench_{uuid.uuid4().hex[:8]}"
    if save == LOCAL_DISK:
        module = add(saveimages.SaveImages)
        module.save_image_or_figure.value = saveimages.IF_IMAGE
        module.image_name.value = "Ch0"
        module.file_name_method.value = saveimages.FN_SEQUENTIAL
        module.single_file_name.value = token
        module.file_format.value = saveimages.FF_TIFF
        module.bit_depth.value = saveimages.BIT_DEPTH_16
        module.overwrite.value = True
        # Uncompressed, as SaveImagesToOMERO sends the pixels (and CellProfiler's
        # compression argument is refused by the tifffile this environment has).
        module.tiff_compress.value = False
    elif save == TO_OMERO:
        module = add(to_omero.SaveImagesToOMERO)
        module.save_what.value = to_omero.SAVE_IMAGE
        module.image_name.value = "Ch0"
        module.bit_depth.value = to_omero.BIT_DEPTH_16
        module.name_method.value = to_omero.FN_SEQUENTIAL
        module.single_name.value = token
        module.wants_dataset.value = False
    else:
        raise ValueError(f"unknown way to save: {save!r}")
    out = io.StringIO()
    pipeline.dump(out)
    return out.getvalue()


#: Images uploaded for the I/O pipelines, by emulator and shape: uploaded once per run of
#: the harness, read under every network profile.
_io_images: dict[tuple[int, int, int, int], list[int]] = {}


def io_images(target: Target, workload: E2EWorkload) -> list[int]:
    """``io_image_sets`` images of ``io_channels`` × ``io_size``² uint16 (random pixels,
    so nothing compresses them away); their ids."""
    key = (id(target), workload.io_image_sets, workload.io_channels, workload.io_size)
    if key not in _io_images:
        rng = np.random.default_rng(17)
        ids = []
        with target.session() as manager:
            for number in range(workload.io_image_sets):
                pixels = rng.integers(0, 4096, (workload.io_channels, workload.io_size,
                                                workload.io_size), dtype=np.uint16)
                made = runtime.run(lambda p=pixels, n=number: upload(
                    manager, p, name=f"bench_e2e_io_{n + 1:03d}", axes="CYX"))
                ids.append(made.id)
        _io_images[key] = ids
    return list(_io_images[key])


#: TIFFs written for the local runs, by emulator and images: written once per harness run
#: (in a folder removed at exit), used under every network profile.
_tiffs: dict[tuple[int, tuple[int, ...]], list[Path]] = {}
_tiff_root: list[Path] = []


def cached_tiffs(target: Target, ids: list[int]) -> list[Path]:
    """``write_tiffs`` once per target and images."""
    key = (id(target), tuple(ids))
    if key not in _tiffs:
        if not _tiff_root:
            import atexit
            import shutil

            _tiff_root.append(Path(tempfile.mkdtemp(prefix="cpo-bench-tiffs-")))
            atexit.register(shutil.rmtree, _tiff_root[0], ignore_errors=True)
        _tiffs[key] = write_tiffs(target, ids, _tiff_root[0] / f"set-{len(_tiffs)}")
    return list(_tiffs[key])


def _lists(target: Target, ids: list[int], base: Path, name: str) -> tuple[Path, Path]:
    """A file list of local TIFFs (written on first use) and one of OMERO.web links."""
    tiffs = cached_tiffs(target, ids)
    local_list = base / f"{name}-local.txt"
    local_list.write_text("\n".join(str(p) for p in tiffs) + "\n")
    omero_list = base / f"{name}-omero.txt"
    omero_list.write_text("\n".join(refs.web_url(ObjectRef(Kind.IMAGE, i, target.host))
                                    for i in ids) + "\n")
    return local_list, omero_list


def _problems(runs: dict[str, PipelineRun], expected: int) -> list[str]:
    return [f"{name}: CellProfiler exited with {r.exit_code} after {len(r.completed)} of "
            f"{expected} image sets; last lines:\n  " + "\n  ".join(r.log_tail[-12:])
            for name, r in runs.items()
            if r.exit_code != 0 or len(r.completed) != expected]


def run(target: Target, image_ids: list[int], workload: E2EWorkload) -> dict[str, Any]:
    """Every pipeline run; the end-to-end section of the results."""
    if importlib.util.find_spec("cellprofiler") is None:
        return {"status": "skipped",
                "reason": "CellProfiler is not installed (pip install "
                          "'cellprofiler-omero[cellprofiler]' and cellprofiler-nightly)"}
    from cellprofiler_omero.cp_integration.pipelines import nuclei_pipeline

    ids = list(image_ids[:workload.image_sets])
    io_ids = io_images(target, workload)
    local_args = ("--enable-readers", "imageio_reader")
    runs: dict[str, PipelineRun] = {}
    with tempfile.TemporaryDirectory(prefix="cpo-bench-e2e-") as tmp, \
            target.session() as manager:
        base = Path(tmp)
        handoff = manager.export_for_workers()
        env = clean_env({**handoff, "CELLPROFILER_OMERO_SERVER_HOST": target.host,
                         "CELLPROFILER_OMERO_SERVER_PORT": str(target.port),
                         "CELLPROFILER_OMERO_TRANSPORTS_READ": "ice",
                         "CELLPROFILER_OMERO_AUTH_USE_TOKEN": "0"})
        io_local, io_omero = _lists(target, io_ids, base, "io")
        to_disk, to_omero = base / "io-disk.cppipe", base / "io-omero.cppipe"
        to_disk.write_text(io_pipeline(workload.io_channels, LOCAL_DISK))
        to_omero.write_text(io_pipeline(workload.io_channels, TO_OMERO))
        # The same pipeline from local files and from OMERO (both save to local disk),
        # then from OMERO saving to OMERO.
        runs["io local"] = run_cellprofiler(to_disk, io_local, base / "out-io-local",
                                            clean_env({}), local_args)
        runs["io omero"] = run_cellprofiler(to_disk, io_omero, base / "out-io-omero", env)
        runs["save omero"] = run_cellprofiler(to_omero, io_omero, base / "out-save", env)
        problems = _problems(runs, len(io_ids))
        if workload.compute_bound:
            pipeline = base / "nuclei.cppipe"
            pipeline.write_text(nuclei_pipeline(None, save_labels=False, export_tables=False))
            local_list, omero_list = _lists(target, ids, base, "nuclei")
            compute = {"local": run_cellprofiler(pipeline, local_list, base / "out-local",
                                                 clean_env({}), local_args),
                       "omero": run_cellprofiler(pipeline, omero_list, base / "out-omero",
                                                 env)}
            runs.update(compute)
            problems += _problems(compute, len(ids))
    if problems:
        return {"status": "error", "error": "\n".join(problems)}
    figures = {name: r.to_json() for name, r in runs.items()}
    io_local_json, io_omero_json = figures["io local"], figures["io omero"]
    save_json = figures["save omero"]
    result: dict[str, Any] = {
        "status": "ok", "workload": asdict(workload), "image_sets": len(io_ids),
        "io": {"channels": workload.io_channels, "size": workload.io_size,
               "image_ids": io_ids, "pipeline": IO_PIPELINE.format(save=LOCAL_DISK),
               "local": io_local_json, "omero": io_omero_json,
               "ratio": ratio(io_omero_json["sets_per_s"], io_local_json["sets_per_s"]),
               # No goal: shows what is left once the first set's read is behind.
               "steady_ratio": ratio(io_omero_json["steady_sets_per_s"],
                                     io_local_json["steady_sets_per_s"])},
        # Time, OMERO over local disk (≤ 1 is as fast): both read from OMERO.
        "save": {"channels": workload.io_channels, "size": workload.io_size,
                 "pipeline": IO_PIPELINE.format(save="SaveImagesToOMERO / SaveImages"),
                 "local_disk": io_omero_json, "omero": save_json,
                 "ratio": ratio(save_json["to_end_s"], io_omero_json["to_end_s"])},
    }
    if workload.compute_bound:
        local_json, omero_json = figures["local"], figures["omero"]
        result.update({
            "channels": 2, "size": workload.size, "image_ids": ids,
            "compute_image_sets": len(ids),
            "pipeline": "nuclei_pipeline(save_labels=False, export_tables=False)",
            "local": local_json, "omero": omero_json,
            "ratio": ratio(omero_json["sets_per_s"], local_json["sets_per_s"])})
    return result
