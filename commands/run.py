"""``run``: a CellProfiler pipeline over OMERO images on a Dask cluster.

The work itself is in ``cp_integration.distributed`` (also usable from a notebook:
``run_pipeline``); this module parses the command line, logs in, turns the targets
into image URLs and prints the progress and the summary.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cellprofiler_omero.commands import common

if TYPE_CHECKING:
    from cellprofiler_omero.core.refs import ObjectRef
    from cellprofiler_omero.core.session import SessionManager


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``run``."""
    run = sub.add_parser(
        "run", help="run a pipeline over OMERO images on a Dask cluster",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a CellProfiler pipeline over OMERO images on Dask workers: a "
                    "LocalCluster of\n--workers processes on this machine, or the cluster "
                    "whose scheduler is --scheduler\n(e.g. one dask-jobqueue started on "
                    "SLURM). The image sets are built here with\nCellProfiler's own "
                    "NamesAndTypes/Metadata/Groups (a group never splits across\nbatches); "
                    "the workers join this session (the password never leaves this "
                    "machine).\nSaveImagesToOMERO and ExportToOMEROTable write each image "
                    "and row exactly once,\neven when a batch runs again; a rerun continues "
                    "the same tables.",
        epilog="examples:\n"
               "  cellprofiler-omero run nuclei.cppipe Dataset:51 --workers 4\n"
               "  cellprofiler-omero run nuclei.cppipe Plate:7 --scheduler tcp://head:8786 "
               "--output results/\n"
               "  cellprofiler-omero run nuclei.cppipe files.txt --max-failures 0 --json\n"
               "  cellprofiler-omero urls Plate:7 --loaddata -o plate.csv\n"
               "  cellprofiler-omero run loaddata.cppipe plate.csv --workers 4")
    run.add_argument("pipeline", type=Path, metavar="PIPELINE", help="the .cppipe file")
    run.add_argument("targets", nargs="+", metavar="TARGET",
                     help="OMERO links or Project:1, Dataset:2, Plate:3, Image:4 …, a "
                          "file list (one URL a line), or a LoadData CSV (`urls --loaddata`; "
                          "alone, for a pipeline with LoadData)")
    run.add_argument("--workers", type=common.positive_int, metavar="N",
                     help="worker processes of the local cluster (default: this machine's "
                          "cores); not with --scheduler")
    run.add_argument("--scheduler", metavar="ADDRESS",
                     help="use the Dask cluster of this scheduler (tcp://host:8786) instead "
                          "of a local one")
    run.add_argument("--batch-size", type=common.positive_int, metavar="N",
                     help="image sets per task (default: about four tasks per worker); "
                          "groups are never split")
    run.add_argument("--output", type=Path, metavar="DIR",
                     help="write CellProfiler's measurements of the run (measurements.h5) "
                          "here (default: a new temporary folder)")
    run.add_argument("--max-failures", type=common.non_negative_int, metavar="N",
                     help="stop the run once more than N image sets have failed (default: "
                          "never; failed image sets are reported)")
    run.add_argument("--json", action="store_true",
                     help="print the report as JSON on stdout (progress goes to stderr)")
    common.add_server_options(run)
    run.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the pipeline on the cluster and print the summary (or the JSON report)."""
    from cellprofiler_omero.core.errors import NotFound
    from cellprofiler_omero.cp_integration.distributed import run_pipeline

    if args.workers is not None and args.scheduler is not None:
        raise common.UsageError("--workers sizes a local cluster; with --scheduler the "
                                "cluster's own workers run the pipeline.")
    if not args.pipeline.is_file():
        raise NotFound(f"No pipeline file {args.pipeline}.",
                       hint="Give the path of a .cppipe file.")
    out = sys.stderr if args.json else sys.stdout
    with common.session(args) as manager:
        refs_text = [t for t in args.targets if not Path(t).is_file()]
        host = None
        if refs_text:
            from cellprofiler_omero.core import refs

            first = refs.parse(refs_text[0])[0]
            host = first.host
        common.connect(manager, args, host=host)
        loaddata = loaddata_target(args.targets)
        urls = [] if loaddata is not None else image_urls(manager, args.targets)
        try:
            report = run_pipeline(args.pipeline, urls, manager, workers=args.workers,
                                  scheduler=args.scheduler, batch_size=args.batch_size,
                                  output=args.output, max_failures=args.max_failures,
                                  loaddata=loaddata,
                                  say=lambda line: print(line, file=out, flush=True))
        except KeyboardInterrupt:
            # One message (the cluster, the hand-off and the session are already cleaned
            # up on the way out; ``common.session`` detaches or closes the session).
            print("interrupted: the run was stopped (workers stopped, session detached); "
                  "run the same command again to finish it — what was written is not "
                  "written twice.", file=sys.stderr)
            return 130
    if args.json:
        print(report.as_json())
    return 0 if not report.failures else 3


def loaddata_target(targets: Sequence[str]) -> Path | None:
    """The LoadData CSV among the targets, if any (it must be the only target: it is the
    whole list of image sets)."""
    csvs = [Path(t) for t in targets if Path(t).is_file() and Path(t).suffix.lower() == ".csv"]
    if not csvs:
        return None
    if len(targets) > 1:
        raise common.UsageError(
            f"{csvs[0]} is a LoadData CSV, which lists every image set of the run; it "
            "cannot be combined with other targets.",
            hint="Give the CSV alone (make one for all the images with `cellprofiler-omero "
                 "urls … --loaddata -o images.csv`).")
    return csvs[0]


def image_urls(manager: SessionManager, targets: Sequence[str]) -> list[str]:
    """The image URLs the targets name: file lists read as they are, OMERO references
    expanded into their images (each once, in OMERO's order)."""
    from cellprofiler_omero.core import refs
    from cellprofiler_omero.core.errors import NotFound
    from cellprofiler_omero.core.refs import Kind, ObjectRef

    urls: list[str] = []
    for target in targets:
        path = Path(target)
        if path.is_file():
            urls += [line.strip() for line in path.read_text().splitlines()
                     if line.strip() and not line.lstrip().startswith("#")]
            continue
        for ref in refs.parse(target):
            images = _images_in(manager, ref)
            if not images:
                common.note(f"note: {ref} holds no images")
            host = manager.info.server.host if manager.info is not None else None
            urls += [refs.web_url(ObjectRef(Kind.IMAGE, image.id, host)) for image in images]
    unique = list(dict.fromkeys(urls))
    if not unique:
        raise NotFound("The targets hold no images.",
                       hint="Check them with `cellprofiler-omero ls`.")
    return unique


def _images_in(manager: SessionManager, ref: ObjectRef) -> list[ObjectRef]:
    """The images ``ref`` holds (itself, for an image)."""
    return common.call(manager, lambda c: c.images_in(ref), ref)
