"""IMetadata, Search and ``submit(OriginalMetadataRequest)`` answer omero-py as a real
OMERO.server does (ome/omero-server ``MetadataImpl``, ``SearchBean``, ``FullText``;
omero-blitz ``OriginalMetadataRequestI``), and every unimplemented operation leaves one
grep-able INFO line in the emulator's log.

Each test works on an image of its own (made through BlitzGateway), so the shared
emulator's seeded objects keep their annotations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import Ice
import numpy as np
import omero
import omero.clients
import omero.cmd
import omero.model
import pytest
from omero.gateway import FileAnnotationWrapper, MapAnnotationWrapper

from cellprofiler_omero.emulator import Emulator

KV_NS = "openmicroscopy.org/omero/client/mapAnnotation"
TABLE_NS = "openmicroscopy.org/omero/bulk_annotations"
COMPANION_NS = "openmicroscopy.org/omero/import/companionFile"


def _image(conn: Any, dataset_id: int, name: str) -> Any:
    """A one-plane 8×8 image of ``conn``'s user in ``dataset_id``."""
    plane = np.arange(64, dtype=np.uint16).reshape(8, 8)
    dataset = conn.getObject("Dataset", dataset_id)
    return conn.createImageFromNumpySeq(iter([plane]), name, sizeZ=1, sizeC=1, sizeT=1,
                                        description="made by the panel tests",
                                        dataset=dataset)


def _annotate(conn: Any, image: Any, *, file_name: str = "Nuclei.csv",
              file_text: str = "a,b\n1,2\n", file_ns: str = TABLE_NS) -> tuple[int, int]:
    """A key-value annotation and a file annotation on ``image``: their ids."""
    kv = MapAnnotationWrapper(conn)
    kv.setNs(KV_NS)
    kv.setValue([["Treatment", "Nocodazole"], ["Cells", "42"]])
    kv.save()
    image.linkAnnotation(kv)
    original = conn.createOriginalFileFromFileObj(
        _Bytes(file_text.encode()), "/", file_name, len(file_text.encode()),
        mimetype="text/plain")
    ann = FileAnnotationWrapper(conn)
    ann.setNs(file_ns)
    ann._obj.file = omero.model.OriginalFileI(original.getId(), False)
    ann.save()
    image.linkAnnotation(ann)
    return kv.getId(), ann.getId()


class _Bytes:
    """A file object over bytes (``createOriginalFileFromFileObj`` reads and seeks)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        out = self.data[self.pos:end]
        self.pos += len(out)
        return out

    def seek(self, pos: int, whence: int = 0) -> None:
        self.pos = pos


@pytest.fixture
def probe(blitz: Callable[..., Any], scratch_dataset: int) -> tuple[Any, Any, int, int]:
    """demo's connection, a fresh image with a key-value and a file annotation, their ids."""
    conn = blitz()
    image = _image(conn, scratch_dataset, "p5probe_nuclei_A.tif")
    kv_id, file_id = _annotate(conn, image)
    return conn, image, kv_id, file_id


def test_load_annotations_gives_each_images_annotations_with_their_files_loaded(
        probe: tuple[Any, Any, int, int]) -> None:
    conn, image, kv_id, file_ann_id = probe
    meta = conn.getMetadataService()
    found = meta.loadAnnotations("Image", [image.getId()], None, None, None)
    assert set(found) == {image.getId()}
    by_id = {a.id.val: a for a in found[image.getId()]}
    assert set(by_id) == {kv_id, file_ann_id}
    assert [(nv.name, nv.value) for nv in by_id[kv_id].getMapValue()] == [
        ("Treatment", "Nocodazole"), ("Cells", "42")]
    assert by_id[file_ann_id].file.isLoaded() and by_id[file_ann_id].file.name.val == \
        "Nuclei.csv"
    # annotationTypes picks exact classes; an unknown class is refused before the call.
    only_files = meta.loadAnnotations("Image", [image.getId()],
                                      ["ome.model.annotations.FileAnnotation"], None, None)
    assert [a.id.val for a in only_files[image.getId()]] == [file_ann_id]
    with pytest.raises(omero.ApiUsageException) as unknown:
        meta.loadAnnotations("Image", [image.getId()], ["Nonsense"], None, None)
    assert unknown.value.message == "Nonsense does not specify a valid class."
    with pytest.raises(omero.ApiUsageException) as not_annotated:
        meta.loadAnnotations("Pixels", [1], None, None, None)
    assert "must be a subclass of ome.model.IAnnotated" in not_annotated.value.message
    # The webclient's avatar asks for the user's own annotations: none, but the user is there.
    me = conn.getUserId()
    assert meta.loadAnnotations("Experimenter", [me], None, None, None) == {me: []}
    # Another user's private image is not there at all (the security filter).
    other = conn.__class__("other", "other", host=conn.host, port=conn.port)
    assert other.connect()
    try:
        assert other.getMetadataService().loadAnnotations(
            "Image", [image.getId()], None, None, None) == {}
    finally:
        other.close()


