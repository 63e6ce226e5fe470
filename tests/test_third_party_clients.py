"""OMERO's own clients, unmodified, against the emulator: ezomero, omero-metadata, the omero CLI.

These programs were written for real OMERO.servers by other people; what they send is
what users' scripts send. Each test drives one of them the way its documentation shows
and checks the result through a second, independent client (BlitzGateway, omero2pandas,
PyTables), so an emulator that answers differently from a real server fails here.

The tests share one small emulator of their own: they add images, tables and
annotations, which must not change what other test modules see in the shared one.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cellprofiler_omero.emulator import Emulator, SeedOptions

# Big enough for a 2 × 3 plate with one field per well; no pyramid (nothing here needs one).
SMALL = SeedOptions(seed=7, fields=1, field_size=64, large_size=0, plate_rows=2,
                    plate_columns=3, plate_fields=1, plate_field_size=32)

BULK_ANNOTATIONS_NS = "openmicroscopy.org/omero/bulk_annotations"

# What `omero metadata populate` documents for a plate: a Well column, then the values.
PLATE_CSV = [
    ["Well", "Drug", "Dose", "Count", "Hit"],
    ["A1", "DMSO", "0.0", "10", "false"],
    ["A2", "Taxol", "1.5", "12", "true"],
    ["A3", "Taxol", "3.0", "7", "true"],
    ["B1", "Nocodazole", "0.5", "20", "false"],
    ["B2", "Nocodazole", "1.0", "3", "true"],
    ["B3", "DMSO", "0.25", "11", "false"],
]


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """This module's own emulator (the tests write to it)."""
    with Emulator(tmp_path_factory.mktemp("third-party"), seed_options=SMALL) as emu:
        yield emu


@pytest.fixture
def conn(server: Emulator) -> Iterator[Any]:
    """A BlitzGateway of demo, the connection ezomero and omero2pandas are given."""
    from omero.gateway import BlitzGateway

    gateway = BlitzGateway("demo", "demo", host=server.host, port=server.port)
    assert gateway.connect(), gateway.getLastError()
    yield gateway
    gateway.close()


@pytest.fixture
def new_dataset(conn: Any) -> int:
    """An empty dataset of demo's, made with ezomero."""
    import ezomero

    dataset_id = ezomero.post_dataset(conn, "third-party clients", description="scratch")
    assert isinstance(dataset_id, int)
    return dataset_id


class OmeroCli:
    """The ``omero`` command of omero-py in its own process, logged in to ``server``.

    The installed ``omero`` script refuses to run as root (as this CI machine runs);
    after that check it runs ``omero.cli.argv``, which is what runs here, in a fresh
    interpreter with the same arguments. ``OMERO_USERDIR`` keeps its session files in
    the test's folder.
    """

    def __init__(self, server: Emulator, userdir: Path) -> None:
        self.env = dict(os.environ, OMERO_USERDIR=str(userdir))
        self.env.pop("OMERO_SESSION_DIR", None)
        code, out, err = self(
            "login", "-s", server.host, "-p", str(server.port), "-u", "demo", "-w", "demo")
        assert code == 0, out + err

    def __call__(self, *args: str) -> tuple[int, str, str]:
        done = subprocess.run(
            [sys.executable, "-c",
             "import sys, omero.cli; sys.exit(omero.cli.argv(['omero', *sys.argv[1:]]))",
             *args],
            env=self.env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=180)
        return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def omero_cli(server: Emulator, tmp_path_factory: pytest.TempPathFactory) -> OmeroCli:
    """One login for the module: later commands use the session it saved."""
    return OmeroCli(server, tmp_path_factory.mktemp("omero-userdir"))


# -- ezomero -------------------------------------------------------------------------------


def test_ezomero_post_image_puts_a_numpy_image_in_a_dataset_that_reads_back_equal(
        conn: Any, new_dataset: int) -> None:
    import ezomero

    # ezomero's arrays are XYZCT.
    image = np.random.default_rng(3).integers(0, 65535, size=(40, 30, 2, 3, 1),
                                              dtype=np.uint16)
    image_id = ezomero.post_image(conn, image, "from ezomero", dataset_id=new_dataset,
                                  description="uploaded by ezomero.post_image")
    assert isinstance(image_id, int)
    assert ezomero.get_image_ids(conn, dataset=new_dataset) == [image_id]

    wrapper, pixels = ezomero.get_image(conn, image_id, xyzct=True)
    assert wrapper.getName() == "from ezomero"
    assert wrapper.getDescription() == "uploaded by ezomero.post_image"
    assert (wrapper.getSizeX(), wrapper.getSizeY(), wrapper.getSizeZ(), wrapper.getSizeC(),
            wrapper.getSizeT()) == (40, 30, 2, 3, 1)
    assert wrapper.getPixelsType() == "uint16"
    assert pixels.dtype == np.uint16
    np.testing.assert_array_equal(pixels, image)

    # A region (ezomero reads it tile by tile through RawPixelsStore.getTile).
    _, region = ezomero.get_image(conn, image_id, start_coords=(5, 7, 1, 1, 0),
                                  axis_lengths=(20, 11, 1, 2, 1), xyzct=True)
    np.testing.assert_array_equal(region, image[5:25, 7:18, 1:2, 1:3, 0:1])


