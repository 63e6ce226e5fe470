"""The demo pipeline end to end: images from OMERO vs the same images from local TIFFs.

Both runs use one pipeline text — ``cp_integration.pipelines.nuclei_pipeline`` without
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
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellprofiler_omero.benchmarks.report import ratio
from cellprofiler_omero.benchmarks.target import Target
from cellprofiler_omero.core import refs, runtime
from cellprofiler_omero.core.reading import ImageReader
from cellprofiler_omero.core.refs import Kind, ObjectRef

_IMAGE_LINE = re.compile(r"Image # (\d+), module (\w+) # (\d+)")
#: Lines CellProfiler logs when it starts preparing the run (the first one seen counts).
_START_MARKERS = ("filter_file_list", "Times reported")


@dataclass(frozen=True)
class E2EWorkload:
    """How many demo fields (2 channels, ``size``² uint16) the pipeline processes."""

    image_sets: int = 12
    size: int = 1024


@dataclass
class PipelineRun:
    """When CellProfiler's lines arrived, and what they said."""

    exit_code: int = 0
    wall_s: float = 0.0
    window_start_s: float | None = None
    window_end_s: float | None = None
    completed: set[int] = field(default_factory=set)
    log_tail: list[str] = field(default_factory=list)

    @property
    def window_s(self) -> float | None:
        if self.window_start_s is None or self.window_end_s is None:
            return None
        return self.window_end_s - self.window_start_s

    def to_json(self) -> dict[str, Any]:
        window = self.window_s
        return {"exit_code": self.exit_code, "image_sets": len(self.completed),
                "wall_s": self.wall_s, "startup_s": self.window_start_s,
                "window_s": window,
                "sets_per_s": len(self.completed) / window if window else None}


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


def run(target: Target, image_ids: list[int], workload: E2EWorkload) -> dict[str, Any]:
    """Both pipeline runs; the end-to-end section of the results."""
    if importlib.util.find_spec("cellprofiler") is None:
        return {"status": "skipped",
                "reason": "CellProfiler is not installed (pip install "
                          "'cellprofiler-omero[cellprofiler]' and cellprofiler-nightly)"}
    from cellprofiler_omero.cp_integration.pipelines import nuclei_pipeline

    ids = list(image_ids[:workload.image_sets])
    with tempfile.TemporaryDirectory(prefix="cpo-bench-e2e-") as tmp:
        base = Path(tmp)
        pipeline = base / "nuclei.cppipe"
        pipeline.write_text(nuclei_pipeline(None, save_labels=False, export_tables=False))
        tiffs = write_tiffs(target, ids, base / "tiff")
        local_list = base / "local.txt"
        local_list.write_text("\n".join(str(p) for p in tiffs) + "\n")
        omero_list = base / "omero.txt"
        omero_list.write_text("\n".join(refs.web_url(ObjectRef(Kind.IMAGE, i, target.host))
                                        for i in ids) + "\n")
        local = run_cellprofiler(pipeline, local_list, base / "out-local", clean_env({}),
                                 ("--enable-readers", "imageio_reader"))
        with target.session() as manager:
            handoff = manager.export_for_workers()
            env = clean_env({**handoff, "CELLPROFILER_OMERO_SERVER_HOST": target.host,
                             "CELLPROFILER_OMERO_SERVER_PORT": str(target.port),
                             "CELLPROFILER_OMERO_TRANSPORTS_READ": "ice",
                             "CELLPROFILER_OMERO_AUTH_USE_TOKEN": "0"})
            omero = run_cellprofiler(pipeline, omero_list, base / "out-omero", env)
        problems = [f"{name}: CellProfiler exited with {r.exit_code} after {len(r.completed)} "
                    f"of {len(ids)} image sets; last lines:\n  " + "\n  ".join(r.log_tail[-12:])
                    for name, r in (("local", local), ("omero", omero))
                    if r.exit_code != 0 or len(r.completed) != len(ids)]
    if problems:
        return {"status": "error", "error": "\n".join(problems)}
    local_json, omero_json = local.to_json(), omero.to_json()
    return {"status": "ok", "workload": asdict(workload), "image_sets": len(ids),
            "channels": 2, "size": workload.size, "image_ids": ids,
            "pipeline": "nuclei_pipeline(save_labels=False, export_tables=False)",
            "local": local_json, "omero": omero_json,
            "ratio": ratio(omero_json["sets_per_s"], local_json["sets_per_s"])}
