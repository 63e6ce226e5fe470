"""The plugin contract as plugin authors meet it: which thread each hook runs on,
sources and sinks as async context managers, and one public module to import."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np

from cellprofiler_omero.core import runtime
from cellprofiler_omero.core.model import ColumnKind, ColumnSpec, TableSchema, TableTarget
from cellprofiler_omero.core.refs import Kind, ObjectRef
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.core.tables import TableWriter
from cellprofiler_omero.core.uploading import upload
from cellprofiler_omero.plugin import hookimpl

PLUGINS = Path(__file__).parent / "plugins"


class ThreadSpy:
    """A transport that declines everything, noting on which thread it was asked."""

    def __init__(self) -> None:
        self.asked: dict[str, bool] = {}

    def _note(self, hook: str) -> None:
        self.asked[hook] = runtime.in_loop_thread()

    @hookimpl
    def omero_open_reader(self, connection: Any, image: Any, meta: Any, settings: Any) -> None:
        self._note("omero_open_reader")

    @hookimpl
    def omero_open_uploader(self, connection: Any, settings: Any) -> None:
        self._note("omero_open_uploader")

    @hookimpl
    def omero_open_table_writer(self, connection: Any, target: Any, schema: Any,
                                settings: Any, file_id: Any) -> None:
        self._note("omero_open_table_writer")


def test_factory_hooks_run_off_the_event_loop_for_reads_uploads_and_tables(
        settings_for: Any, scratch_dataset: int, seeded: dict[str, Any]) -> None:
    settings = settings_for(transports__read=["spy", "ice"], transports__upload=["spy", "ice"],
                            transports__tables=["spy", "ice"])
    manager = SessionManager(settings)
    spy = ThreadSpy()
    manager.registry.register(spy, "spy")
    image = ObjectRef(Kind.IMAGE, seeded["fields"][0])

    async def work() -> None:
        await manager.connect(user="demo", password="demo")
        conn = await manager.connection()
        meta = await conn.image_meta(image.id)
        async with manager.registry.open_reader(conn, image, meta) as source:
            from cellprofiler_omero.core.model import PixelRequest, Region

            await source.read(PixelRequest(z=(0,), c=(0,), t=0, region=Region(0, 0, 4, 4)))
        made = await upload(manager, np.zeros((8, 8), np.uint8), name="spy",
                            dataset_id=scratch_dataset)
        assert made.id > 0  # the next transport (ice) served after the spy declined
        schema = TableSchema("spy", (ColumnSpec("n", ColumnKind.LONG),))
        writer = TableWriter(manager, TableTarget("Dataset", scratch_dataset), schema)
        await writer.append({"n": [1, 2]})
        assert (await writer.close()).rows == 2

    try:
        runtime.run(work)
    finally:
        runtime.run(manager.close)
    assert spy.asked == {"omero_open_reader": False, "omero_open_uploader": False,
                         "omero_open_table_writer": False}


def test_sources_and_sinks_close_when_their_async_with_ends(manager: SessionManager,
                                                            scratch_dataset: int) -> None:
    closed: list[str] = []

    async def work() -> None:
        conn = await manager.connection()
        sink = await manager.registry.open_uploader(conn)
        original = sink.aclose

        async def aclose() -> None:
            closed.append(type(sink).__name__)
            await original()

        sink.aclose = aclose  # type: ignore[method-assign]
        async with sink as entered:
            assert entered is sink
            await sink.upload(np.zeros((1, 1, 1, 4, 4), np.uint8),
                              _spec("closing", scratch_dataset))
        assert closed == ["IceImageSink"]

    runtime.run(work)


def _spec(name: str, dataset_id: int) -> Any:
    from cellprofiler_omero.core.model import NewImage
    from cellprofiler_omero.core.uploading import new_key

    return NewImage(name=name, client_key=new_key(), channel_names=("C0",),
                    dataset_id=dataset_id)


def test_factory_methods_of_the_registry_are_coroutines() -> None:
    import inspect

    from cellprofiler_omero.core.registry import Registry

    assert inspect.iscoroutinefunction(Registry.open_uploader)
    assert inspect.iscoroutinefunction(Registry.open_table_writer)


def test_the_test_trees_plugins_import_only_the_public_plugin_module() -> None:
    for path in sorted(PLUGINS.glob("*.py")):
        tree = ast.parse(path.read_text())
        imported = {node.module for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module}
        ours = {name for name in imported if name.startswith("cellprofiler_omero")}
        assert ours <= {"cellprofiler_omero.plugin"}, (path.name, ours)


def test_every_hook_documents_its_parameters_and_its_thread() -> None:
    import inspect

    from cellprofiler_omero.core import hookspecs

    hooks = [f for name, f in vars(hookspecs).items()
             if name.startswith("omero_") and inspect.isfunction(f)]
    assert len(hooks) >= 8
    for hook in hooks:
        doc = inspect.getdoc(hook) or ""
        for parameter in inspect.signature(hook).parameters:
            assert f"``{parameter}``" in doc, (hook.__name__, parameter)
        assert "thread" in doc, hook.__name__


def test_the_plugin_module_offers_what_the_worked_example_uses() -> None:
    import cellprofiler_omero.plugin as plugin

    for name in plugin.__all__:
        assert hasattr(plugin, name), name
    assert plugin.ENTRY_POINT_GROUP == "cellprofiler_omero"


def readme_example() -> str:
    """The worked example of README ▸ "Writing a transport" (its first Python block)."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text.split("### Writing a transport", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_worked_example_is_a_working_transport(
        tmp_path: Path, monkeypatch: Any, settings_for: Any, seeded: dict[str, Any]) -> None:
    import sys

    import tifffile

    from cellprofiler_omero.core.reading import ImageReader

    package = tmp_path / "my_cache"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "plugin.py").write_text(readme_example())
    dist = tmp_path / "my_cache-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-cache\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[cellprofiler_omero]\ntilecache = my_cache.plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_cache", raising=False)
    monkeypatch.delitem(sys.modules, "my_cache.plugin", raising=False)

    cache = tmp_path / "cache"
    settings = settings_for(transports__read=["tilecache", "ice"],
                            tilecache__folder=str(cache))
    manager = SessionManager(settings)
    cached, other = (ObjectRef(Kind.IMAGE, i) for i in seeded["fields"][:2])

    async def work() -> tuple[np.ndarray, str, str]:
        await manager.connect(user="demo", password="demo")
        meta = await (await manager.connection()).image_meta(cached.id)
        stack = np.full((meta.size_z, meta.size_c, meta.size_y, meta.size_x), 7,
                        dtype=meta.pixel_type.dtype)
        cache.mkdir()
        tifffile.imwrite(cache / f"{manager.info.server.host}-{cached.id}.tif", stack)
        first, second = ImageReader(manager, cached), ImageReader(manager, other)
        data = await first.read(c=[0])
        await second.read(c=[0])
        names = first.transport, second.transport
        await first.aclose()
        await second.aclose()
        return data, *names

    try:
        data, first, second = runtime.run(work)
    finally:
        runtime.run(manager.close)
    assert (first, second) == ("tilecache", "ice")  # an image not in the cache: declined
    assert (data == 7).all()
    assert settings.section("tilecache").folder == str(cache)