def test_ezomero_post_image_keeps_float_values(conn: Any, new_dataset: int) -> None:
    import ezomero

    image = np.random.default_rng(4).normal(size=(16, 12, 1, 2, 3)).astype(np.float32)
    image_id = ezomero.post_image(conn, image, "float32", dataset_id=new_dataset)
    assert isinstance(image_id, int)
    wrapper, pixels = ezomero.get_image(conn, image_id, xyzct=True)
    assert wrapper.getPixelsType() == "float"
    # ezomero allocates numpy's "float" (float64) for OMERO's float; the values are exact.
    np.testing.assert_array_equal(pixels, image.astype(np.float64))


def test_ezomero_map_annotation_round_trip(conn: Any, server: Emulator) -> None:
    import ezomero

    image_id = server.seeded["fields"][0]
    values = {"cell line": "HeLa", "passage": 12, "treatment": ["DMSO", "Taxol"]}
    ann_id = ezomero.post_map_annotation(conn, "Image", image_id, values,
                                         ns="example.org/third-party/conditions")
    assert isinstance(ann_id, int)

    # Every value comes back as a string; a list is one key repeated.
    assert ezomero.get_map_annotation(conn, ann_id) == {
        "cell line": "HeLa", "passage": "12", "treatment": ["DMSO", "Taxol"]}
    assert ezomero.get_map_annotation_ids(
        conn, "Image", image_id, ns="example.org/third-party/conditions") == [ann_id]
    assert ann_id not in ezomero.get_map_annotation_ids(conn, "Image", image_id,
                                                        ns="example.org/other")
    # The same annotation through BlitzGateway.
    annotation = conn.getObject("MapAnnotation", ann_id)
    assert annotation.getNs() == "example.org/third-party/conditions"
    assert [tuple(kv) for kv in annotation.getValue()] == [
        ("cell line", "HeLa"), ("passage", "12"), ("treatment", "DMSO"),
        ("treatment", "Taxol")]

    # put_map_annotation saves the loaded annotation again with new values and namespace.
    ezomero.put_map_annotation(conn, ann_id, {"cell line": "U2OS", "passage": 13},
                               ns="example.org/third-party/conditions-v2")
    assert ezomero.get_map_annotation(conn, ann_id) == {"cell line": "U2OS", "passage": "13"}
    assert ezomero.get_map_annotation_ids(
        conn, "Image", image_id, ns="example.org/third-party/conditions-v2") == [ann_id]
    assert ezomero.filter_by_kv(conn, [image_id, server.seeded["zstack"]], "cell line",
                                "U2OS") == [image_id]


def test_another_users_map_annotation_cannot_be_changed(conn: Any, server: Emulator) -> None:
    import ezomero
    import omero
    from omero.gateway import BlitzGateway

    # demo's annotation on an image of the read-annotate group "other" also belongs to.
    image_id = server.seeded["shared_image"]
    ann_id = ezomero.post_map_annotation(conn, "Image", image_id, {"owner": "demo"},
                                         ns="example.org/third-party/owned")
    assert isinstance(ann_id, int)
    other = BlitzGateway("other", "other", host=server.host, port=server.port, group="shared")
    assert other.connect(), other.getLastError()
    try:
        annotation = other.getObject("MapAnnotation", ann_id)
        assert annotation is not None  # readable: the group is read-annotate
        annotation.setValue([["owner", "other"]])
        with pytest.raises(omero.SecurityViolation):
            annotation.save()
    finally:
        other.close()
    assert ezomero.get_map_annotation(conn, ann_id) == {"owner": "demo"}


