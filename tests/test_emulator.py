"""The emulator, exercised only through unmodified omero-py clients over the network."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import omero
import omero.clients
import pytest

from cellprofiler_omero.emulator import Emulator, SeedOptions, synthetic
from tests.conftest import TEST_SEED, pixels_of


def field_pixels(index: int) -> np.ndarray:
    pixels, _ = synthetic.nuclei_and_cells(TEST_SEED.seed * 1000 + index, TEST_SEED.field_size)
    return pixels


# -- connecting ---------------------------------------------------------------------------

def test_blitzgateway_connects_over_the_insecure_router_by_default(blitz: Any,
                                                                  emulator: Emulator) -> None:
    conn = blitz()
    router = conn.c.getProperty("Ice.Default.Router")
    assert f"tcp -p {emulator.insecure_port}" in router
    assert conn.getUser().getName() == "demo"


def test_blitzgateway_connects_securely_when_asked(blitz: Any, emulator: Emulator) -> None:
    conn = blitz(secure=True)
    assert f"ssl -p {emulator.port}" in conn.c.getProperty("Ice.Default.Router")
    assert conn.getEventContext().userName == "demo"


def test_wrong_password_is_refused(emulator: Emulator) -> None:
    import Glacier2

    client = omero.client(emulator.host, emulator.port)
    try:
        with pytest.raises(Glacier2.PermissionDeniedException):
            client.createSession("demo", "wrong")
    finally:
        client.__del__()


def test_event_context_names_user_groups_and_admin(blitz: Any) -> None:
    ec = blitz("root", "omero").getEventContext()
    assert ec.isAdmin and ec.userName == "root"
    demo = blitz().getEventContext()
    assert not demo.isAdmin and demo.groupName == "demo"
    assert set(demo.memberOfGroups) >= {3, 5}


# -- browsing -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind,key,name", [
    ("Project", "project", "CellProfiler demo"),
    ("Dataset", "dataset", "Nuclei and cytoplasm"),
    ("Screen", "screen", "Demo screen"),
    ("Plate", "plate", "Plate 1"),
])
def test_get_object_finds_each_container(blitz: Any, seeded: dict[str, Any], kind: str,
                                         key: str, name: str) -> None:
    obj = blitz().getObject(kind, seeded[key])
    assert obj is not None and obj.getName() == name
    assert obj.getOwner().getName() == "demo"


def test_get_object_finds_images_and_wells(blitz: Any, seeded: dict[str, Any]) -> None:
    conn = blitz()
    image = conn.getObject("Image", seeded["fields"][0])
    assert (image.getName(), image.getSizeX(), image.getSizeC()) == ("field_01", 512, 2)
    well = conn.getObject("Well", seeded["wells"]["B02"])
    assert (well.row, well.column) == (1, 1)


def test_list_children_walks_the_hierarchy(blitz: Any, seeded: dict[str, Any]) -> None:
    conn = blitz()
    project = conn.getObject("Project", seeded["project"])
    names = sorted(d.getName() for d in project.listChildren())
    assert names == ["Histology", "Large", "Nuclei and cytoplasm", "Pixel types", "Z stack"]
    dataset = conn.getObject("Dataset", seeded["dataset"])
    names = [i.getName() for i in dataset.listChildren()]
    assert [n for n in names if n.startswith("field_")] == ["field_01", "field_02",
                                                            "field_03"]
    screen = conn.getObject("Screen", seeded["screen"])
    assert [p.getName() for p in screen.listChildren()] == ["Plate 1"]
    plate = conn.getObject("Plate", seeded["plate"])
    wells = sorted((w.row, w.column) for w in plate.listChildren())
    assert wells == [(r, c) for r in range(2) for c in range(3)]
    well = conn.getObject("Well", seeded["wells"]["A01"])
    assert [ws.getImage().getName() for ws in well.listChildren()] == ["A01_f0", "A01_f1"]


def test_channels_have_names_and_colours(blitz: Any, seeded: dict[str, Any]) -> None:
    image = blitz().getObject("Image", seeded["fields"][0])
    channels = image.getChannels()
    assert [c.getLabel() for c in channels] == ["DAPI", "Cytoplasm"]
    assert channels[0].getColor().getRGB() == (0, 0, 255)


# -- pixels over Ice ----------------------------------------------------------------------

def test_get_plane_is_byte_identical_to_the_seeded_array(blitz: Any,
                                                         seeded: dict[str, Any]) -> None:
    image = blitz().getObject("Image", seeded["fields"][1])
    expected = field_pixels(1)
    pixels = image.getPrimaryPixels()
    for c in range(2):
        plane = pixels.getPlane(0, c, 0)
        assert plane.dtype == np.uint16
        np.testing.assert_array_equal(plane, expected[c])


def test_get_tile_is_byte_identical_to_the_seeded_array(blitz: Any,
                                                        seeded: dict[str, Any]) -> None:
    image = blitz().getObject("Image", seeded["fields"][0])
    tile = image.getPrimaryPixels().getTile(0, 1, 0, (100, 50, 64, 32))
    np.testing.assert_array_equal(tile, field_pixels(0)[1, 50:82, 100:164])


@pytest.mark.parametrize("ptype", ["int8", "uint8", "int16", "uint16", "int32", "uint32",
                                   "float", "double", "bit"])
def test_every_pixel_type_reads_back_exactly(emulator: Emulator, seeded: dict[str, Any],
                                             ptype: str) -> None:
    client = omero.client(emulator.host, emulator.port)
    try:
        sf = client.createSession("demo", "demo")
        store = sf.createRawPixelsStore()
        store.setPixelsId(pixels_of(sf, seeded["types"][ptype]), True)
        raw = store.getPlane(0, 0, 0)
        expected = synthetic.every_type(TEST_SEED.seed, 64)[ptype]
        wire = {"bit": np.uint8}.get(ptype, expected.dtype.newbyteorder(">"))
        got = np.frombuffer(raw, dtype=wire).reshape(expected.shape)
        np.testing.assert_array_equal(got.astype(expected.dtype), expected)
        store.close()
    finally:
        client.closeSession()


def test_pyramid_levels_are_served_smallest_first(emulator: Emulator,
                                                  seeded: dict[str, Any]) -> None:
    client = omero.client(emulator.host, emulator.port)
    try:
        sf = client.createSession("demo", "demo")
        store = sf.createRawPixelsStore()
        store.setPixelsId(pixels_of(sf, seeded["large"]), True)
        levels = store.getResolutionLevels()
        descriptions = [(d.sizeX, d.sizeY) for d in store.getResolutionDescriptions()]
        assert levels == len(descriptions) > 1
        assert descriptions[0] == (4096, 4096) and descriptions[1] == (2048, 2048)
        full = synthetic.large(TEST_SEED.seed, 4096)
        store.setResolutionLevel(levels - 2)  # the 2048² level
        tile = np.frombuffer(store.getTile(0, 0, 0, 0, 0, 256, 256), ">u2").reshape(256, 256)
        np.testing.assert_array_equal(tile, full[0:512:2, 0:512:2])
        store.close()
    finally:
        client.closeSession()


def test_create_image_from_numpy_seq_round_trips(blitz: Any, scratch_dataset: int) -> None:
    conn = blitz()
    rng = np.random.default_rng(5)
    planes = [rng.integers(0, 4000, (40, 30), dtype=np.uint16) for _ in range(3)]
    dataset = conn.getObject("Dataset", scratch_dataset)
    image = conn.createImageFromNumpySeq(iter(planes), "roundtrip", sizeZ=1, sizeC=3, sizeT=1,
                                         dataset=dataset)
    again = conn.getObject("Image", image.getId())
    assert (again.getSizeX(), again.getSizeY(), again.getSizeC()) == (30, 40, 3)
    for c in range(3):
        np.testing.assert_array_equal(again.getPrimaryPixels().getPlane(0, c, 0), planes[c])
    assert image.getId() in [i.getId() for i in
                             conn.getObject("Dataset", scratch_dataset).listChildren()]


# -- sessions -----------------------------------------------------------------------------

def test_second_client_joins_by_session_key(emulator: Emulator) -> None:
    first = omero.client(emulator.host, emulator.port)
    second = omero.client(emulator.host, emulator.port)
    try:
        first.createSession("demo", "demo")
        key = first.getSessionId()
        sf = second.joinSession(key)
        assert sf.getAdminService().getEventContext().userName == "demo"
        assert sf.getSessionService().getReferenceCount(key) == 2
    finally:
        second.closeSession()
        first.closeSession()


def test_omero_user_token_setter_then_join(emulator: Emulator, token_dir: Path) -> None:
    import omero_user_token

    token = omero_user_token.setter(emulator.host, emulator.port, "demo", "demo", 600_000)
    assert (token_dir / "token").read_text() == token
    client = omero_user_token.login(token)
    try:
        assert client.getSession().getAdminService().getEventContext().userName == "demo"
    finally:
        client.closeSession()
    # The token's session survives the client that used it (it was detached).
    again = omero_user_token.login(token)
    try:
        assert again.getSession().getAdminService().getEventContext().userName == "demo"
    finally:
        again.closeSession()


def test_kill_session_closes_all_references(emulator: Emulator) -> None:
    first = omero.client(emulator.host, emulator.port)
    second = omero.client(emulator.host, emulator.port)
    first.createSession("demo", "demo")
    key = first.getSessionId()
    second.joinSession(key)
    assert second.killSession() >= 2
    third = omero.client(emulator.host, emulator.port)
    try:
        import Glacier2

        with pytest.raises(Glacier2.PermissionDeniedException):
            third.joinSession(key)
    finally:
        third.__del__()
        first.__del__()


@pytest.fixture(scope="module")
def short_lived(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An emulator whose sessions expire after 1.5 idle seconds."""
    data = tmp_path_factory.mktemp("short")
    with Emulator(data, seed="users", session_timeout=1.5) as emu:
        yield emu


