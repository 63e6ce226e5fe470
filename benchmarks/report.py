"""Goals, figure formatting, the terminal table and the growth plot.

Everything here works on the results dictionary the harness writes as JSON, so a
saved run can be shown again (``cellprofiler-omero bench --show FILE``) and the
formatting can be tested without running a benchmark. Nothing here measures.

A run holds one set of sections per network profile (``network_runs``); the table shows
each profile's sections in turn, the round trips of each timed pass beside its time,
and the goals with one column per profile.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PASS = "PASS"
MISS = "MISS"
NOT_MEASURED = "n/a"

# -- numbers ---------------------------------------------------------------------------------


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or ``None`` when either is missing or the divisor is 0."""
    if numerator is None or denominator is None or not _finite(numerator) \
            or not _finite(denominator) or denominator == 0:
        return None
    return numerator / denominator


def overhead_percent(seconds: float | None, reference_seconds: float | None) -> float | None:
    """How much longer ``seconds`` takes than ``reference_seconds``, in percent.

    Positive: slower than the reference; negative: faster.
    """
    r = ratio(seconds, reference_seconds)
    return None if r is None else (r - 1.0) * 100.0


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def fmt_ratio(value: float | None) -> str:
    """``18.7×``; small ratios keep two decimals so 0.93× and 1.07× stay apart."""
    if value is None or not _finite(value):
        return NOT_MEASURED
    if abs(value) >= 100:
        return f"{value:.0f}×"
    if abs(value) >= 10:
        return f"{value:.1f}×"
    return f"{value:.2f}×"


def fmt_percent(value: float | None) -> str:
    """``+4.3 %`` (slower) or ``-2.1 %`` (faster): the sign always shows."""
    if value is None or not _finite(value):
        return NOT_MEASURED
    return f"{value:+.1f} %"


def fmt_rate(value: float | None, unit: str = "MB/s") -> str:
    """``412.3 MB/s``; large rates lose their decimals."""
    if value is None or not _finite(value):
        return NOT_MEASURED
    if value >= 1000:
        return f"{value:,.0f} {unit}"
    if value >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}"


def fmt_bytes(value: float | None) -> str:
    """Decimal units, as the MB/s figures use: ``75.5 MB``, ``1.07 GB``."""
    if value is None or not _finite(value):
        return NOT_MEASURED
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= size:
            scaled = value / size
            return f"{scaled:.2f} {unit}" if scaled < 10 else f"{scaled:.1f} {unit}"
    return f"{value:.0f} B"


def fmt_seconds(value: float | None) -> str:
    """``0.253 s``, ``12.4 s``, ``2 min 03 s``."""
    if value is None or not _finite(value):
        return NOT_MEASURED
    if value < 1:
        return f"{value:.3f} s"
    if value < 120:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes} min {seconds:02d} s"


# -- goals -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """A target one figure should meet: ``value op threshold`` (``>=`` or ``<=``)."""

    id: str
    label: str
    op: str
    threshold: float
    unit: str  # "×" for ratios, "%" for percentages
    #: Network profiles the goal is judged at (empty: every one). Elsewhere the figure is
    #: shown in parentheses for comparison, and its verdict does not count.
    profiles: tuple[str, ...] = ()

    def judged_at(self, profile: str | None) -> bool:
        """Whether a verdict under ``profile`` counts (``None``: a run without profiles)."""
        return not self.profiles or profile is None or profile in self.profiles

    def verdict(self, value: float | None) -> str:
        """``PASS``, ``MISS``, or ``n/a`` when the figure was not measured."""
        if value is None or not _finite(value):
            return NOT_MEASURED
        met = value >= self.threshold if self.op == ">=" else value <= self.threshold
        return PASS if met else MISS

    def describe(self) -> str:
        """``≥ 10×`` / ``≤ 10 %``: how the goal reads beside its figure."""
        sign = "≥" if self.op == ">=" else "≤"
        number = f"{self.threshold:g}"
        return f"{sign} {number} %" if self.unit == "%" else f"{sign} {number}{self.unit}"


#: The goals of issue 17 ("hide the network"), each judged at the network profiles where
#: it is a promise; elsewhere its figure is shown for comparison.
LOCAL_AND_CAMPUS = ("loopback", "campus")
CAMPUS = ("campus",)
CAMPUS_AND_WAN = ("campus", "wan")
WAN = ("wan",)