def test_ezomero_table_attached_to_a_dataset_round_trips(conn: Any, new_dataset: int
                                                         ) -> None:
    import ezomero

    # ezomero writes the columns grouped by type (integers, floats, strings, booleans).
    frame = pd.DataFrame({"ObjectNumber": [1, 2, 3, 4],
                          "Area": [10.5, 22.0, 7.25, 130.0],
                          "Class": ["round", "elongated", "round", "big"],
                          "Border": [False, True, False, True]})
    ann_id = ezomero.post_table(conn, frame, "Dataset", new_dataset, title="measurements")
    assert isinstance(ann_id, int)
    assert ezomero.get_file_annotation_ids(conn, "Dataset", new_dataset) == [ann_id]

    annotation = conn.getObject("FileAnnotation", ann_id)
    assert annotation.getFile().getName() == "measurements"
    assert annotation.getFile().getMimetype() == "OMERO.tables"

    back = ezomero.get_table(conn, ann_id)
    pd.testing.assert_frame_equal(back, frame)


# -- omero-metadata ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def populated_plate(omero_cli: OmeroCli, server: Emulator,
                    tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str]:
    """``omero metadata populate --file plate.csv Plate:<id>`` once for the module: the
    plate's id and what the command logged."""
    plate_id = server.seeded["plate"]
    source = tmp_path_factory.mktemp("populate") / "plate.csv"
    with source.open("w", newline="") as handle:
        csv.writer(handle).writerows(PLATE_CSV)
    code, out, err = omero_cli("metadata", "populate", "--file", str(source),
                               f"Plate:{plate_id}")
    assert code == 0, out + err
    return plate_id, err


def test_omero_metadata_populate_puts_a_csv_on_the_plate_as_its_bulk_annotation_table(
        populated_plate: tuple[int, str], conn: Any, server: Emulator) -> None:
    import omero2pandas

    plate_id, log = populated_plate
    plate = conn.getObject("Plate", plate_id)
    annotations = list(plate.listAnnotations(ns=BULK_ANNOTATIONS_NS))
    assert len(annotations) == 1
    table_file = annotations[0].getFile()
    assert (table_file.getName(), table_file.getMimetype()) == ("bulk_annotations",
                                                                "OMERO.tables")
    assert f"Created new table OriginalFile:{table_file.getId()}" in log

    frame = omero2pandas.read_table(annotation_id=annotations[0].getId(),
                                    omero_connector=conn)
    header, *rows = PLATE_CSV
    # populate resolves the Well column to Well ids and adds the wells' names after the
    # CSV's columns (lower-case row letters, as omero-metadata spells them).
    assert list(frame.columns) == [*header, "Well Name"]
    assert len(frame) == len(rows)
    wells = server.seeded["wells"]
    assert frame["Well"].tolist() == [wells[f"{r[0][0]}0{r[0][1:]}"] for r in rows]
    assert frame["Well Name"].tolist() == [r[0].lower() for r in rows]
    assert frame["Drug"].tolist() == [r[1] for r in rows]
    assert frame["Dose"].tolist() == [float(r[2]) for r in rows]
    assert frame["Count"].tolist() == [int(r[3]) for r in rows]
    assert frame["Hit"].tolist() == [r[4] == "true" for r in rows]


def test_omero_metadata_bulkmap_turns_the_plate_table_into_well_map_annotations(
        populated_plate: tuple[int, str], omero_cli: OmeroCli, conn: Any, server: Emulator,
        tmp_path: Path) -> None:
    # The second step of omero-metadata's documented workflow: selected columns of the
    # bulk-annotation table become a MapAnnotation on each row's well.
    plate_id, _ = populated_plate
    config = tmp_path / "bulkmap.yml"
    config.write_text("---\nversion: 2\ndefaults:\n  include: no\n  type: string\n"
                      "  includeclient: yes\n  visible: yes\n  omitempty: yes\n"
                      "columns:\n- name: Drug\n  include: yes\n"
                      "- name: Dose\n  include: yes\n")
    code, out, err = omero_cli("metadata", "populate", "--context", "bulkmap", "--cfg",
                               str(config), f"Plate:{plate_id}")
    assert code == 0, out + err
    assert "Created/linked 6 MapAnnotations" in err

    _, *rows = PLATE_CSV
    wells = server.seeded["wells"]
    for label, drug, dose, *_ in rows:
        well = conn.getObject("Well", wells[f"{label[0]}0{label[1:]}"])
        maps = [a for a in well.listAnnotations(ns=BULK_ANNOTATIONS_NS)
                if a.OMERO_TYPE.__name__ == "MapAnnotationI"]
        assert [[tuple(kv) for kv in a.getValue()] for a in maps] == [
            [("Drug", drug), ("Dose", str(float(dose)))]], label