def test_specified_annotations_select_by_class_and_namespace(
        probe: tuple[Any, Any, int, int]) -> None:
    conn, _, kv_id, file_ann_id = probe
    meta = conn.getMetadataService()
    params = omero.sys.ParametersI()
    tables = {a.id.val for a in meta.loadSpecifiedAnnotations("FileAnnotation", [TABLE_NS],
                                                              [], params)}
    assert file_ann_id in tables and kv_id not in tables
    excluded = {a.id.val for a in meta.loadSpecifiedAnnotations("FileAnnotation", [],
                                                                [TABLE_NS], params)}
    assert file_ann_id not in excluded
    # "Annotation" means every subclass (HQL's ``member of``).
    everything = {a.id.val for a in meta.loadSpecifiedAnnotations("Annotation", [], [],
                                                                  params)}
    assert {kv_id, file_ann_id} <= everything
    count = meta.countSpecifiedAnnotations("MapAnnotation", [KV_NS], [], params)
    assert count.val >= 1
    # BlitzGateway's listing of attachable files goes through loadSpecifiedAnnotations.
    assert file_ann_id in {f.getId() for f in conn.listFileAnnotations(toInclude=[TABLE_NS])}


def test_channel_acquisition_data_is_the_logical_channel_and_nothing_more(
        probe: tuple[Any, Any, int, int]) -> None:
    conn, image, _kv, _file = probe
    image = conn.getObject("Image", image.getId())
    logical = image.getChannels()[0].getLogicalChannel()
    # BlitzGateway swaps in loadChannelAcquisitionData's answer: no light path, filters,
    # detector settings — an image imported without acquisition metadata.
    assert logical.getLightPath() is None
    assert image.getInstrument() is None
    [answer] = conn.getMetadataService().loadChannelAcquisitionData([logical.getId()])
    assert answer.id.val == logical.getId() and answer.isLoaded()
    assert answer.detectorSettings is None and answer.filterSet is None
    # Channels of images the caller cannot read are left out.
    assert conn.getMetadataService().loadChannelAcquisitionData([10**9]) == []


def test_search_finds_images_by_name_terms_wildcards_and_key_value_pairs(
        probe: tuple[Any, Any, int, int], blitz: Callable[..., Any]) -> None:
    conn, image, _kv, _file = probe

    def ids(text: str, **kw: Any) -> set[int]:
        return {o.getId() for o in conn.searchObjects(["Image"], text, **kw)}

    # Names are tokens of letters and digits: "p5probe" is a term of "p5probe_nuclei_A.tif".
    assert image.getId() in ids("p5probe")
    assert image.getId() in ids("P5PROBE")  # the analyzer lower-cases
    assert image.getId() in ids("p5pro*")
    assert image.getId() not in ids("p5pro")  # a term, not a substring
    assert image.getId() in ids("nocodazole", fields=["annotation"], rawQuery=False)
    assert image.getId() in ids("Treatment:nocodazole")
    assert image.getId() in ids('"p5probe nuclei"')
    assert image.getId() not in ids('"nuclei p5probe"')
    assert image.getId() in ids("p5probe AND nuclei", rawQuery=False, fields=["name"])
    assert image.getId() not in ids("p5probe -nuclei")
    # byHqlQuery: the query's objects are the results.
    search = conn.createSearchService()
    try:
        search.byHqlQuery("select i from Image i where i.id = :id",
                          omero.sys.ParametersI().addId(image.getId()))
        assert search.hasNext() and [o.id.val for o in search.results()] == [image.getId()]
        assert search.hasNext() is False
    finally:
        search.close()
    # Search runs as the caller: another user finds nothing of demo's private group.
    other = blitz("other")
    assert image.getId() not in {o.getId() for o in other.searchObjects(["Image"],
                                                                        "p5probe")}


