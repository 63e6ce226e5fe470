"""Run a pipeline the way CellProfiler's GUI does in analysis mode: prepare_run in this
process, then image sets in N analysis-worker processes. Usage:

    python tests/run_with_workers.py PIPELINE FILE_LIST OUTPUT_DIR N_WORKERS
"""

from __future__ import annotations

import logging
import sys
import threading


def main(pipeline_path: str, file_list: str, output: str, workers: int) -> int:
    import cellprofiler_core.preferences as preferences

    logging.basicConfig(level=logging.INFO)
    logging.getLogger("cellprofiler.modules.exporttodatabase").setLevel(logging.ERROR)
    preferences.set_headless()
    from cellprofiler_omero.cp_integration import plugins_dir

    preferences.set_plugin_directory(str(plugins_dir()), globally=False)
    preferences.set_default_output_directory(output)
    from cellprofiler_core.analysis._analysis import Analysis
    from cellprofiler_core.analysis.event._finished import Finished
    from cellprofiler_core.image import ImageSetList
    from cellprofiler_core.measurement import Measurements
    from cellprofiler_core.pipeline import Pipeline
    from cellprofiler_core.reader import activate_readers, fill_readers
    from cellprofiler_core.utilities.core.modules import fill_modules
    from cellprofiler_core.utilities.core.plugins import load_plugins
    from cellprofiler_core.workspace import Workspace

    # Readers first: fill_modules() also loads the plugins (our reader among them), and
    # fill_readers() would clear every reader registered before it.
    fill_readers(check_config=False)
    fill_modules()
    load_plugins()
    activate_readers(check_config=False)
    pipeline = Pipeline()
    pipeline.load(pipeline_path)
    pipeline.read_file_list(file_list)
    measurements = Measurements()
    workspace = Workspace(pipeline, None, None, None, measurements, ImageSetList())
    if not pipeline.prepare_run(workspace):
        print("prepare_run failed", file=sys.stderr)
        return 2
    done = threading.Event()
    outcome: dict[str, bool] = {}

    def on_event(event: object) -> None:
        if isinstance(event, Finished):
            outcome["cancelled"] = bool(event.cancelled)
            done.set()

    analysis = Analysis(pipeline, measurements)
    analysis.start(on_event, num_workers=workers)
    if not done.wait(600):
        analysis.cancel()
        print("analysis timed out", file=sys.stderr)
        return 3
    print(f"finished: {len(measurements.get_image_numbers())} image sets, "
          f"cancelled={outcome.get('cancelled')}", flush=True)
    # The GUI keeps its workers for the next analysis; a script must stop them to exit.
    runner = analysis.runner
    if runner is not None:
        runner.stop_workers()
    return 1 if outcome.get("cancelled") else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