def test_omero_metadata_workflow_on_a_dataset_adds_and_removes_everything_it_made(
        omero_cli: OmeroCli, conn: Any, new_dataset: int, tmp_path: Path) -> None:
    """populate, bulkmap, deletemap and deletebulkanns, as omero-metadata documents them."""
    import ezomero
    import omero2pandas

    images = [ezomero.post_image(conn, np.full((8, 8, 1, 1, 1), n, np.uint8), f"img{n}",
                                 dataset_id=new_dataset) for n in range(3)]
    source = tmp_path / "dataset.csv"
    source.write_text("Image,Treatment,Dose\n"
                      + "".join(f"{iid},T{n},{n}.5\n" for n, iid in enumerate(images)))
    config = tmp_path / "bulkmap.yml"
    config.write_text("---\nversion: 2\ndefaults:\n  include: no\n  type: string\n"
                      "  includeclient: yes\n  visible: yes\n  omitempty: yes\n"
                      "columns:\n- name: Treatment\n  include: yes\n")
    target = f"Dataset:{new_dataset}"

    code, out, err = omero_cli("metadata", "populate", "--file", str(source), target)
    assert code == 0, out + err
    (bulk,) = conn.getObject("Dataset", new_dataset).listAnnotations(ns=BULK_ANNOTATIONS_NS)
    table_file_id = bulk.getFile().getId()
    frame = omero2pandas.read_table(file_id=table_file_id, omero_connector=conn)
    assert frame["Image"].tolist() == images
    assert frame["Image Name"].tolist() == ["img0", "img1", "img2"]
    assert frame["Dose"].tolist() == [0.5, 1.5, 2.5]

    code, out, err = omero_cli("metadata", "populate", "--context", "bulkmap", "--cfg",
                               str(config), target)
    assert code == 0, out + err
    for n, iid in enumerate(images):
        (ann,) = conn.getObject("Image", iid).listAnnotations(ns=BULK_ANNOTATIONS_NS)
        assert [tuple(kv) for kv in ann.getValue()] == [("Treatment", f"T{n}")]
    map_ids = [a.getId() for iid in images
               for a in conn.getObject("Image", iid).listAnnotations()]

    # deletemap finds the links by the annotation's class and deletes them (Delete2);
    # the unlinked map annotations go with them, as the server's delete rules say.
    code, out, err = omero_cli("metadata", "populate", "--context", "deletemap", target)
    assert code == 0, out + err
    assert "3 ome.model.annotations.ImageAnnotationLink" in err
    assert "3 ome.model.annotations.MapAnnotation" in err
    assert all(not list(conn.getObject("Image", iid).listAnnotations()) for iid in images)
    assert all(conn.getObject("MapAnnotation", mid) is None for mid in map_ids)

    # deletebulkanns deletes the table's FileAnnotation, and with it the table's file.
    code, out, err = omero_cli("metadata", "deletebulkanns", target)
    assert code == 0, out + err
    assert not list(conn.getObject("Dataset", new_dataset).listAnnotations())
    assert conn.getObject("OriginalFile", table_file_id) is None


def test_deleting_annotation_links_deletes_only_unlinked_map_annotations(
        conn: Any, new_dataset: int) -> None:
    # omero-blitz's delete rules: an unlinked map annotation goes with its last link;
    # one still linked elsewhere stays, and file annotations always stay.
    import ezomero
    import omero.model
    import omero.sys

    first, second = (ezomero.post_image(conn, np.zeros((4, 4, 1, 1, 1), np.uint8), name,
                                        dataset_id=new_dataset) for name in ("a", "b"))
    map_id = ezomero.post_map_annotation(conn, "Image", first, {"k": "v"}, ns="x/shared")
    link = omero.model.ImageAnnotationLinkI()
    link.parent = omero.model.ImageI(second, False)
    link.child = omero.model.MapAnnotationI(map_id, False)
    conn.getUpdateService().saveObject(link)
    file_ann = ezomero.post_table(conn, [["n"], [1]], "Image", first, title="kept")

    def link_ids(image_id: int) -> dict[int, int]:
        return {lk.child.id.val: lk.id.val for lk in conn.getQueryService().findAllByQuery(
            "select l from ImageAnnotationLink l where l.parent.id = :id",
            omero.sys.ParametersI().addId(image_id))}

    conn.deleteObjects("ImageAnnotationLink", [link_ids(first)[map_id]], wait=True)
    assert conn.getObject("MapAnnotation", map_id) is not None  # still on the second image
    conn.deleteObjects("ImageAnnotationLink", [link_ids(second)[map_id]], wait=True)
    assert conn.getObject("MapAnnotation", map_id) is None
    conn.deleteObjects("ImageAnnotationLink", [link_ids(first)[file_ann]], wait=True)
    assert link_ids(first) == {}
    assert conn.getObject("FileAnnotation", file_ann) is not None