def test_idle_sessions_expire(short_lived: Emulator) -> None:
    client = omero.client(short_lived.host, short_lived.port)
    try:
        sf = client.createSession("demo", "demo")
        client.stopKeepAlive()
        assert sf.getAdminService().getEventContext().userName == "demo"
        time.sleep(2.5)
        import Ice

        with pytest.raises(Ice.ObjectNotExistException):
            sf.getAdminService().getEventContext()
    finally:
        client.__del__()


# -- permissions --------------------------------------------------------------------------

def test_other_cannot_read_demos_private_image(blitz: Any, seeded: dict[str, Any]) -> None:
    conn = blitz("other")
    conn.SERVICE_OPTS.setOmeroGroup(-1)
    assert conn.getObject("Image", seeded["fields"][0]) is None


def test_other_cannot_open_demos_pixels(emulator: Emulator, seeded: dict[str, Any]) -> None:
    client = omero.client(emulator.host, emulator.port)
    try:
        sf = client.createSession("other", "other")
        store = sf.createRawPixelsStore()
        with pytest.raises(omero.SecurityViolation):
            # other cannot even look the Pixels id up, but may guess it.
            from cellprofiler_omero.emulator.modelmap import pixels_id

            store.setPixelsId(pixels_id(seeded["fields"][0]), True, {"omero.group": "-1"})
    finally:
        client.closeSession()