def test_search_refuses_what_search_bean_refuses(blitz: Callable[..., Any]) -> None:
    conn = blitz()
    search = conn.createSearchService()
    try:
        with pytest.raises(omero.ApiUsageException) as no_type:
            search.byFullText("field")
        assert "limited to a single type" in no_type.value.message
        search.onlyType("Image")
        with pytest.raises(omero.ApiUsageException) as leading:
            search.byFullText("*eld")
        assert "leading wildcard" in leading.value.message
        with pytest.raises(omero.InternalException) as empty:
            search.byFullText("")
        assert empty.value.serverExceptionClass == "java.lang.IllegalArgumentException"
        with pytest.raises(omero.ApiUsageException) as bad_date:
            search.byLuceneQueryBuilder("name", "2026-01-01", "", "acquisitionDate", "x")
        assert "YYYYMMDD" in bad_date.value.message
        assert search.hasNext() is False
        with pytest.raises(omero.ApiUsageException) as drained:
            search.results()
        assert drained.value.message == "No elements. Please use hasNext()."
        with pytest.raises(omero.ApiUsageException) as bad_type:
            search.onlyType("Nonsense")
        assert bad_type.value.message == "Nonsense does not specify a valid class."
        # Batches: two results of a batch size of one come one per call.
        search.setBatchSize(1)
        search.byFullText("field")
        first = search.results()
        assert len(first) == 1 and search.hasNext()
    finally:
        search.close()


def test_original_metadata_is_empty_without_a_companion_file_and_parsed_with_one(
        blitz: Callable[..., Any], scratch_dataset: int) -> None:
    conn = blitz()
    bare = _image(conn, scratch_dataset, "p5_no_metadata")
    assert conn.getObject("Image", bare.getId()).loadOriginalMetadata() == (None, [], [])
    with_file = _image(conn, scratch_dataset, "p5_with_metadata")
    _annotate(conn, with_file, file_name="original_metadata.txt", file_ns=COMPANION_NS,
              file_text="[GlobalMetadata]\nMicroscope=Widefield (Nikon)\n"
                        "[SeriesMetadata]\nExposure = 20 ms\nnot a pair\n")
    request = omero.cmd.OriginalMetadataRequest(imageId=with_file.getId())
    handle = conn.c.sf.submit(request)
    try:
        response = conn._waitOnCmd(handle, failontimeout=True).getResponse()
    finally:
        handle.close()
    assert isinstance(response, omero.cmd.OriginalMetadataResponse)
    assert response.filesetId is None and response.fileAnnotationId is not None
    assert {k: v.val for k, v in response.globalMetadata.items()} == {
        "Microscope": "Widefield (Nikon)"}
    assert {k: v.val for k, v in response.seriesMetadata.items()} == {"Exposure": "20 ms"}


def test_unimplemented_operations_are_refused_and_logged_one_line_each(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    from omero.gateway import BlitzGateway

    with Emulator(tmp_path_factory.mktemp("gaps"), seed="users", log_level="INFO") as emu:
        conn = BlitzGateway("demo", "demo", host=emu.host, port=emu.port)
        assert conn.connect()
        try:
            search = conn.createSearchService()
            with pytest.raises(omero.ApiUsageException) as refused:
                search.byGroupForTags("x")
            assert refused.value.message == \
                "Search.byGroupForTags is not implemented by the emulator."
            search.close()
            request = omero.cmd.Chmod2(targetObjects={"ExperimenterGroup": [3]},
                                       permissions="rwra--")
            # ``submit`` declares no exceptions: Ice hands the refusal on as unknown.
            with pytest.raises(Ice.UnknownUserException):
                conn.c.sf.submit(request)
        finally:
            conn.close()
        log = (emu.data_dir / "emulator.log").read_text()
    gaps = [line.split("INFO ", 1)[1] for line in log.splitlines()
            if "not implemented by the emulator:" in line]
    assert gaps == ["not implemented by the emulator: Search.byGroupForTags",
                    "not implemented by the emulator: submit(Chmod2)"]
