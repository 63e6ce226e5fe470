"""The benchmark harness: one run, one server, every path, one table, one JSON file.

``cellprofiler-omero bench`` (or ``python -m cellprofiler_omero.benchmarks``) starts an
emulator on free ports, puts the workloads on it, and runs the sections in turn —
read, upload, tables, end to end, reference ceilings, growth — each timing this
package against the way people do the same job without it. A failing section or path
is recorded as an error and the run goes on; the exit status is 1 when anything
failed, 0 otherwise (a MISS is a finding, not a failure).

Against the emulator the sections that talk to the server run under the network
profiles (``--network``: loopback, lan, campus, wan, or a custom latency/bandwidth)
where a goal judges their figures (``plan_for``), all in one run on the same emulator,
so each comparison is side by side under the same network; each timed pass records
its round trips (Ice calls, HTTP requests) by operation from the emulator's counter.

With ``--host``/``--user`` or ``--images`` it runs against the user's own OMERO
server instead (password or saved token) and then only reads the images named with
``--images`` — it never writes there — plus the local ceilings.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cellprofiler_omero.benchmarks import (
    ceilings,
    growth,
    machine,
    paths_e2e,
    paths_read,
    paths_rois,
    paths_run,
    paths_tables,
    paths_upload,
    report,
    timing,
)
from cellprofiler_omero.benchmarks.target import (
    PROFILES,
    NetworkProfile,
    Target,
    own_server,
    start_emulator,
)
from cellprofiler_omero.benchmarks.timing import describe
from cellprofiler_omero.core.errors import OmeroError
from cellprofiler_omero.core.model import TableTarget
from cellprofiler_omero.core.refs import ObjectRef, parse_image
from cellprofiler_omero.emulator import EmulatorError, SeedOptions

log = logging.getLogger(__name__)

SECTIONS = ("read", "upload", "tables", "e2e", "ceilings", "growth", "run", "rois")
#: What may run against a server that is not ours: nothing that writes.
OWN_SERVER_SECTIONS = ("read", "ceilings")
#: Sections run once, whatever the network profiles: those that never talk to the server,
#: and the Dask run (its goal is about compute on this machine's cores).
NETWORK_FREE_SECTIONS = ("ceilings", "run")
#: Sections whose figures only goals restricted to some profiles judge: they run under
#: those profiles of a run (under its first profile when none of them is in the run).
SECTION_GOALS: dict[str, tuple[str, ...]] = {
    "upload": ("upload_2d_vs_blitz", "upload_zstack_vs_blitz"),
    "tables": ("tables_vs_per_image_set", "tables_vs_single_add"),
    "e2e": ("save_omero_vs_local_disk", "e2e_io_omero_vs_local", "e2e_omero_vs_local"),
    "rois": (),  # no goal: a figure to watch, measured once
}
#: Read paths (a) and (e) and the warm passes serve these goals only; the cold paths (b),
#: (c), (d) serve goals judged under every profile and always run.
READ_COMMON_GOALS = ("read_ice_vs_common", "read_cpreader_vs_common")
DEFAULT_OUTPUT = Path("benchmarks") / "results"
#: 2: ``profiles`` holds the sections of every network profile after the first (whose
#: sections stay at the top level, as in 1) and ``meta.networks`` lists them in order.
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class Plan:
    """The workloads of one run."""

    mode: str
    read: paths_read.ReadWorkload
    upload: paths_upload.UploadWorkload
    tables: paths_tables.TablesWorkload
    e2e: paths_e2e.E2EWorkload
    ceilings: ceilings.CeilingsWorkload
    growth: growth.GrowthWorkload
    run: paths_run.RunWorkload
    rois: paths_rois.RoisWorkload


FULL = Plan("full", paths_read.ReadWorkload(), paths_upload.UploadWorkload(),
            paths_tables.TablesWorkload(), paths_e2e.E2EWorkload(),
            ceilings.CeilingsWorkload(), growth.GrowthWorkload(), paths_run.RunWorkload(),
            paths_rois.RoisWorkload())

#: Every path on tiny data, for CI: seconds per section, figures that mean nothing.
QUICK = Plan(
    "quick",
    paths_read.ReadWorkload(images=3, channels=3, size=256, repetitions=3, warmup=1,
                            common_repetitions=2),
    paths_upload.UploadWorkload(cases=(
        paths_upload.UploadCase("2D, 3 channels × 256²", 1, 3, 256),
        paths_upload.UploadCase("Z-stack, 4 z × 2 channels × 128²", 4, 2, 128)),
        repetitions=2, warmup=1),
    paths_tables.TablesWorkload(rows=(200, 1_000), repetitions=2, warmup=1),
    # The compute-bound pipeline is left out: CellProfiler's start-up is most of a run
    # here, and the I/O and saving pipelines go through the same reader and modules.
    paths_e2e.E2EWorkload(image_sets=2, size=256, compute_bound=False, io_image_sets=2,
                          io_size=256),
    ceilings.CeilingsWorkload(socket_bytes=32 * 1024 * 1024, decode_bytes=16 * 1024 * 1024,
                              repetitions=3, warmup=1),
    growth.GrowthWorkload(sizes=(256, 1024), image_sets=(10, 100), table_repetitions=1),
    paths_run.RunWorkload(fields=2, size=128, rows=None),
    paths_rois.RoisWorkload(objects=400, size=200, repetitions=1),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellprofiler-omero bench",
        description="Benchmark this package against the usual ways of doing the same jobs "
                    "(read, upload, tables, a CellProfiler pipeline end to end), with "
                    "reference ceilings and growth curves. Default: against an emulator it "
                    "starts itself. Prints a table with PASS/MISS per goal and writes a JSON "
                    "file, the table as text and a PNG of the growth curves. See "
                    "benchmarks/README.md for the goals and how to read each figure.")
    parser.add_argument("--quick", action="store_true",
                        help="every path on tiny data, in about a minute (for CI; the "
                             "figures then say nothing about real workloads)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, metavar="DIR",
                        help=f"where the results go (default: ./{DEFAULT_OUTPUT})")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                        help=f"run only these sections ({', '.join(SECTIONS)})")
    parser.add_argument("--skip", nargs="+", choices=SECTIONS, default=[], metavar="SECTION",
                        help="leave these sections out")
    parser.add_argument("--show", type=Path, metavar="FILE",
                        help="print the table of a saved results JSON file and exit")
    parser.add_argument("--network", nargs="+", metavar="PROFILE",
                        choices=[*PROFILES, "all"],
                        help="network profiles to run every section under, side by side: "
                             + ", ".join(p.label for p in PROFILES.values())
                             + "; 'all' for every one (default: all; with --quick, loopback)")
    parser.add_argument("--latency-ms", type=float, default=0.0, metavar="MS",
                        help="a custom profile: the emulator waits MS milliseconds before "
                             "answering each Ice call and HTTP request (one round trip)")
    parser.add_argument("--bandwidth-mbit", type=float, default=0.0, metavar="MBIT",
                        help="a custom profile: request and reply bytes cross a link of "
                             "MBIT Mbit/s per direction (default: unlimited)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    own = parser.add_argument_group(
        "your own OMERO server (read paths only, on the images you name)")
    own.add_argument("--host", help="server host (default: the saved token's server)")
    own.add_argument("--port", type=int, help="Ice port (default 4064)")
    own.add_argument("--user", help="user name (default: join the saved token's session)")
    own.add_argument("--password", help="password (default: $OMERO_PASSWORD, else asked)")
    own.add_argument("--images", nargs="+", metavar="REF",
                     help="images to read: Image:N, omero:iid=N or OMERO.web links")
    own.add_argument("--pixelbuffer-url", metavar="URL",
                     help="the server's omero-ms-pixel-buffer URL, for read path (d) "
                          "(default: pixelbuffer.servers from the settings)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks (or ``--show`` a saved run); 0 unless something failed."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("cellprofiler_omero.benchmarks").setLevel(logging.INFO)
    if args.show is not None:
        print(report.summary(json.loads(args.show.read_text())))
        return 0
    own = bool(args.host or args.user or args.images)
    if own and not args.images:
        print("error: name the images to read on your server with --images REF...",
              file=sys.stderr)
        return 2
    if own and (args.latency_ms or args.bandwidth_mbit or args.network):
        print("error: --network, --latency-ms and --bandwidth-mbit apply to the emulator "
              "only (your server is behind the network it is behind)", file=sys.stderr)
        return 2
    if args.latency_ms < 0 or args.bandwidth_mbit < 0:
        print("error: --latency-ms and --bandwidth-mbit cannot be negative", file=sys.stderr)
        return 2
    try:
        refs = [parse_image(text) for text in args.images or ()]
    except Exception as exc:
        print(f"error: {describe(exc)}", file=sys.stderr)
        return 2
    plan = QUICK if args.quick else FULL
    chosen = [s for s in (args.only or SECTIONS) if s not in args.skip]
    args.profiles = network_profiles(args, own)
    try:
        results = run(plan, chosen, args, refs if own else None)
    except (OmeroError, EmulatorError) as exc:  # no server to measure against
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    paths = write_results(results, args.output)
    print(report.summary(results))
    print()
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    failed = failures(results)
    for failure in failed:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failed else 0


def network_profiles(args: argparse.Namespace, own: bool) -> list[NetworkProfile]:
    """The profiles to run, in order: those named (``all``: every one), then a custom one
    from ``--latency-ms``/``--bandwidth-mbit``; by default every profile (``--quick``
    and the user's own server: loopback, i.e. the network as it is)."""
    custom = (NetworkProfile("custom", args.latency_ms, args.bandwidth_mbit)
              if args.latency_ms or args.bandwidth_mbit else None)
    names: list[str] = list(args.network or [])
    if "all" in names:
        names = list(PROFILES)
    if not names and custom is None:
        names = ["loopback"] if own or getattr(args, "quick", False) else list(PROFILES)
    chosen = [PROFILES[name] for name in dict.fromkeys(names)]
    return chosen + ([custom] if custom is not None else [])


def judged_under(goal_ids: Sequence[str], profiles: Sequence[NetworkProfile]) -> list[str]:
    """The profiles of this run (names, in order) where any of the goals is judged;
    the first profile when none is (so every figure is measured once)."""
    names = [p.name for p in profiles]
    judged = [name for name in names
              if any(report.GOALS[g].profiles and name in report.GOALS[g].profiles
                     for g in goal_ids)]
    return judged or names[:1]


def plan_for(plan: Plan, profile: NetworkProfile, profiles: Sequence[NetworkProfile]
             ) -> tuple[Plan, dict[str, Any]]:
    """What runs under ``profile``: the plan with the figures no goal judges there left
    out or made cheaper, and the sections left out (as skipped, with the reason).

    Every goal is measured under every profile where it is judged. Under the others:
    upload, tables, end to end and ROIs do not run (unless no profile of the run judges
    them: then they run under the first); read leaves out the common way (a), the
    CellProfiler reader (e) and the warm passes; growth reads only the largest plane (its
    peak memory is judged everywhere), and the size curve, the largest plane's upload and
    the TableWriter curve come from the first profile.
    """
    skipped: dict[str, Any] = {}
    for section, goals in SECTION_GOALS.items():
        where = judged_under(goals, profiles)
        if profile.name not in where:
            why = (f"its figures are judged under {', '.join(where)} only" if goals else
                   f"no goal judges it: measured once, under {where[0]}")
            skipped[section] = {"status": "skipped",
                                "reason": f"{why}; left out here to keep the run short"}
    first = profile.name == profiles[0].name
    read = plan.read
    if profile.name not in judged_under(READ_COMMON_GOALS, profiles):
        read = replace(read, common=False, cpreader=False, warm=False)
    grown = plan.growth if first else replace(
        plan.growth, sizes=(max(plan.growth.sizes),), image_sets=(), upload=False)
    return replace(plan, read=read, growth=grown), skipped


def progress(message: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def seed_for(plan: Plan, sections: Sequence[str]) -> SeedOptions:
    """As little demo data as the sections need: the e2e fields, nothing big."""
    fields = plan.e2e.image_sets if "e2e" in sections and plan.e2e.compute_bound else 0
    return SeedOptions(fields=fields, field_size=plan.e2e.size, large_size=0, plate_rows=1,
                       plate_columns=1, plate_fields=1, plate_field_size=32)


def run(plan: Plan, sections: Sequence[str], args: argparse.Namespace,
        own_refs: list[ObjectRef] | None) -> dict[str, Any]:
    """Every chosen section against one target; the results dictionary."""
    started = time.perf_counter()
    results: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "meta": {"mode": plan.mode, "started": datetime.now(UTC).isoformat(),
                 "sections": list(sections), "machine": machine.describe()},
        "sections": {},
    }
    profiles: list[NetworkProfile] = getattr(args, "profiles", None) or [PROFILES["loopback"]]
    skipped: dict[str, Any] = {}
    if own_refs is not None:
        progress("connecting to your server")
        target = own_server(args.host, args.port, args.user, args.password,
                            args.pixelbuffer_url)
        for name in sections:
            if name not in OWN_SERVER_SECTIONS:
                skipped[name] = {"status": "skipped",
                                 "reason": "runs only against the emulator (it writes data)"}
    else:
        progress("starting the emulator")
        target = start_emulator(seed_for(plan, sections))
    results["meta"]["target"] = target.describe()
    results["meta"]["networks"] = [p.describe() for p in profiles]
    parents: list[TableTarget] = []

    def parent() -> TableTarget:
        if not parents:
            parents.append(scratch_dataset(target))
        return parents[0]

    try:
        if target.emulator is not None:
            timing.round_trip_counter = target.emulator.call_counts
        def steps_for(plan: Plan) -> dict[str, Callable[[], dict[str, Any]]]:
            return {
                "read": lambda: _read(target, plan, own_refs),
                "upload": lambda: paths_upload.run(target, plan.upload),
                "tables": lambda: paths_tables.run(target, parent(), plan.tables),
                "e2e": lambda: _e2e(target, plan),
                "ceilings": lambda: ceilings.run(plan.ceilings),
                "growth": lambda: growth.run(target, parent(), plan.growth),
                "run": lambda: paths_run.run(target, parent(), plan.run),
                "rois": lambda: paths_rois.run(target, plan.rois),
            }

        free = [name for name in sections if name in NETWORK_FREE_SECTIONS]
        networked = [name for name in sections if name not in NETWORK_FREE_SECTIONS]
        results["sections"] = _run_sections(free, steps_for(plan), dict(skipped), target)
        for index, profile in enumerate(profiles):
            target.set_network(profile)
            if len(profiles) > 1:
                progress(f"network {profile.label}")
            here, left_out = (plan_for(plan, profile, profiles) if own_refs is None
                              else (plan, {}))
            left_out = {k: v for k, v in left_out.items() if k in networked}
            out = _run_sections(networked, steps_for(here), {**left_out, **skipped},
                                target)
            if index == 0:
                results["sections"].update(out)
                results["goals"] = report.evaluate_goals(results, profile.name)
            else:
                results.setdefault("profiles", {})[profile.name] = {
                    "network": profile.describe(), "sections": out,
                    "goals": report.evaluate_goals({"sections": out}, profile.name)}
    finally:
        timing.round_trip_counter = None
        target.close()
    results["meta"]["duration_s"] = time.perf_counter() - started
    return results


def _run_sections(names: Sequence[str], steps: dict[str, Callable[[], dict[str, Any]]],
                  out: dict[str, Any], target: Target) -> dict[str, Any]:
    """Run each section not already in ``out`` (skipped ones are); record its time and
    the round trips it made in all (``round_trips``, by operation) when counted."""
    for name in names:
        if name in out:
            continue
        progress(f"{name}…")
        section_started = time.perf_counter()
        before = target.call_counts()
        try:
            out[name] = steps[name]()
        except Exception as exc:
            log.debug("section %s failed", name, exc_info=True)
            out[name] = {"status": "error", "error": describe(exc)}
        out[name]["section_seconds"] = time.perf_counter() - section_started
        after = target.call_counts()
        if before is not None and after is not None:
            out[name]["round_trips"] = {op: n - before.get(op, 0)
                                        for op, n in sorted(after.items())
                                        if n != before.get(op, 0)}
    return out


def scratch_dataset(target: Target) -> TableTarget:
    """A new Dataset for the tables this run writes."""
    import omero.model
    from omero.rtypes import rstring

    with target.blitz() as conn:
        dataset = omero.model.DatasetI()
        dataset.setName(rstring("cellprofiler-omero benchmarks"))
        saved = conn.getUpdateService().saveAndReturnObject(dataset)
        return TableTarget("Dataset", int(saved.getId().getValue()))


def _read(target: Target, plan: Plan, own_refs: list[ObjectRef] | None) -> dict[str, Any]:
    if own_refs is not None:
        workload = replace(plan.read, images=len(own_refs), channels=0, size=0)
        return paths_read.run(target, own_refs, workload)
    key = (id(target), plan.read.images, plan.read.channels, plan.read.size)
    if key not in _read_images:  # uploaded once per run: every profile reads them
        with target.session() as manager:
            _read_images[key] = paths_read.upload_images(manager, plan.read)
    return paths_read.run(target, paths_read.image_refs(_read_images[key]), plan.read)


#: The read section's images, by target and workload (see ``_read``).
_read_images: dict[tuple[int, int, int, int], list[int]] = {}


def _e2e(target: Target, plan: Plan) -> dict[str, Any]:
    assert target.emulator is not None
    fields = [int(i) for i in target.emulator.seeded.get("fields", [])]
    if plan.e2e.compute_bound and len(fields) < plan.e2e.image_sets:
        raise RuntimeError(f"the emulator holds {len(fields)} demo fields, "
                           f"{plan.e2e.image_sets} needed")
    return paths_e2e.run(target, fields, plan.e2e)


def failures(results: dict[str, Any]) -> list[str]:
    """What failed: sections with errors and paths with errors inside ok sections (named
    with their network profile when a run has several)."""
    found = []
    runs = report.network_runs(results)
    for network, sections in runs:
        prefix = f"[{network.get('name')}] " if len(runs) > 1 else ""
        for name, section in sections.items():
            if section.get("status") == "error":
                found.append(f"{prefix}{name}: {section.get('error')}")
                continue
            for where, value in _walk(section, name):
                found.append(f"{prefix}{where}: {value}")
    return found


def _walk(data: Any, where: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "error" and isinstance(value, str):
                out.append((where, value))
            else:
                out += _walk(value, f"{where}.{key}")
    elif isinstance(data, list):
        for index, value in enumerate(data):
            out += _walk(value, f"{where}[{index}]")
    return out


def write_results(results: dict[str, Any], folder: Path) -> dict[str, Path]:
    """The JSON file, the table as text and the growth plot; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    stem = folder / f"bench-{results['meta']['mode']}-{stamp}"
    written: dict[str, Path] = {}
    growths = [(None, results["sections"].get("growth", {}))] + [
        (name, data.get("sections", {}).get("growth", {}))
        for name, data in results.get("profiles", {}).items()]
    for profile, grown in growths:
        if grown.get("status") != "ok":
            continue
        suffix = "-growth.png" if profile is None else f"-growth-{profile}.png"
        try:
            plot = report.plot_growth(grown, stem.with_name(stem.name + suffix))
            grown["plot"] = str(plot)
            written["plot" if profile is None else f"plot ({profile})"] = plot
        except Exception as exc:  # matplotlib missing or broken: the figures still stand
            grown.setdefault("warnings", []).append(f"no plot: {describe(exc)}")
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    written["results"] = json_path
    text_path = stem.with_suffix(".txt")
    text_path.write_text(report.summary(results) + "\n")
    written["table"] = text_path
    return written


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in the results file")