def test_other_cannot_link_into_demos_dataset(blitz: Any, seeded: dict[str, Any]) -> None:
    conn = blitz("other")
    link = omero.model.DatasetImageLinkI()
    link.parent = omero.model.DatasetI(seeded["shared_dataset"], False)
    link.child = omero.model.ImageI(seeded["shared_image"], False)
    conn.SERVICE_OPTS.setOmeroGroup(5)
    with pytest.raises(omero.SecurityViolation):
        conn.getUpdateService().saveObject(link, conn.SERVICE_OPTS)


def test_shared_read_annotate_group_is_readable_by_both(blitz: Any,
                                                        seeded: dict[str, Any]) -> None:
    for user in ("demo", "other"):
        conn = blitz(user)
        conn.SERVICE_OPTS.setOmeroGroup(-1)
        image = conn.getObject("Image", seeded["shared_image"])
        assert image is not None and image.getName() == "shared_field"


def test_other_sees_only_own_projects(blitz: Any) -> None:
    conn = blitz("other")
    conn.SERVICE_OPTS.setOmeroGroup(-1)
    assert [p.getName() for p in conn.getObjects("Project")] == ["Other's project"]


# -- unimplemented operations -------------------------------------------------------------

def test_unimplemented_operation_answers_api_usage_at_once(blitz: Any) -> None:
    conn = blitz()
    started = time.monotonic()
    with pytest.raises(omero.ApiUsageException, match="not implemented by the emulator"):
        conn.getRoiService().getRoiMeasurements(1, None)
    assert time.monotonic() - started < 1.0


def test_unsupported_hql_answers_api_usage_naming_the_query(blitz: Any) -> None:
    conn = blitz()
    with pytest.raises(omero.ApiUsageException, match="select s from Nonsense"):
        conn.getQueryService().findAllByQuery("select s from Nonsense s", None)