GOALS: dict[str, Goal] = {goal.id: goal for goal in (
    Goal("read_ice_vs_common", "read via Ice vs the common omero-py way", ">=", 10, "×",
         LOCAL_AND_CAMPUS),
    Goal("read_overhead_vs_bare", "framework overhead over the bare client", "<=", 10, "%"),
    Goal("read_cpreader_vs_common",
         "read via CellProfiler's reader API vs the common omero-py way", ">=", 10, "×",
         LOCAL_AND_CAMPUS),
    Goal("read_pixelbuffer_vs_ice", "pixel-buffer read vs Ice read", ">=", 1, "×"),
    Goal("upload_2d_vs_blitz", "upload 2D vs createImageFromNumpySeq", ">=", 1.5, "×",
         CAMPUS),
    Goal("upload_zstack_vs_blitz", "upload Z-stack vs createImageFromNumpySeq", ">=", 1.5,
         "×", CAMPUS),
    Goal("save_omero_vs_local_disk",
         "pipeline time, SaveImagesToOMERO / SaveImages to local disk", "<=", 1.05, "×",
         WAN),
    Goal("tables_vs_per_image_set", "TableWriter vs one addData per image set", ">=", 20,
         "×", CAMPUS),
    Goal("tables_vs_single_add", "TableWriter vs one addData of all rows (ceiling)", ">=",
         0.8, "×", CAMPUS),
    Goal("e2e_io_omero_vs_local", "I/O-significant pipeline from OMERO vs local files",
         ">=", 0.95, "×", CAMPUS_AND_WAN),
    Goal("e2e_omero_vs_local", "compute-bound pipeline from OMERO vs local files", ">=",
         0.95, "×", CAMPUS_AND_WAN),
    Goal("peak_memory_vs_plane", "peak memory reading the largest plane / its size", "<=",
         1.5, "×"),
    Goal("run_2_vs_1_workers", "Dask run: image sets/s, 2 workers vs 1", ">=", 1.7, "×"),
)}


def evaluate_goals(results: Mapping[str, Any], profile: str | None = None
                   ) -> list[dict[str, Any]]:
    """Every goal with the figure it is judged on, where it came from, and its verdict
    (``judged``: whether the goal applies under the network ``profile``)."""
    out = []
    for goal_id, (value, where) in _goal_values(results).items():
        goal = GOALS[goal_id]
        out.append({"id": goal_id, "label": goal.label, "op": goal.op,
                    "threshold": goal.threshold, "unit": goal.unit, "value": value,
                    "where": where, "verdict": goal.verdict(value),
                    "judged": goal.judged_at(profile)})
    return out


def _goal_values(results: Mapping[str, Any]) -> dict[str, tuple[float | None, str]]:
    sections = results.get("sections", {})
    read = _ok(sections.get("read"))
    ratios = read.get("ratios", {})
    values: dict[str, tuple[float | None, str]] = {
        "read_ice_vs_common": (ratios.get("ice_vs_common"), "read"),
        "read_overhead_vs_bare": (ratios.get("ice_overhead_vs_bare_pct"), "read"),
        "read_cpreader_vs_common": (ratios.get("cpreader_vs_common"), "read (e)"),
        "read_pixelbuffer_vs_ice": (ratios.get("pixelbuffer_vs_ice"), "read"),
    }
    upload = _ok(sections.get("upload")).get("cases", {})
    for goal_id, stack in (("upload_2d_vs_blitz", False), ("upload_zstack_vs_blitz", True)):
        # Each shape must meet the goal on its own; of several cases of a shape, the worse.
        measured = [(case.get("ratio"), f"upload, {case.get('label', name)}")
                    for name, case in upload.items()
                    if _is_stack(case) == stack and case.get("ratio") is not None]
        values[goal_id] = min(measured) if measured else (None, "upload")
    e2e = _ok(sections.get("e2e"))
    save = e2e.get("save") or {}
    values["save_omero_vs_local_disk"] = (save.get("ratio"), "e2e, SaveImages")
    tables = _ok(sections.get("tables"))
    case = _goal_case(tables)
    where = f"tables, {case['rows']:,} rows" if case else "tables"
    values["tables_vs_per_image_set"] = (case.get("ratio") if case else None, where)
    values["tables_vs_single_add"] = (case.get("ratio_vs_single_add") if case else None,
                                      where)
    io = e2e.get("io") or {}
    values["e2e_io_omero_vs_local"] = (io.get("ratio"), "e2e, I/O-significant")
    values["e2e_omero_vs_local"] = (e2e.get("ratio"), "e2e, compute-bound")
    growth = _ok(sections.get("growth"))
    largest = _largest_read(growth)
    values["peak_memory_vs_plane"] = (
        largest.get("peak_vs_plane") if largest else None,
        f"growth, {largest['size']}² {largest['transport']}" if largest else "growth")
    values["run_2_vs_1_workers"] = (_ok(sections.get("run")).get("ratio"), "run")
    return values


def _is_stack(case: Mapping[str, Any]) -> bool:
    """Whether an upload case is a Z-stack (more than one z), from its shape or label."""
    shape = case.get("shape_zcyx")
    if isinstance(shape, list | tuple) and shape:
        return int(shape[0]) > 1
    return "stack" in str(case.get("label", "")).lower()


def _ok(section: Any) -> dict[str, Any]:
    """A section's figures when it ran, else an empty mapping (so goals read n/a)."""
    if isinstance(section, dict) and section.get("status") == "ok":
        return section
    return {}


def _goal_case(tables: Mapping[str, Any]) -> dict[str, Any] | None:
    """The table case the goal is judged on: 10k rows when measured, else the first."""
    cases = list(tables.get("cases", {}).values())
    for case in cases:
        if case.get("rows") == 10_000:
            return dict(case)
    return dict(cases[0]) if cases else None


