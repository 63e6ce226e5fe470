"""The benchmark harness: formatting and goals (fast), and one whole ``--quick`` run (slow).

Nothing here asserts a timing: the figures depend on the machine. The quick run checks
that every section ran and produced numbers, that the plot exists and that the table
states a verdict beside the goals.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cellprofiler_omero.benchmarks import harness, report, timing
from cellprofiler_omero.benchmarks.paths_e2e import PipelineRun, follow, last_module

# -- formatting -------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "text"), [
    (18.72, "18.7×"), (0.934, "0.93×"), (1.0, "1.00×"), (123.4, "123×"), (10.0, "10.0×"),
    (None, "n/a"), (math.nan, "n/a"), (math.inf, "n/a"),
])
def test_fmt_ratio(value: float | None, text: str) -> None:
    assert report.fmt_ratio(value) == text


@pytest.mark.parametrize(("value", "text"), [
    (4.26, "+4.3 %"), (-2.14, "-2.1 %"), (0.0, "+0.0 %"), (None, "n/a"),
])
def test_fmt_percent_always_shows_the_sign(value: float | None, text: str) -> None:
    assert report.fmt_percent(value) == text


def test_fmt_rate_bytes_and_seconds() -> None:
    assert report.fmt_rate(412.34) == "412.3 MB/s"
    assert report.fmt_rate(1234.5) == "1,234 MB/s"
    assert report.fmt_rate(2.5, "sets/s") == "2.50 sets/s"
    assert report.fmt_rate(None) == "n/a"
    assert report.fmt_bytes(75_497_472) == "75.5 MB"
    assert report.fmt_bytes(536_870_912) == "536.9 MB"
    assert report.fmt_bytes(2_100_000) == "2.10 MB"
    assert report.fmt_bytes(512) == "512 B"
    assert report.fmt_seconds(0.2531) == "0.253 s"
    assert report.fmt_seconds(12.44) == "12.4 s"
    assert report.fmt_seconds(123) == "2 min 03 s"


def test_ratio_and_overhead() -> None:
    assert report.ratio(10.0, 4.0) == 2.5
    assert report.ratio(1.0, 0.0) is None
    assert report.ratio(None, 1.0) is None
    assert report.overhead_percent(1.1, 1.0) == pytest.approx(10.0)
    assert report.overhead_percent(0.9, 1.0) == pytest.approx(-10.0)
    assert report.overhead_percent(1.0, None) is None


def test_goal_verdicts_and_wording() -> None:
    at_least = report.GOALS["read_ice_vs_common"]
    at_most = report.GOALS["read_overhead_vs_bare"]
    assert at_least.verdict(10.0) == report.PASS
    assert at_least.verdict(9.99) == report.MISS
    assert at_least.verdict(None) == report.NOT_MEASURED
    assert at_most.verdict(10.0) == report.PASS
    assert at_most.verdict(10.5) == report.MISS
    assert at_least.describe() == "≥ 10×"
    assert at_most.describe() == "≤ 10 %"
    assert report.GOALS["e2e_io_omero_vs_local"].describe() == "≥ 0.95×"
    assert report.GOALS["save_omero_vs_local_disk"].describe() == "≤ 1.05×"


def test_goals_are_judged_at_the_profiles_issue_17_names() -> None:
    goals = report.GOALS
    for goal_id in ("read_ice_vs_common", "read_cpreader_vs_common"):
        assert goals[goal_id].profiles == ("loopback", "campus")
    for goal_id in ("upload_2d_vs_blitz", "upload_zstack_vs_blitz",
                    "tables_vs_per_image_set", "tables_vs_single_add"):
        assert goals[goal_id].profiles == ("campus",)
    assert goals["e2e_io_omero_vs_local"].profiles == ("campus", "wan")
    assert goals["save_omero_vs_local_disk"].profiles == ("wan",)
    assert goals["peak_memory_vs_plane"].judged_at("lan")  # every profile
    assert not goals["save_omero_vs_local_disk"].judged_at("campus")


# -- goals from a results dictionary -----------------------------------------------------------


def _timing(seconds: float, amount: float = 1e8, unit: str = "MB/s") -> dict[str, Any]:
    return timing.Timing(amount, unit, [seconds]).to_json()


def _results() -> dict[str, Any]:
    """A small, made-up but complete results dictionary."""
    return {
        "meta": {"mode": "full", "duration_s": 200.0,
                 "target": {"kind": "emulator", "host": "127.0.0.1", "port": 4064},
                 "machine": {"cpu_count": 2, "python": "3.11.7",
                             "packages": {"numpy": "1.26.4"}}},
        "sections": {
            "read": {"status": "ok",
                     "workload": {"images": 3, "repetitions": 5, "bytes_per_pass": 75e6},
                     "paths": {"common": _timing(4.0), "bare": _timing(0.2),
                               "ice": _timing(0.25), "pixelbuffer": {"error": "Boom: no"}},
                     "warm": {"ice": _timing(0.2)},
                     "ratios": {"ice_vs_common": 16.0, "ice_overhead_vs_bare_pct": 25.0,
                                "pixelbuffer_vs_ice": None, "bare_vs_common": 20.0}},
            "upload": {"status": "ok", "repetitions": 3, "cases": {
                "a": {"label": "2D", "bytes": 1e6, "blitz": _timing(1.0),
                      "ours": _timing(0.2), "ratio": 5.0},
                "b": {"label": "Z-stack", "bytes": 1e6, "blitz": _timing(1.0),
                      "ours": _timing(0.5), "ratio": 2.0}}},
            "tables": {"status": "ok", "columns": 100, "rows_per_image_set": 10, "cases": {
                "10000": {"rows": 10_000, "per_image_set": _timing(3.0, 1e4, "rows/s"),
                          "table_writer": _timing(0.1, 1e4, "rows/s"), "ratio": 30.0},
                "100000": {"rows": 100_000, "per_image_set": _timing(30.0, 1e5, "rows/s"),
                           "table_writer": _timing(3.0, 1e5, "rows/s"), "ratio": 10.0}}},
            "e2e": {"status": "skipped", "reason": "CellProfiler is not installed"},
            "ceilings": {"status": "error", "error": "OSError: no sockets"},
            "growth": {"status": "ok", "read": [
                {"size": 1024, "transport": "ice", "plane_bytes": 2 * 1024**2, "seconds": 0.01,
                 "peak_rss": 100e6, "peak_vs_plane": 47.7, "read_rss_delta": 4e6,
                 "rss_before": 96e6},
                {"size": 16384, "transport": "ice", "plane_bytes": 2 * 16384**2,
                 "seconds": 1.4, "peak_rss": 700e6, "peak_vs_plane": 1.3,
                 "read_rss_delta": 6e8, "rss_before": 1e8},
                {"size": 16384, "transport": "pixelbuffer", "error": "RuntimeError: x"}],
                "tables": [{"image_sets": 10, "rows": 100, "seconds": 0.05,
                            "rows_per_s": 2000.0}]},
        },
    }


def test_goals_are_judged_on_the_right_figures() -> None:
    goals = {g["id"]: g for g in report.evaluate_goals(_results())}
    assert goals["read_ice_vs_common"]["verdict"] == report.PASS
    assert goals["read_overhead_vs_bare"]["verdict"] == report.MISS
    assert goals["read_pixelbuffer_vs_ice"]["verdict"] == report.NOT_MEASURED
    # Each upload shape has its own goal; the 10k-row table case decides.
    assert goals["upload_2d_vs_blitz"]["value"] == 5.0
    assert goals["upload_zstack_vs_blitz"]["value"] == 2.0
    assert "Z-stack" in goals["upload_zstack_vs_blitz"]["where"]
    assert goals["tables_vs_per_image_set"]["value"] == 30.0
    assert goals["tables_vs_per_image_set"]["verdict"] == report.PASS
    # A skipped section gives n/a, never a verdict.
    assert goals["e2e_omero_vs_local"]["verdict"] == report.NOT_MEASURED
    # The largest plane read over Ice is the memory goal's figure.
    assert goals["peak_memory_vs_plane"]["value"] == 1.3
    assert "16384" in goals["peak_memory_vs_plane"]["where"]


def test_summary_shows_verdicts_errors_and_skips() -> None:
    text = report.summary(_results())
    assert "PASS" in text and "MISS" in text and "n/a" in text
    assert "SKIPPED: CellProfiler is not installed" in text
    assert "ERROR: OSError: no sockets" in text
    assert "(d) pixel-buffer transport (ImageReader)" in text and "Boom" in text
    assert "+25.0 %" in text and "16.0×" in text
    assert "goal ≤ 1.5×" in text


def test_the_quick_header_warns_that_its_figures_mean_nothing() -> None:
    results = _results()
    results["meta"]["mode"] = "quick"
    assert "tiny data" in report.header(results)


def test_plot_is_written(tmp_path: Path) -> None:
    path = report.plot_growth(_results()["sections"]["growth"], tmp_path / "g.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- timing ------------------------------------------------------------------------------------


def test_repeat_times_only_after_the_warmup() -> None:
    calls: list[int] = []

    def one_pass() -> float:
        calls.append(1)
        return 2e6

    result = timing.repeat(one_pass, repetitions=3, warmup=2)
    assert len(calls) == 5 and len(result.seconds) == 3
    assert result.to_json()["amount"] == 2e6
    assert result.rate(2.0) == pytest.approx(1.0)  # 2 MB in 2 s


def test_measure_records_a_failing_path_instead_of_raising() -> None:
    def broken() -> Any:
        raise ValueError("the server went away")

    assert timing.measure(broken, repetitions=1) == {
        "error": "ValueError: the server went away"}


def test_interleaved_paths_take_turns_and_a_failure_leaves_the_rotation() -> None:
    import contextlib

    order: list[str] = []

    def path(name: str, fail_on: int | None = None) -> Any:
        @contextlib.contextmanager
        def opened() -> Any:
            count = [0]

            def one_pass() -> float:
                count[0] += 1
                if fail_on is not None and count[0] == fail_on:
                    raise RuntimeError("dropped")
                order.append(name)
                return 1.0

            yield one_pass

        return opened

    out = timing.measure_interleaved({"a": path("a"), "b": path("b", fail_on=2)},
                                     repetitions=2, warmup=1)
    assert order == ["a", "b", "a", "a"]
    assert len(out["a"]["seconds"]) == 2
    assert out["b"] == {"error": "RuntimeError: dropped"}


def test_long_rounds_get_fewer_repetitions_but_never_fewer_than_three() -> None:
    assert timing.adaptive_rounds(7, round_seconds=0.5, budget_s=25) == 7
    assert timing.adaptive_rounds(7, round_seconds=5.0, budget_s=25) == 5
    assert timing.adaptive_rounds(7, round_seconds=10.0, budget_s=25) == 3
    assert timing.adaptive_rounds(7, round_seconds=10.0, budget_s=None) == 7
    assert timing.adaptive_rounds(2, round_seconds=10.0, budget_s=25) == 2  # asked for 2
    # No budget left at all: the first round still leaves three timed ones.
    out = timing.measure_interleaved({"a": _counting_path()}, repetitions=7, warmup=1,
                                     budget_s=0.0)
    assert len(out["a"]["seconds"]) == 3


def _counting_path() -> Any:
    import contextlib

    @contextlib.contextmanager
    def opened() -> Any:
        yield lambda: 1.0

    return opened


def test_each_profile_runs_what_a_goal_judges_there() -> None:
    from cellprofiler_omero.benchmarks.target import PROFILES

    profiles = list(PROFILES.values())  # loopback, lan, campus, wan
    plans = {p.name: harness.plan_for(harness.FULL, p, profiles) for p in profiles}
    skipped = {name: set(left_out) for name, (_, left_out) in plans.items()}
    assert skipped == {"loopback": {"upload", "tables", "e2e"},
                       "lan": {"upload", "tables", "e2e", "rois"},
                       "campus": {"rois"},
                       "wan": {"upload", "tables", "rois"}}
    for name, (plan, _) in plans.items():
        judged = name in ("loopback", "campus")  # the read goals against the common way
        assert (plan.read.common, plan.read.cpreader, plan.read.warm) == (judged,) * 3
        # The largest plane's peak memory is judged everywhere; the curve comes once.
        assert max(plan.growth.sizes) == max(harness.FULL.growth.sizes)
        assert (len(plan.growth.sizes) > 1) == plan.growth.upload == (name == "loopback")
    # A run under one profile that judges none of them still measures every figure.
    lan = [PROFILES["lan"]]
    plan, left_out = harness.plan_for(harness.FULL, lan[0], lan)
    assert left_out == {} and plan.read.common and plan.growth == harness.FULL.growth


def test_the_table_ends_with_the_time_each_section_took() -> None:
    results = {"meta": {"duration_s": 130.0,
                        "networks": [{"name": "loopback"}, {"name": "wan"}]},
               "sections": {"read": {"status": "ok", "section_seconds": 17.0},
                            "e2e": {"status": "skipped", "reason": "not here"}},
               "profiles": {"wan": {"sections": {
                   "read": {"status": "ok", "section_seconds": 45.0},
                   "e2e": {"status": "ok", "section_seconds": 60.0}}}}}
    lines = report.time_budget(results)
    assert any(line.split()[:4] == ["loopback", "17", "s:", "read"] for line in lines)
    assert any(line.split()[:2] == ["wan", "105"] and "e2e 60" in line for line in lines)
    assert "122 s in sections, 2 min 10 s in all" in lines[-1]


# -- CellProfiler log following ----------------------------------------------------------------


def test_follow_counts_image_sets_over_the_processing_window() -> None:
    pipeline = "Images:[module_num:1|]\nX:[module_num:7|]\n"
    assert last_module(pipeline) == 7
    lines = [
        "[CP - INFO] numexpr: starting\n",
        "[CP - WARNING] cellprofiler_core.modules.images::filter_file_list: empty\n",
        "[CP - INFO] run_with_yield: Tue: Image # 1, module Images # 1: CPU_time = 0\n",
        "[CP - INFO] run_with_yield: Tue: Image # 1, module MeasureObjectIntensity # 7: x\n",
        "[CP - INFO] run_with_yield: Tue: Image # 2, module MeasureObjectIntensity # 7: x\n",
        "[CP - INFO] stop_java\n",
    ]
    ticks = iter([1.0, 3.0, 4.0, 5.0, 7.0, 8.0])
    run = PipelineRun()
    follow(lines, 0.0, 7, run, clock=lambda: next(ticks))
    assert run.window_start_s == 3.0 and run.window_end_s == 7.0
    assert run.completed == {1, 2}
    assert run.to_json()["sets_per_s"] == pytest.approx(0.5)
    # The first set ends 2 s into the window; the one set after it takes 2 s more.
    assert run.to_json()["first_set_s"] == pytest.approx(2.0)
    assert run.to_json()["steady_sets_per_s"] == pytest.approx(0.5)


# -- the command line --------------------------------------------------------------------------


def test_own_server_needs_images(capsys: pytest.CaptureFixture[str]) -> None:
    assert harness.main(["--host", "omero.example.org", "--user", "me",
                         "--password", "x"]) == 2
    assert "--images" in capsys.readouterr().err


def test_bad_image_reference_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert harness.main(["--images", "Dataset:3"]) == 2
    assert "error:" in capsys.readouterr().err


def test_show_prints_a_saved_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(_results()))
    assert harness.main(["--show", str(saved)]) == 0
    assert "Goals" in capsys.readouterr().out


def test_failures_are_found_inside_sections() -> None:
    found = harness.failures(_results())
    assert any(f.startswith("read.paths.pixelbuffer") for f in found)
    assert any(f.startswith("ceilings:") for f in found)
    assert any("growth.read[2]" in f for f in found)


def test_no_token_and_no_user_is_one_clear_error(token_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert harness.main(["--images", "Image:1"]) == 1
    err = capsys.readouterr().err
    assert "error: No --user given and no saved token" in err


# -- one whole quick run -----------------------------------------------------------------------


def _numbers(timing_json: dict[str, Any]) -> bool:
    return "error" not in timing_json and all(
        isinstance(timing_json[k], float) and timing_json[k] > 0
        for k in ("median_s", "best_s", "median_rate"))


@pytest.mark.slow
@pytest.mark.cellprofiler
def test_quick_run_measures_every_path(tmp_path: Path) -> None:
    # In its own process, as `cellprofiler-omero bench` runs: the run builds CellProfiler
    # pipelines in-process, which must not leave this test process's CellProfiler
    # module registry without this package's plugins for the tests after it.
    done = subprocess.run([sys.executable, "-m", "cellprofiler_omero.benchmarks", "--quick",
                           "--output", str(tmp_path)], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "PASS" in out or "MISS" in out
    assert "Goals" in out

    (json_path,) = tmp_path.glob("bench-quick-*.json")
    results = json.loads(json_path.read_text())
    machine = results["meta"]["machine"]
    assert machine["cpu_count"] >= 1 and machine["python"]
    for package in ("numpy", "omero-py", "zeroc-ice", "cellprofiler-core",
                    "cellprofiler-omero"):
        assert machine["packages"][package], package

    sections = results["sections"]
    assert set(sections) == set(harness.SECTIONS)
    assert all(s["status"] == "ok" for s in sections.values()), sections

    read = sections["read"]
    for path in ("common", "bare", "ice", "pixelbuffer"):
        assert _numbers(read["paths"][path]), path
        # Each timed pass counted its round trips (the emulator's counter), shown in the table.
        assert read["paths"][path]["round_trips_per_pass"] > 0, path
    assert "RawPixelsStore.getPlane" in read["paths"]["common"]["round_trips"]
    assert "HTTP GET /tile" in read["paths"]["pixelbuffer"]["round_trips"]
    assert "round trips of one common pass: " in out and " calls" in out
    assert results["meta"]["networks"] == [{"name": "loopback", "latency_ms": 0.0,
                                            "bandwidth_mbit": 0.0}]
    # (e) reads through CellProfiler's reader API, which reads through Ice.
    assert read["transports_used"] == {"ice": ["ice"], "pixelbuffer": ["pixelbuffer"],
                                       "cpreader": ["ice"]}
    assert _numbers(read["paths"]["cpreader"])
    assert isinstance(read["ratios"]["cpreader_vs_common"], float)
    for key in ("ice_vs_common", "pixelbuffer_vs_common", "pixelbuffer_vs_ice",
                "ice_overhead_vs_bare_pct"):
        assert isinstance(read["ratios"][key], float), key

    for case in sections["upload"]["cases"].values():
        assert _numbers(case["blitz"]) and _numbers(case["ours"])
        assert case["ratio"] > 0
    assert len(sections["upload"]["cases"]) == 2

    for case in sections["tables"]["cases"].values():
        assert _numbers(case["per_image_set"]) and _numbers(case["table_writer"])

    e2e = sections["e2e"]
    for runs, keys in ((e2e["io"], ("local", "omero")), (e2e["save"], ("local_disk", "omero"))):
        for key in keys:
            assert runs[key]["image_sets"] == e2e["image_sets"] and runs[key]["to_end_s"] > 0
        assert runs["ratio"] > 0
    assert "local" not in e2e  # the compute-bound pipeline is not run by --quick

    run = sections["run"]  # the Dask run: 1 then 2 workers, the OMERO cost per image set
    assert run["workers"]["1"]["image_sets"] == run["workers"]["2"]["image_sets"] == 2
    assert run["ratio"] > 0 and run["per_image_set"]["ice_calls"] > 0
    assert "RawPixelsStore.getTile" in run["per_image_set"]["calls_by_operation"]

    assert _numbers(sections["ceilings"]["socket"]) and _numbers(sections["ceilings"]["decode"])

    growth = sections["growth"]
    assert {(p["size"], p["transport"]) for p in growth["read"]} == {
        (s, t) for s in (256, 1024) for t in ("ice", "pixelbuffer")}
    for point in growth["read"]:
        assert point["seconds"] > 0 and point["peak_rss"] >= point["rss_before"] > 0
        assert point["bytes"] == point["plane_bytes"]
    assert [p["image_sets"] for p in growth["tables"]] == [10, 100]
    (uploaded,) = growth["upload"]  # the largest plane, uploaded by a fresh process
    assert uploaded["size"] == 1024 and uploaded["peak_rss"] >= uploaded["rss_before"] > 0
    assert Path(growth["plot"]).is_file()
    assert Path(growth["plot"]).read_bytes()[:4] == b"\x89PNG"

    assert {g["id"] for g in results["goals"]} == set(report.GOALS)
    assert all(g["verdict"] in (report.PASS, report.MISS) for g in results["goals"]
               if g["id"] != "e2e_omero_vs_local"), results["goals"]
    assert (tmp_path / json_path.name.replace(".json", ".txt")).is_file()