# -- OMERO.tables -------------------------------------------------------------------------

def _make_table(sf: Any, name: str) -> Any:
    table = sf.sharedResources().newTable(1, name)
    cols = [omero.grid.LongColumn("Image", "", []), omero.grid.DoubleColumn("Area", "", []),
            omero.grid.StringColumn("Label", "", 8, [])]
    table.initialize(cols)
    cols[0].values, cols[1].values, cols[2].values = [1, 2, 3], [1.5, 2.5, 3.5], ["a", "b", "c"]
    table.addData(cols)
    return table


def test_tables_create_add_read_and_query(emulator: Emulator) -> None:
    client = omero.client(emulator.host, emulator.port)
    try:
        sf = client.createSession("demo", "demo")
        table = _make_table(sf, "measurements.h5")
        assert table.getNumberOfRows() == 3
        assert [h.name for h in table.getHeaders()] == ["Image", "Area", "Label"]
        data = table.read([0, 1, 2], 0, 3)
        assert list(data.columns[1].values) == [1.5, 2.5, 3.5]
        assert list(table.getWhereList("(Area > 2)", {}, 0, 3, 1)) == [1, 2]
        ofile = table.getOriginalFile()
        assert ofile.mimetype.val == "OMERO.tables"
        table.close()
    finally:
        client.closeSession()


def test_tables_survive_a_restart(tmp_path: Path) -> None:
    with Emulator(tmp_path / "data", seed="users") as emu:
        client = omero.client(emu.host, emu.port)
        sf = client.createSession("demo", "demo")
        table = _make_table(sf, "persist.h5")
        file_id = table.getOriginalFile().id.val
        table.close()
        client.closeSession()
        emu.restart()
        client = omero.client(emu.host, emu.port)
        try:
            sf = client.createSession("demo", "demo")
            again = sf.sharedResources().openTable(omero.model.OriginalFileI(file_id, False))
            assert again.getNumberOfRows() == 3
            assert list(again.read([2], 0, 3).columns[0].values) == ["a", "b", "c"]
            again.close()
        finally:
            client.closeSession()


def test_omero2pandas_reads_a_table(blitz: Any, emulator: Emulator) -> None:
    import omero2pandas

    conn = blitz()
    table = _make_table(conn.c.sf, "for_pandas.h5")
    file_id = table.getOriginalFile().id.val
    table.close()
    frame = omero2pandas.read_table(file_id=file_id, omero_connector=conn)
    assert list(frame.columns) == ["Image", "Area", "Label"]
    assert frame["Area"].tolist() == [1.5, 2.5, 3.5]


def test_images_survive_a_restart(tmp_path: Path) -> None:
    tiny = SeedOptions(fields=1, field_size=64, large_size=0, plate_rows=1, plate_columns=1,
                       plate_fields=1, plate_field_size=32)
    with Emulator(tmp_path / "data", seed_options=tiny) as emu:
        first = emu.seeded["fields"][0]
        emu.restart()
        client = omero.client(emu.host, emu.port)
        try:
            sf = client.createSession("demo", "demo")
            store = sf.createRawPixelsStore()
            store.setPixelsId(pixels_of(sf, first), True)
            plane = np.frombuffer(store.getPlane(0, 0, 0), ">u2").reshape(64, 64)
            expected, _ = synthetic.nuclei_and_cells(tiny.seed * 1000, 64)
            np.testing.assert_array_equal(plane, expected[0])
        finally:
            client.closeSession()


# -- the omero command line ---------------------------------------------------------------

def test_omero_command_line_logs_in_and_queries(emulator: Emulator, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # The `omero` script refuses to run as root (as on this CI machine); its CLI class,
    # which the script runs, is used directly with the same arguments.
    from omero.cli import CLI

    monkeypatch.setenv("OMERO_USERDIR", str(tmp_path / "omero-cli"))
    cli = CLI()
    cli.loadplugins()
    cli.invoke(["login", "-s", emulator.host, "-p", str(emulator.port), "-u", "demo", "-w",
                "demo"], strict=True)
    cli.invoke(["hql", "-q", "--limit", "2", "select i.id, i.name from Image i"], strict=True)
    cli.invoke(["logout"], strict=True)
    out = capsys.readouterr().out
    assert "field_01" in out and "(2 rows)" in out