def _largest_read(growth: Mapping[str, Any]) -> dict[str, Any] | None:
    """The Ice read of the largest plane (the memory goal's figure)."""
    points = [p for p in growth.get("read", []) if p.get("transport") == "ice"
              and p.get("peak_vs_plane") is not None]
    return dict(max(points, key=lambda p: p["size"])) if points else None


# -- the terminal table ----------------------------------------------------------------------


@dataclass
class Line:
    """One figure: what it is, its value, an aside (a ratio), and the goal it answers."""

    label: str
    value: str = ""
    detail: str = ""
    goal: str | None = None  # a GOALS id
    goal_value: float | None = None
    #: Round trips (Ice calls + HTTP requests) of one pass, shown beside the value.
    calls: int | None = None


def _calls(timing: Mapping[str, Any] | None) -> int | None:
    """A timing's round trips per pass, when they were counted."""
    value = timing.get("round_trips_per_pass") if timing else None
    return int(value) if isinstance(value, int | float) else None


def fmt_calls(value: int | None) -> str:
    """``1 call``, ``87 calls``; empty when not counted."""
    if value is None:
        return ""
    return f"{value:,} call" + ("" if value == 1 else "s")


def fmt_operations(counts: Mapping[str, int], limit: int = 4) -> str:
    """The most frequent operations: ``RawPixelsStore.getPlane 9, IQuery.findByQuery 3, …``."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    text = ", ".join(f"{op} {n:,}" for op, n in ranked[:limit])
    return text + (f", … ({len(ranked) - limit} more)" if len(ranked) > limit else "")


@dataclass
class Section:
    """A titled block of figures, and notes printed under them."""

    title: str
    lines: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: The network profile the figures were measured under (goals judged elsewhere show
    #: their verdict in parentheses).
    profile: str | None = None


def render(sections: Sequence[Section]) -> str:
    """The sections as text: label, value, aside, then the goal and PASS/MISS where one
    applies. Columns are aligned within each section."""
    out: list[str] = []
    for section in sections:
        lines = section.lines
        label_w = max([len(line.label) for line in lines] + [0])
        value_w = max([len(line.value) for line in lines] + [0])
        calls_w = max([len(fmt_calls(line.calls)) for line in lines] + [0])
        detail_w = max([len(line.detail) for line in lines if line.goal] + [0])
        out += ["", section.title, "-" * min(100, len(section.title))]
        for line in lines:
            text = f"  {line.label:<{label_w}}  {line.value:>{value_w}}  "
            if calls_w:
                text += f"{fmt_calls(line.calls):>{calls_w}}  "
            if line.goal is not None:
                goal = GOALS[line.goal]
                verdict = goal.verdict(line.goal_value)
                if not goal.judged_at(section.profile):
                    verdict = f"({verdict}: judged at {', '.join(goal.profiles)})"
                text += f"{line.detail:<{detail_w}}  goal {goal.describe():<7} {verdict}"
            else:
                text += line.detail
            out.append(text.rstrip())
        out += [f"  {note}" for note in section.notes]
    return "\n".join(out)


def build_sections(results: Mapping[str, Any]) -> list[Section]:
    """The terminal table's sections, from a results dictionary."""
    sections = results.get("sections", {})
    builders: list[tuple[str, str, Callable[[dict[str, Any]], Section]]] = [
        ("read", "Read", _read_section),
        ("upload", "Upload", _upload_section),
        ("tables", "Tables", _tables_section),
        ("e2e", "End to end (CellProfiler headless)", _e2e_section),
        ("ceilings", "Reference ceilings (this machine)", _ceilings_section),
        ("growth", "Growth", _growth_section),
        ("run", "Scale-out on Dask (cellprofiler-omero run)", _run_section),
        ("rois", "ROIs (objects saved as OMERO ROIs)", _rois_section),
    ]
    out = []
    for key, title, builder in builders:
        data = sections.get(key)
        if data is None:
            continue
        status = data.get("status")
        if status != "ok":
            reason = data.get("reason") or data.get("error") or status
            out.append(Section(title, notes=[f"{str(status).upper()}: {reason}"]))
            continue
        section = builder(data)
        section.profile = (results.get("network") or {}).get("name")
        if data.get("warnings"):
            section.notes.extend(f"warning: {w}" for w in data["warnings"])
        latency = (results.get("network") or {}).get("latency_ms") or 0.0
        section.notes.extend(_round_trip_notes(data, latency))
        out.append(section)
    return out


def _round_trip_notes(data: Mapping[str, Any], latency_ms: float = 0.0) -> list[str]:
    """What each timed pass asked the server for (and, under a latency, the time those
    round trips cost at least), and the section's total."""
    notes = []
    for where, timing in _timings_with_calls(data, ""):
        if not timing["round_trips"]:
            continue  # a pass that never talks to the server (the ceilings)
        floor = ""
        if latency_ms:
            calls = sum(timing["round_trips"].values())
            floor = (f" ({calls:,} × {latency_ms:g} ms = "
                     f"{fmt_seconds(calls * latency_ms / 1000)} of its "
                     f"{fmt_seconds(timing.get('median_s'))} if made one after another)")
        notes.append(f"round trips of one {where} pass{floor}: "
                     f"{fmt_operations(timing['round_trips'])}")
    total = data.get("round_trips")
    if total:
        notes.append(f"round trips in the whole section (set-up and warm-up included): "
                     f"{sum(total.values()):,}")
    return notes