def test_hql_class_tests_select_links_by_the_annotation_class(conn: Any, new_dataset: int
                                                               ) -> None:
    # The query omero-metadata's deletemap sends (Hibernate's ``.class`` discriminator).
    import ezomero
    import omero.sys
    from omero.rtypes import rlist, rlong, rstring, unwrap

    ns = "example.org/third-party/class-test"
    map_id = ezomero.post_map_annotation(conn, "Dataset", new_dataset, {"k": "v"}, ns=ns)
    file_id = ezomero.post_table(conn, [["n"], [1]], "Dataset", new_dataset, title="t")
    params = omero.sys.ParametersI()
    params.map = {"ids": rlist([rlong(new_dataset)]), "nss": rlist([rstring(ns)])}
    query = conn.getQueryService()

    def children(condition: str) -> list[int]:
        rows = query.projection(
            f"SELECT child.id FROM DatasetAnnotationLink WHERE {condition} "
            "AND parent.id in (:ids)", params)
        return sorted(unwrap(row)[0] for row in rows)

    assert children("child.class=MapAnnotation AND child.ns in (:nss)") == [map_id]
    assert children("child.class=FileAnnotation") == [file_id]
    assert children("child.class!=MapAnnotation") == [file_id]
    assert children("child.class=TagAnnotation") == []


# -- the omero command line ----------------------------------------------------------------


def test_omero_download_of_a_table_file_is_a_valid_hdf5_file(
        omero_cli: OmeroCli, conn: Any, new_dataset: int, tmp_path: Path) -> None:
    import ezomero
    import tables

    frame = pd.DataFrame({"Image": [11, 12, 13], "Intensity": [0.5, 0.25, 0.125]})
    ann_id = ezomero.post_table(conn, frame, "Dataset", new_dataset, title="to_download.h5")
    assert isinstance(ann_id, int)
    file_id = conn.getObject("FileAnnotation", ann_id).getFile().getId()

    target = tmp_path / "downloaded.h5"
    code, out, err = omero_cli("download", f"OriginalFile:{file_id}", str(target))
    assert code == 0, out + err
    assert f"Downloading file ID: {file_id}" in out

    with tables.open_file(str(target), "r") as h5:
        measurements = h5.get_node("/OME/Measurements")
        assert measurements.colnames == ["Image", "Intensity"]
        assert measurements.nrows == 3
        assert measurements.col("Image").tolist() == [11, 12, 13]
        assert measurements.col("Intensity").tolist() == [0.5, 0.25, 0.125]

    # A cheap read-only call: the file's row in the database names the same bytes.
    code, out, err = omero_cli(
        "hql", "-q", "--style", "csv",
        f"select f.name, f.mimetype, f.size from OriginalFile f where f.id = {file_id}")
    assert code == 0, out + err
    lines = out.strip().splitlines()
    assert lines[-1].split(",")[1:] == ["to_download.h5", "OMERO.tables",
                                        str(target.stat().st_size)]


def test_omero_cli_reports_a_missing_file_and_writes_nothing(omero_cli: OmeroCli,
                                                             tmp_path: Path) -> None:
    target = tmp_path / "never.h5"
    code, _, err = omero_cli("download", "OriginalFile:999999", str(target))
    assert code != 0
    assert "No OriginalFile with input ID" in err
    assert not target.exists()


def test_omero_group_list_counts_owners_and_members(omero_cli: OmeroCli) -> None:
    # IAdmin.lookupGroups returns each group with its memberships loaded, as AdminImpl's
    # join fetch does; the command line reads owners and members from them.
    code, out, err = omero_cli("group", "list", "--long", "--style", "csv")
    assert code == 0, out + err
    rows = {row["name"]: row for row in csv.DictReader(out.strip().splitlines())}
    assert (rows["demo"]["owner ids"], rows["demo"]["member ids"]) == ("2", "")
    assert (rows["other"]["owner ids"], rows["other"]["member ids"]) == ("3", "")
    assert (rows["shared"]["owner ids"], rows["shared"]["member ids"]) == ("", "2,3")
    assert rows["shared"]["perms"] == "rwra--"

    # containedGroups: the groups of the logged-in user, with the same memberships.
    code, out, err = omero_cli("user", "listgroups", "--long", "--style", "csv")
    assert code == 0, out + err
    mine = {row["name"]: row for row in csv.DictReader(out.strip().splitlines())}
    assert set(mine) == {"user", "demo", "shared"}
    assert mine["shared"]["member ids"] == "2,3"