def _timings_with_calls(data: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """Every timing in a section that counted its round trips, with where it is."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(data, dict):
        if isinstance(data.get("round_trips"), dict) and "median_s" in data:
            return [(where or "timed", data)]
        for key, value in data.items():
            if key in ("round_trips", "workload"):
                continue
            label = data.get("label") if isinstance(data.get("label"), str) else None
            inner = f"{where} {key}".strip() if not label else f"{label}, {key}"
            found += _timings_with_calls(
                value, inner.replace("paths ", "").replace("cases ", ""))
    return found


def _rate(timing: Mapping[str, Any] | None, key: str = "median_rate") -> float | None:
    return None if not timing or "error" in timing else timing.get(key)


def _read_section(data: dict[str, Any]) -> Section:
    w = data["workload"]
    # Passes actually timed (fewer than asked when a round is long; see adaptive_rounds).
    timed = [len(t.get("seconds", [])) for t in data.get("paths", {}).values()
             if isinstance(t, dict) and t.get("seconds")]
    passes = max(timed) if timed else w["repetitions"]
    title = (f"Read: {w['images']} image(s), every channel of plane z=0 t=0, "
             f"{fmt_bytes(w['bytes_per_pass'])} per pass (median of {passes})")
    section = Section(title)
    paths = data["paths"]
    ratios = data["ratios"]
    labels = {
        "common": "(a) common omero-py (BlitzGateway getPlane loop)",
        "bare": "(b) bare omero.client, RawPixelsStore per channel",
        "ice": "(c) Ice transport (ImageReader)",
        "pixelbuffer": "(d) pixel-buffer transport (ImageReader)",
        "cpreader": "(e) CellProfiler's reader API, a reader per image",
    }
    vs_common = {"bare": ratios.get("bare_vs_common"), "ice": ratios.get("ice_vs_common"),
                 "pixelbuffer": ratios.get("pixelbuffer_vs_common"),
                 "cpreader": ratios.get("cpreader_vs_common")}
    for key, label in labels.items():
        timing = paths.get(key)
        if timing is None:
            continue
        if "error" in timing:
            section.lines.append(Line(label, "ERROR", timing["error"][:60]))
            continue
        detail = f"{fmt_ratio(vs_common.get(key))} (a)" if key != "common" else ""
        line = Line(label, fmt_rate(_rate(timing)), detail, calls=_calls(timing))
        if key == "ice":
            line.goal, line.goal_value = "read_ice_vs_common", ratios.get("ice_vs_common")
        if key == "cpreader":
            line.goal, line.goal_value = ("read_cpreader_vs_common",
                                          ratios.get("cpreader_vs_common"))
        section.lines.append(line)
    section.lines.append(Line("overhead of (c) over (b)",
                              fmt_percent(ratios.get("ice_overhead_vs_bare_pct")), "",
                              "read_overhead_vs_bare", ratios.get("ice_overhead_vs_bare_pct")))
    if "pixelbuffer" in paths:
        section.lines.append(Line("pixel-buffer (d) / Ice (c)",
                                  fmt_ratio(ratios.get("pixelbuffer_vs_ice")), "",
                                  "read_pixelbuffer_vs_ice", ratios.get("pixelbuffer_vs_ice")))
    warm = data.get("warm", {})
    if warm:
        parts = [f"{name} {fmt_rate(_rate(t))}" for name, t in warm.items()]
        section.notes.append("readers/stores kept open across passes: " + ", ".join(parts)
                             + f"; overhead (c) over (b) "
                             f"{fmt_percent(ratios.get('warm_ice_overhead_vs_bare_pct'))}")
    return section


def _upload_section(data: dict[str, Any]) -> Section:
    section = Section(f"Upload (median of {data['repetitions']}; each pass creates an image)")
    for case in data["cases"].values():
        head = f"{case['label']}: {fmt_bytes(case['bytes'])}"
        blitz, ours = case.get("blitz"), case.get("ours")
        section.lines.append(Line(f"{head}, createImageFromNumpySeq",
                                  fmt_rate(_rate(blitz)) if blitz and "error" not in blitz
                                  else "ERROR", calls=_calls(blitz)))
        section.lines.append(Line(f"{head}, core.uploading.upload",
                                  fmt_rate(_rate(ours)) if ours and "error" not in ours
                                  else "ERROR",
                                  f"{fmt_ratio(case.get('ratio'))} createImageFromNumpySeq",
                                  "upload_zstack_vs_blitz" if _is_stack(case)
                                  else "upload_2d_vs_blitz", case.get("ratio"),
                                  calls=_calls(ours)))
    return section


def _tables_section(data: dict[str, Any]) -> Section:
    section = Section(f"Tables: {data['columns']} columns, {data['rows_per_image_set']} rows "
                      "per image set")
    judged = _goal_case(data)
    for case in data["cases"].values():
        rows = case["rows"]
        base, ours = case.get("per_image_set"), case.get("table_writer")
        single = case.get("single_add")
        is_judged = bool(judged and judged["rows"] == rows)
        section.lines.append(Line(f"{rows:,} rows, one addData per image set",
                                  fmt_rate(_rate(base), "rows/s"), calls=_calls(base)))
        if single is not None:
            section.lines.append(Line(f"{rows:,} rows, one addData of all rows (ceiling)",
                                      fmt_rate(_rate(single), "rows/s"),
                                      calls=_calls(single)))
        section.lines.append(Line(f"{rows:,} rows, TableWriter (background appends)",
                                  fmt_rate(_rate(ours), "rows/s"),
                                  f"{fmt_ratio(case.get('ratio'))} per image set",
                                  "tables_vs_per_image_set" if is_judged else None,
                                  case.get("ratio"), calls=_calls(ours)))
        if single is not None:
            section.lines.append(Line(f"{rows:,} rows, TableWriter / ceiling",
                                      fmt_ratio(case.get("ratio_vs_single_add")), "",
                                      "tables_vs_single_add" if is_judged else None,
                                      case.get("ratio_vs_single_add")))
    return section


def _e2e_section(data: dict[str, Any]) -> Section:
    section = Section(f"End to end: CellProfiler headless, {data['image_sets']} image set(s) "
                      "per pipeline")

    def runs(prefix: str, pairs: Sequence[tuple[str, str]], group: Mapping[str, Any]
             ) -> None:
        for key, label in pairs:
            run = group.get(key) or {}
            first = (f" (first set {fmt_seconds(run['first_set_s'])})"
                     if run.get("first_set_s") is not None else "")
            detail = (f"processing {fmt_seconds(run.get('window_s'))}{first}, run "
                      f"{fmt_seconds(run.get('wall_s'))} incl. start-up "
                      f"{fmt_seconds(run.get('startup_s'))}") if run else ""
            section.lines.append(Line(f"{prefix}, {label}",
                                      fmt_rate(run.get("sets_per_s"), "sets/s"), detail))

    sources = (("local", "from local TIFF files"), ("omero", "from OMERO (Ice)"))
    io = data.get("io")
    if io:
        prefix = f"I/O-significant ({io['channels']} × {io['size']}²)"
        runs(prefix, sources, io)
        section.lines.append(Line(f"{prefix}, OMERO / local", fmt_ratio(io.get("ratio")), "",
                                  "e2e_io_omero_vs_local", io.get("ratio")))
        if io.get("steady_ratio") is not None:
            section.lines.append(Line(f"{prefix}, OMERO / local after the first set",
                                      fmt_ratio(io.get("steady_ratio")),
                                      "no goal: the first set's read overlaps nothing"))
        section.notes.append(f"I/O-significant pipeline: {io['pipeline']}")
    save = data.get("save")
    if save:
        prefix = f"saving ({save['channels']} × {save['size']}²)"
        runs(prefix, (("local_disk", "SaveImages to local disk"),
                      ("omero", "SaveImagesToOMERO")), save)
        section.lines.append(Line(f"{prefix}, OMERO / local disk (time)",
                                  fmt_ratio(save.get("ratio")), "",
                                  "save_omero_vs_local_disk", save.get("ratio")))
        section.notes.append(f"saving pipeline: {save['pipeline']}")
    if "local" not in data:
        section.notes.append("compute-bound pipeline: not run (--quick)")
        return section
    prefix = f"compute-bound ({data['channels']} × {data['size']}²)"
    runs(prefix, sources, data)
    section.lines.append(Line(f"{prefix}, OMERO / local", fmt_ratio(data.get("ratio")), "",
                              "e2e_omero_vs_local", data.get("ratio")))
    section.notes.append(f"compute-bound pipeline: {data['pipeline']}")
    return section


def _rois_section(data: dict[str, Any]) -> Section:
    objects = data.get("objects") or 0
    section = Section(f"ROIs: {objects:,} objects on one image, one Mask ROI each "
                      "(SaveObjectsToOMERO's save)")
    for key, label in (("save", "save"), ("rerun", "rerun (all found)")):
        timing = data.get(key)
        if not timing:
            continue
        if "error" in timing:
            section.lines.append(Line(label, "error", str(timing["error"])))
            continue
        detail = f"{fmt_seconds(timing.get('median_s'))} per save"
        if key == "save" and data.get("batches"):
            detail += f", {data['batches']} batches"
        section.lines.append(Line(label, fmt_rate(timing.get("median_rate"), "ROIs/s"),
                                  detail, calls=_calls(timing)))
    encode = data.get("encode_rois_per_s") or {}
    if encode:
        section.lines.append(Line(
            "encode (no server)", fmt_rate(encode.get("mask"), "ROIs/s"),
            f"Polygon {fmt_rate(encode.get('polygon'), 'ROIs/s')}"))
    return section


def _run_section(data: dict[str, Any]) -> Section:
    section = Section(f"Scale-out on Dask: {data.get('fields')} image set(s) of "
                      f"{data.get('size')}², demo pipeline, LocalCluster")
    for n, run in sorted(data.get("workers", {}).items(), key=lambda kv: int(kv[0])):
        busy = run.get("busy")
        section.lines.append(Line(
            f"{n} worker(s)", fmt_rate(run.get("sets_per_s"), "sets/s"),
            f"workers busy {busy * 100:.0f} %" if isinstance(busy, float) else ""))
    section.lines.append(Line("2 workers / 1", fmt_ratio(data.get("ratio")), "",
                              "run_2_vs_1_workers", data.get("ratio")))
    cost = data.get("per_image_set", {})
    if cost:
        section.lines.append(Line(
            "OMERO cost per image set", f"{cost.get('ice_calls', 0):.1f} calls",
            f"read {fmt_bytes(cost.get('pixel_bytes_read'))}, written "
            f"{fmt_bytes(cost.get('label_bytes_written'))} + "
            f"{cost.get('table_rows_written', 0):.0f} table rows"))
        ops = sorted(cost.get("calls_by_operation", {}).items(), key=lambda kv: -kv[1])
        section.notes.append("calls per image set by operation: " + ", ".join(
            f"{op} {n:.1f}" for op, n in ops[:6]))
    for n, rows in sorted(data.get("rows", {}).items(), key=lambda kv: int(kv[0])):
        section.notes.append(f"table rows, {n} workers: " + ", ".join(
            f"{mode} {fmt_seconds(seconds)}" for mode, seconds in rows.items()))
    return section


def _ceilings_section(data: dict[str, Any]) -> Section:
    section = Section("Reference ceilings (no OMERO involved)")
    section.lines.append(Line("loopback socket transfer", fmt_rate(_rate(data["socket"])),
                              fmt_bytes(data["socket"].get("amount")) + " per pass"))
    section.lines.append(Line("in-memory big-endian decode", fmt_rate(_rate(data["decode"])),
                              fmt_bytes(data["decode"].get("amount")) + " per pass"))
    return section


def _growth_section(data: dict[str, Any]) -> Section:
    section = Section("Growth: one plane read in a fresh process per size; "
                      "TableWriter as image sets grow")
    largest = _largest_read(data)
    for point in data.get("read", []):
        if "error" in point:
            section.lines.append(Line(f"{point['size']}² uint16, {point['transport']}",
                                      "ERROR", point["error"][:60]))
            continue
        label = f"{point['size']}² uint16 ({fmt_bytes(point['plane_bytes'])}), " \
                f"{point['transport']}"
        detail = (f"peak RSS {fmt_bytes(point['peak_rss'])} = "
                  f"{fmt_ratio(point['peak_vs_plane'])} plane "
                  f"(+{fmt_bytes(point['read_rss_delta'])} over idle)")
        line = Line(label, fmt_seconds(point["seconds"]), detail)
        if largest and point["transport"] == "ice" and point["size"] == largest["size"]:
            line.goal, line.goal_value = "peak_memory_vs_plane", point["peak_vs_plane"]
        section.lines.append(line)
    for point in data.get("upload", []):
        if "error" in point:
            section.lines.append(Line(f"upload {point['size']}² uint16", "ERROR",
                                      point["error"][:60]))
            continue
        section.lines.append(Line(
            f"upload {point['size']}² uint16 ({fmt_bytes(point['plane_bytes'])}), "
            f"{point['transport']}", fmt_seconds(point["seconds"]),
            f"peak RSS {fmt_bytes(point['peak_rss'])} = {fmt_ratio(point['peak_vs_plane'])} "
            f"plane, the array included (+{fmt_bytes(point['read_rss_delta'])} over idle)"))
    for point in data.get("tables", []):
        section.lines.append(Line(f"TableWriter, {point['image_sets']:,} image sets "
                                  f"({point['rows']:,} rows)", fmt_seconds(point["seconds"]),
                                  fmt_rate(point.get("rows_per_s"), "rows/s")))
    if data.get("plot"):
        section.notes.append(f"plot: {data['plot']}")
    return section


def header(results: Mapping[str, Any]) -> str:
    """Two lines: what ran where, and on what machine."""
    meta = results.get("meta", {})
    target = meta.get("target", {})
    machine = meta.get("machine", {})
    where = (f"emulator at {target.get('host')}:{target.get('port')}"
             if target.get("kind") == "emulator"
             else f"OMERO server {target.get('host')}:{target.get('port')}")
    if target.get("latency_ms"):
        where += f" (+{target['latency_ms']:g} ms per call)"
    runs = network_runs(results)
    if target.get("kind") == "emulator":
        where += ", network " + ("; ".join(network_label(n) for n, _ in runs))
    first = (f"cellprofiler-omero benchmarks — {meta.get('mode', '?')} run against {where}, "
             f"{fmt_seconds(meta.get('duration_s'))}")
    packages = machine.get("packages", {})
    second = (f"{machine.get('cpu_count', '?')} CPU(s) {machine.get('cpu_model', '')}, "
              f"Python {machine.get('python', '?')}, "
              + ", ".join(f"{k} {v}" for k, v in packages.items()))
    lines = [first, second]
    if meta.get("mode") == "quick":
        lines.append("--quick: tiny data, so the PASS/MISS verdicts below say nothing about "
                     "real workloads; run without --quick for figures to judge.")
    return "\n".join(lines)


def network_runs(results: Mapping[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(network, sections)`` of every network profile of a run, in the order run.

    The first profile's sections are the top-level ``sections`` (with those that do not
    depend on the network, such as the ceilings); further profiles are under
    ``profiles``. A run saved before profiles existed is one run on its own network.
    """
    meta = results.get("meta", {})
    networks = meta.get("networks")
    if not networks:
        latency = meta.get("target", {}).get("latency_ms") or 0.0
        networks = [{"name": "custom" if latency else "loopback", "latency_ms": latency,
                     "bandwidth_mbit": 0.0}]
    runs = [(dict(networks[0]), dict(results.get("sections", {})))]
    for name, data in results.get("profiles", {}).items():
        runs.append((dict(data.get("network") or {"name": name}),
                     dict(data.get("sections", {}))))
    return runs


def network_label(network: Mapping[str, Any]) -> str:
    """``campus (2 ms per call, 1 Gbit/s)``."""
    latency, bandwidth = network.get("latency_ms") or 0, network.get("bandwidth_mbit") or 0
    name = network.get("name", "?")
    if not latency and not bandwidth:
        return f"{name} (nothing added)"
    bw = (f"{bandwidth / 1000:g} Gbit/s" if bandwidth >= 1000 else f"{bandwidth:g} Mbit/s"
          ) if bandwidth else "bandwidth unlimited"
    return f"{name} ({latency:g} ms per call, {bw})"


def time_budget(results: Mapping[str, Any]) -> list[str]:
    """Where the run's time went: seconds per section, per network profile, and in all
    (so the full run's budget is visible)."""
    runs = network_runs(results)
    lines = ["", "Time per section (seconds; skipped sections take none)", "-" * 40]
    total = 0.0
    seen: set[int] = set()
    for network, sections in runs:
        spent = {name: float(section["section_seconds"]) for name, section in sections.items()
                 if isinstance(section, dict) and section.get("section_seconds") is not None
                 and id(section) not in seen}
        seen.update(id(section) for section in sections.values())
        if not spent:
            continue
        total += sum(spent.values())
        where = network.get("name", "?") if len(runs) > 1 else "sections"
        lines.append(f"  {where:<9} {sum(spent.values()):7.0f} s: " + ", ".join(
            f"{name} {seconds:.0f}" for name, seconds in spent.items()))
    duration = results.get("meta", {}).get("duration_s")
    lines.append(f"  {'all':<9} {total:7.0f} s in sections"
                 + (f", {fmt_seconds(float(duration))} in all" if duration else ""))
    return lines


def summary(results: Mapping[str, Any]) -> str:
    """The header, every section (per network profile), then the goals with their
    verdicts (one column per profile when there are several), and the time per
    section."""
    return _summary(results) + "\n" + "\n".join(time_budget(results))


def _summary(results: Mapping[str, Any]) -> str:
    runs = network_runs(results)
    text = header(results)
    for network, sections in runs:
        if len(runs) > 1:
            banner = f"Network: {network_label(network)}"
            text += f"\n\n{'=' * len(banner)}\n{banner}\n{'=' * len(banner)}"
        text += "\n" + render(build_sections({"sections": sections, "network": network}))
    if len(runs) > 1:
        return text + "\n" + "\n".join(_memory_by_profile(runs)
                                        + _goals_by_profile(results, runs))
    goals = results.get("goals") or evaluate_goals(results)
    lines = ["", "Goals", "-" * 40]
    label_w = max(len(g.label) for g in GOALS.values())
    for goal in goals:
        g = GOALS[goal["id"]]
        value = (fmt_percent(goal["value"]) if g.unit == "%" else fmt_ratio(goal["value"]))
        # A goal judged at other networks only: its figure here is for comparison.
        verdict = goal["verdict"] if goal.get("judged", True) else "info"
        lines.append(f"  {verdict:<4}  {g.label:<{label_w}} {value:>9}  goal {g.describe()}"
                     f"  ({goal['where']})")
    return text + "\n" + "\n".join(lines)


def _memory_by_profile(runs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    """Peak memory of the growth section's largest plane (each read transport, and the
    upload), as ``N× plane`` with one column per network profile."""
    columns: list[tuple[str, dict[str, str]]] = []
    for network, sections in runs:
        growth = _ok(sections.get("growth"))
        points = [p for p in growth.get("read", []) + growth.get("upload", [])
                  if p.get("peak_vs_plane") is not None]
        cells: dict[str, str] = {}
        if points:
            largest = max(p["size"] for p in points)
            for point in points:
                if point["size"] == largest:
                    kind = "upload" if point in growth.get("upload", []) else "read"
                    cells[f"{kind} {largest}², {point['transport']}"] = (
                        f"{fmt_ratio(point['peak_vs_plane'])} ({fmt_bytes(point['peak_rss'])})")
        columns.append((network.get("name", "?"), cells))
    rows = sorted({row for _, cells in columns for row in cells})
    if not rows:
        return []
    label_w = max(len(row) for row in rows)
    width = max([14] + [len(cell) for _, cells in columns for cell in cells.values()])
    head = f"  {'':<{label_w}}" + "".join(f"  {name:>{width}}" for name, _ in columns)
    lines = ["", "Peak memory of the largest plane (peak RSS / plane), per network profile",
             "-" * len(head), head]
    for row in rows:
        lines.append(f"  {row:<{label_w}}" + "".join(
            f"  {cells.get(row, NOT_MEASURED):>{width}}" for _, cells in columns))
    return lines


def _goals_by_profile(results: Mapping[str, Any],
                      runs: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    """The goals as rows, one ``PASS 14.3×`` column per network profile."""
    columns = []
    for index, (network, sections) in enumerate(runs):
        stored = (results.get("goals") if index == 0
                  else results.get("profiles", {}).get(network.get("name"), {}).get("goals"))
        goals = stored or evaluate_goals({"sections": sections}, network.get("name"))
        columns.append((network.get("name", "?"), {g["id"]: g for g in goals}))
    label_w = max(len(f"{g.label} {g.describe()}") for g in GOALS.values())
    width = 14
    head = f"  {'':<{label_w}}" + "".join(f"  {name:>{width}}" for name, _ in columns)
    lines = ["", "Goals, per network profile", "-" * len(head), head]
    for goal_id, g in GOALS.items():
        row = f"  {f'{g.label} {g.describe()}':<{label_w}}"
        for _, by_id in columns:
            goal = by_id.get(goal_id)
            if goal is None:
                row += f"  {NOT_MEASURED:>{width}}"
                continue
            value = (fmt_percent(goal["value"]) if g.unit == "%" else fmt_ratio(goal["value"]))
            if goal["verdict"] == NOT_MEASURED:
                cell = value
            elif not goal.get("judged", True):
                cell = f"({value})"
            else:
                cell = f"{goal['verdict']} {value}"
            row += f"  {cell:>{width}}"
        lines.append(row)
    judged = [f"{g.label}: {', '.join(g.profiles)}" for g in GOALS.values() if g.profiles]
    if judged:
        lines.append("  judged only at: " + "; ".join(judged)
                     + " (figures in parentheses are for comparison)")
    return lines


# -- the plot ---------------------------------------------------------------------------------


def plot_growth(growth: Mapping[str, Any], path: Path) -> Path:
    """Read time, peak memory and TableWriter time as the work grows, in one PNG."""
    # The object-oriented API renders with Agg and never touches pyplot's global state
    # (no display needed, nothing left open in a long-lived process).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(15, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax_time, ax_mem, ax_tab = fig.subplots(1, 3)
    points = [p for p in growth.get("read", []) if "error" not in p]
    for transport in sorted({p["transport"] for p in points}):
        series = sorted((p for p in points if p["transport"] == transport),
                        key=lambda p: p["size"])
        mb = [p["plane_bytes"] / 1e6 for p in series]
        ax_time.plot(mb, [p["seconds"] for p in series], "o-", label=transport)
        ax_mem.plot(mb, [p["peak_rss"] / 1e6 for p in series], "o-",
                    label=f"peak RSS, {transport}")
        if transport == "ice":
            ax_mem.plot(mb, [p["rss_before"] / 1e6 for p in series], "s:", color="grey",
                        label="RSS before the read (ice)")
    sizes = sorted({(p["plane_bytes"] / 1e6, p["size"]) for p in points})
    if sizes:
        mbs = [mb for mb, _ in sizes]
        ax_mem.plot(mbs, mbs, "k:", label="plane size")
        ax_mem.plot(mbs, [1.5 * mb for mb in mbs], "r--", label="goal: 1.5 × plane")
    for ax, title, ylabel in ((ax_time, "Read time of one whole plane", "seconds"),
                              (ax_mem, "Peak memory of the reading process", "MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        if sizes:
            # Name the planes by their side; the axis itself stays in MB.
            ax.set_xticks([mb for mb, _ in sizes],
                          [f"{side}²\n{mb:.3g} MB" for mb, side in sizes], fontsize=7)
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("plane (uint16)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    tables = growth.get("tables", [])
    if tables:
        ax_tab.plot([p["image_sets"] for p in tables], [p["seconds"] for p in tables], "o-",
                    label="TableWriter")
    ax_tab.set_xscale("log")
    ax_tab.set_yscale("log")
    ax_tab.set_xlabel("image sets (10 rows each)")
    ax_tab.set_ylabel("seconds")
    ax_tab.set_title("Writing a 100-column table")
    ax_tab.grid(True, which="both", alpha=0.3)
    ax_tab.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
