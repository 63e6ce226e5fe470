"""ROIs in: OMERO shapes rasterised exactly, read through the Ice transport, and loaded
into CellProfiler as objects by LoadObjectsFromOMERO (ROIs drawn by ezomero and
omero-rois, unmodified, on the emulator)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import ezomero
import numpy as np
import omero.model
import omero_rois
import pytest
from omero.gateway import BlitzGateway
from omero.rtypes import rdouble, rstring

from cellprofiler_omero.core import rasterise
from cellprofiler_omero.core.roi_reading import RoiFilter, read_rois
from cellprofiler_omero.core.shapes import (
    EllipseShape,
    MaskShape,
    Plane,
    PointShape,
    PolygonShape,
    RectangleShape,
    Roi,
    ShapeKind,
    ShapeStyle,
)
from cellprofiler_omero.transports.ice.roi_reader import decode_shape, parse_points
from tests.conftest import run

H, W = 40, 50


def _pixels(raster: rasterise.Raster) -> set[tuple[int, int]]:
    return set(zip(raster.rows.tolist(), raster.cols.tolist(), strict=True))


def _winding_brute_force(points: np.ndarray) -> np.ndarray:
    """Non-zero winding at every pixel centre, one centre at a time (the reference)."""
    yy, xx = np.mgrid[0:H, 0:W]
    px, py = xx + 0.5, yy + 0.5
    winding = np.zeros((H, W), int)
    for (x0, y0), (x1, y1) in zip(points, np.roll(points, -1, axis=0), strict=True):
        if y0 == y1:
            continue
        xi = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
        right = xi > px
        winding += (((y0 <= py) & (py < y1)) & right).astype(int)
        winding -= (((y1 <= py) & (py < y0)) & right).astype(int)
    return winding != 0


# -- the pixel rule ------------------------------------------------------------------------


def test_whole_pixel_rectangles_and_polygons_cover_exactly_their_area() -> None:
    rect = rasterise.rasterise(RectangleShape(10, 12, 5, 3), H, W)
    assert rect.area == 15 and not rect.beyond
    assert _pixels(rect) == {(r, c) for r in range(12, 15) for c in range(10, 15)}
    square = ((10, 12), (15, 12), (15, 15), (10, 15))
    assert _pixels(rasterise.rasterise(PolygonShape(square), H, W)) == _pixels(rect)
    assert _pixels(rasterise.rasterise(PolygonShape(square[::-1]), H, W)) == _pixels(rect)


def test_shapes_sharing_an_edge_never_both_claim_its_pixels() -> None:
    # A 4×4 square cut along its diagonal: the diagonal runs through pixel centres.
    lower = rasterise.rasterise(PolygonShape(((0, 0), (4, 0), (0, 4))), H, W)
    upper = rasterise.rasterise(PolygonShape(((4, 0), (4, 4), (0, 4))), H, W)
    assert not _pixels(lower) & _pixels(upper)
    assert _pixels(lower) | _pixels(upper) == {(r, c) for r in range(4) for c in range(4)}


def test_polygons_cover_the_pixels_whose_centres_have_non_zero_winding() -> None:
    rng = np.random.default_rng(7)
    for _ in range(60):  # self-crossing outlines and outlines beyond the image included
        points = rng.uniform(-6, 56, (int(rng.integers(3, 12)), 2))
        raster = rasterise.rasterise(PolygonShape(tuple(map(tuple, points))), H, W)
        got = np.zeros((H, W), bool)
        got[raster.rows, raster.cols] = True
        np.testing.assert_array_equal(got, _winding_brute_force(points))


def test_ellipses_cover_the_pixels_whose_centres_lie_strictly_inside() -> None:
    for cx, cy, rx, ry in ((20, 20, 10, 10), (24.3, 17.8, 7.5, 3.2), (3, 4, 6, 2)):
        raster = rasterise.rasterise(EllipseShape(cx, cy, rx, ry), H, W)
        yy, xx = np.mgrid[0:H, 0:W]
        inside = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 < 1
        assert _pixels(raster) == set(zip(*np.nonzero(inside), strict=True))
    # A whole-pixel circle covers about πr² (316 pixels for r = 10).
    assert rasterise.rasterise(EllipseShape(20, 20, 10, 10), H, W).area == 316


def test_a_point_is_the_one_pixel_containing_it() -> None:
    assert _pixels(rasterise.rasterise(PointShape(30.6, 20.4), H, W)) == {(20, 30)}
    assert _pixels(rasterise.rasterise(PointShape(30.0, 20.0), H, W)) == {(20, 30)}


def test_mask_bits_are_msb_first_rows_of_width_bits_placed_at_x_y() -> None:
    mask = omero.model.MaskI()
    mask.setX(rdouble(7))
    mask.setY(rdouble(3))
    mask.setWidth(rdouble(5))
    mask.setHeight(rdouble(2))
    # 10 bits, row by row, no padding between rows: 10000 01001 -> 0b10000010 0b01000000
    mask.setBytes(bytes([0b10000010, 0b01000000]))
    shape = decode_shape(mask, roi_id=1)
    assert isinstance(shape, MaskShape)
    assert _pixels(rasterise.rasterise(shape, H, W)) == {(3, 7), (4, 8), (4, 11)}


def test_shapes_are_clipped_to_the_image_and_the_clipping_reported() -> None:
    corner = rasterise.rasterise(RectangleShape(45, 35, 10, 10), H, W)
    assert corner.area == 25 and corner.beyond
    away = rasterise.rasterise(EllipseShape(500, 500, 5, 5), H, W)
    assert away.area == 0 and away.beyond
    bits = np.ones((3, 3), bool)
    assert rasterise.rasterise(MaskShape(-1, -1, bits), H, W).area == 4
    assert rasterise.rasterise(PointShape(-0.5, 3), H, W).beyond
    inside = rasterise.rasterise(RectangleShape(1, 1, 3, 3), H, W)
    assert not inside.beyond


def test_rois_become_one_object_each_shapes_unioned_overlaps_kept() -> None:
    a = Roi(11, 1, "a", None, (), (RectangleShape(0, 0, 4, 4), RectangleShape(2, 2, 4, 4)))
    b = Roi(12, 1, "b", None, (), (RectangleShape(3, 3, 2, 2),))
    other_plane = Roi(13, 1, "z2", None, (), (RectangleShape(0, 0, 2, 2, Plane(z=2)),))
    away = Roi(14, 1, "away", None, (), (RectangleShape(90, 90, 2, 2),))
    found = rasterise.rois_to_objects([a, b, other_plane, away], H, W, z=0, t=0)
    assert found.roi_ids == (11, 12)
    assert found.areas().tolist() == [16 + 16 - 4, 4]  # union, not a sum
    assert found.off_plane == (13,) and found.empty == (14,)
    in_a = {(i, j) for i, j, v in found.ijv.tolist() if v == 1}
    in_b = {(i, j) for i, j, v in found.ijv.tolist() if v == 2}
    assert in_b <= in_a  # the overlap is in both objects
    on_z2 = rasterise.rois_to_objects([a, other_plane], H, W, z=2, t=0)
    assert on_z2.roi_ids == (11, 13)


def test_filters_select_by_kind_name_or_text_and_namespace() -> None:
    roi = Roi(1, 1, "Nucleus 7", None, ("lab/ns",),
              (RectangleShape(0, 0, 1, 1), PointShape(1, 1, style=ShapeStyle(text="seed"))),
              shape_ids=(5, 6))
    only_points = RoiFilter(kinds=frozenset({ShapeKind.POINT})).apply(roi)
    assert only_points is not None and only_points.shape_ids == (6,)
    assert RoiFilter(kinds=frozenset({ShapeKind.MASK})).apply(roi) is None
    assert RoiFilter(text="nucleus").apply(roi) is roi
    assert RoiFilter(text="NUC*7").apply(roi) is roi
    assert RoiFilter(text="see").apply(roi) is roi  # a shape's text
    assert RoiFilter(text="cyto*").apply(roi) is None
    assert RoiFilter(namespaces=("lab/ns",)).apply(roi) is roi
    assert RoiFilter(namespaces=("other",)).apply(roi) is None


def test_points_strings_and_transforms_decode_into_image_coordinates() -> None:
    assert parse_points("1,2 3.5,4 -1e1,6") == ((1, 2), (3.5, 4), (-10, 6))
    assert parse_points("points[1,2, 3,4, 5,6] points1[9,9]") == ((1, 2), (3, 4), (5, 6))
    rect = omero.model.RectangleI()
    for name, value in (("x", 0), ("y", 0), ("width", 4), ("height", 2)):
        getattr(rect, f"set{name[0].upper()}{name[1:]}")(rdouble(value))
    rotate = omero.model.AffineTransformI()
    for name, value in (("A00", 0), ("A10", 1), ("A01", -1), ("A11", 0), ("A02", 10),
                        ("A12", 5)):
        getattr(rotate, f"set{name}")(rdouble(value))
    rect.setTransform(rotate)
    turned = decode_shape(rect, roi_id=1)
    assert isinstance(turned, PolygonShape)
    # Rotated by 90° about the origin, then moved by (10, 5): 2 wide, 4 tall.
    assert _pixels(rasterise.rasterise(turned, H, W)) == {
        (r, c) for r in range(5, 9) for c in range(8, 10)}

    ellipse = omero.model.EllipseI()
    for name, value in (("X", 0), ("Y", 0), ("RadiusX", 6), ("RadiusY", 3)):
        getattr(ellipse, f"set{name}")(rdouble(value))
    ellipse.setTransform(rotate)
    upright = decode_shape(ellipse, roi_id=1)
    assert isinstance(upright, PolygonShape)  # a turned ellipse: its outline, finely
    exact = rasterise.rasterise(EllipseShape(10, 5, 3, 6), H, W)
    assert len(_pixels(rasterise.rasterise(upright, H, W)) ^ _pixels(exact)) <= 2

    mask = omero.model.MaskI()
    for name, value in (("X", 1), ("Y", 1), ("Width", 1), ("Height", 1)):
        getattr(mask, f"set{name}")(rdouble(value))
    mask.setBytes(bytes([0b10000000]))
    mask.setTransform(rotate)
    assert decode_shape(mask, roi_id=1) is None  # no exact pixels: left out, logged
    shift = omero.model.AffineTransformI()
    for name, value in (("A00", 1), ("A10", 0), ("A01", 0), ("A11", 1), ("A02", 4),
                        ("A12", 2)):
        getattr(shift, f"set{name}")(rdouble(value))
    mask.setTransform(shift)
    moved = decode_shape(mask, roi_id=1)
    assert moved is not None and _pixels(rasterise.rasterise(moved, H, W)) == {(3, 5)}


# -- through the emulator and CellProfiler -------------------------------------------------


def _image(conn: BlitzGateway, name: str) -> int:
    plane = (np.arange(H * W, dtype=np.uint8).reshape(H, W) % 200)
    return int(conn.createImageFromNumpySeq(iter([plane]), name, sizeZ=1, sizeC=1,
                                            sizeT=1).getId())


@pytest.fixture(scope="module")
def drawn(emulator: Any) -> Iterator[dict[str, Any]]:
    """Two images: one with ROIs of every kind (two overlapping), one with none."""
    conn = BlitzGateway("demo", "demo", host=emulator.host, port=emulator.port)
    assert conn.connect()
    try:
        image = _image(conn, "rois in")
        bare = _image(conn, "no rois")
        ids = {
            "polygon": ezomero.post_roi(conn, image, [ezomero.rois.Polygon(
                [(2.0, 2.0), (12.0, 2.0), (12.0, 8.0), (2.0, 8.0)])], name="cell polygon"),
            "rectangle": ezomero.post_roi(conn, image, [ezomero.rois.Rectangle(
                20.0, 3.0, 6.0, 4.0)], name="cell rect A"),
            "overlapping": ezomero.post_roi(conn, image, [ezomero.rois.Rectangle(
                23.0, 5.0, 6.0, 4.0)], name="cell rect B"),
            "ellipse": ezomero.post_roi(conn, image, [ezomero.rois.Ellipse(
                10.0, 25.0, 5.0, 3.0, label="oval")], name="nucleus"),
            "point": ezomero.post_roi(conn, image, [ezomero.rois.Point(40.5, 30.5)],
                                      name="seed"),
        }
        bits = np.zeros((H, W), np.uint8)
        bits[30:36, 30:34] = 1
        bits[31, 30] = 0
        roi = omero.model.RoiI()
        roi.setName(rstring("mask from a label image"))
        roi.setImage(omero.model.ImageI(image, False))
        roi.addShape(omero_rois.mask_from_binary_image(bits, text="mask"))
        ids["mask"] = int(conn.getUpdateService().saveAndReturnObject(roi).getId().getValue())
        # A tool marks the ROIs it made with an annotation in its namespace.
        for marked in ("ellipse", "mask"):
            note = omero.model.MapAnnotationI()
            note.setNs(rstring("lab/segmenter"))
            link = omero.model.RoiAnnotationLinkI()
            link.setParent(omero.model.RoiI(ids[marked], False))
            link.setChild(note)
            conn.getUpdateService().saveAndReturnObject(link)
        yield {"image": image, "bare": bare, "ids": ids,
               "areas": {"polygon": 60, "rectangle": 24, "overlapping": 24, "mask": 23,
                         "point": 1,
                         "ellipse": rasterise.rasterise(EllipseShape(10, 25, 5, 3), H, W).area}}
    finally:
        conn.close()


def test_the_ice_reader_returns_every_roi_decoded_and_filtered(manager: Any,
                                                               drawn: dict[str, Any]) -> None:
    rois = run(lambda: read_rois(manager, drawn["image"]))
    assert [r.id for r in rois] == sorted(drawn["ids"].values())
    kinds = {r.id: [s.kind for s in r.shapes] for r in rois}
    assert kinds[drawn["ids"]["mask"]] == [ShapeKind.MASK]
    assert kinds[drawn["ids"]["point"]] == [ShapeKind.POINT]
    rects = run(lambda: read_rois(manager, drawn["image"],
                                  RoiFilter(kinds=frozenset({ShapeKind.RECTANGLE}))))
    assert {r.id for r in rects} == {drawn["ids"]["rectangle"], drawn["ids"]["overlapping"]}
    assert run(lambda: read_rois(manager, drawn["bare"])) == []


def test_many_rois_are_read_in_pages_with_a_bounded_number_of_calls(
        manager: Any, blitz: Any, emulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from cellprofiler_omero.core.errors import NotFound
    from cellprofiler_omero.transports.ice import roi_reader

    conn = blitz()
    image = _image(conn, "many rois")
    rois = []
    for index in range(250):  # one single-pixel Mask each, saved in one call
        mask = omero.model.MaskI()
        for name, value in (("X", index % W), ("Y", index // W), ("Width", 1),
                            ("Height", 1)):
            getattr(mask, f"set{name}")(rdouble(value))
        mask.setBytes(bytes([0b10000000]))
        roi = omero.model.RoiI()
        roi.setImage(omero.model.ImageI(image, False))
        roi.addShape(mask)
        rois.append(roi)
    saved = sorted(conn.getUpdateService().saveAndReturnIds(rois, conn.SERVICE_OPTS))
    # Small pages, so that 250 ROIs take several of each (thousands would, by default).
    monkeypatch.setattr(roi_reader, "ROI_IDS_PAGE", 100)
    monkeypatch.setattr(roi_reader, "FETCH_PAGE", 100)
    emulator.reset_call_counts()
    found = run(lambda: read_rois(manager, image))
    calls = emulator.call_counts()
    assert [r.id for r in found] == saved
    objects = rasterise.rois_to_objects(found, H, W)
    assert objects.count == 250 and set(objects.areas().tolist()) == {1}
    # One existence check, three pages of ids, three fetches of at most 100 ROIs.
    assert calls.get("IQuery.projection") == 1 + 3
    assert calls.get("IQuery.findAllByQuery") == 3
    with pytest.raises(NotFound):
        run(lambda: read_rois(manager, 987_654_321))


def _pipeline(image_name: str = "DNA") -> Any:
    """Images → NamesAndTypes (every image as DNA) → LoadObjectsFromOMERO ×5 (all
    shapes; rectangles only; names matching 'cell rect*'; all but rectangles; those
    annotated in 'lab/segmenter') → MeasureObjectSizeShape (of the fourth)."""
    import cellprofiler_core.modules.namesandtypes as nt_module
    from cellprofiler.modules.measureobjectsizeshape import MeasureObjectSizeShape
    from cellprofiler_core.modules.images import Images
    from cellprofiler_core.modules.namesandtypes import NamesAndTypes
    from cellprofiler_core.pipeline import Pipeline

    from cellprofiler_omero.cp_integration.load_objects import LoadObjectsFromOMERO

    pipeline = Pipeline()
    modules: list[Any] = []
    images = Images()
    images.filter_choice.value = "No filtering"
    names = NamesAndTypes()
    names.assignment_method.value = nt_module.ASSIGN_ALL
    names.single_image_provider.value = image_name
    modules += [images, names]
    for output, kinds, text in (("AllRois", None, ""), ("Rects", "Rectangle", ""),
                                ("CellRects", None, "cell rect*"),
                                ("Drawn", "Polygon,Ellipse,Point,Mask", ""),
                                ("Marked", None, "")):
        load = LoadObjectsFromOMERO()
        load.image_name.value = image_name
        load.objects_name.value = output
        if kinds:
            load.kinds.value = kinds
        load.text_filter.value = text
        load.namespace.value = "lab/segmenter" if output == "Marked" else ""
        modules.append(load)
    measure = MeasureObjectSizeShape()
    # Only objects that do not overlap: for overlapping objects CellProfiler's
    # MeasureObjectSizeShape concatenates its measurements label set by label set, so
    # they no longer follow object numbers (its own behaviour, whoever made the objects).
    measure.objects_list.value = "Drawn"
    modules.append(measure)
    for number, module in enumerate(modules, start=1):
        module.set_module_num(number)
        pipeline.add_module(module)
    text = io.StringIO()
    pipeline.dump(text)  # the pipeline round-trips through a .cppipe, as users save it
    loaded = Pipeline()
    loaded.loadtxt(io.StringIO(text.getvalue()), raise_on_error=True)
    return loaded


@pytest.fixture
def cp_session(manager: Any, cellprofiler_plugins: None) -> Iterator[Any]:
    from cellprofiler_omero.core import session as core_session
    from cellprofiler_omero.cp_integration import compat

    compat.install()
    core_session.set_manager(manager)
    yield manager
    core_session.set_manager(None)


def test_rois_come_into_a_pipeline_as_objects_of_their_shapes_areas(
        cp_session: Any, drawn: dict[str, Any]) -> None:
    pipeline = _pipeline()
    pipeline.add_urls([f"omero:iid={drawn['image']}", f"omero:iid={drawn['bare']}"])
    m = pipeline.run()
    ids = drawn["ids"]
    by_url = {m.get_measurement("Image", "URL_DNA", n): n for n in m.get_image_numbers()}
    with_rois = by_url[f"omero:iid={drawn['image']}"]
    without = by_url[f"omero:iid={drawn['bare']}"]

    roi_ids = m.get_measurement("AllRois", "OMERO_RoiID", with_rois).tolist()
    assert roi_ids == sorted(ids.values())  # one object per ROI, in ROI id order
    assert m.get_measurement("Image", "Count_AllRois", with_rois) == 6
    drawn_ids = m.get_measurement("Drawn", "OMERO_RoiID", with_rois).tolist()
    areas = dict(zip(drawn_ids, m.get_measurement("Drawn", "AreaShape_Area", with_rois),
                     strict=True))
    for kind in ("polygon", "ellipse", "point", "mask"):
        assert areas[ids[kind]] == drawn["areas"][kind], kind

    assert m.get_measurement("Rects", "OMERO_RoiID", with_rois).tolist() == sorted(
        [ids["rectangle"], ids["overlapping"]])
    assert m.get_measurement("CellRects", "OMERO_RoiID", with_rois).tolist() == sorted(
        [ids["rectangle"], ids["overlapping"]])

    assert m.get_measurement("Marked", "OMERO_RoiID", with_rois).tolist() == sorted(
        [ids["ellipse"], ids["mask"]])

    assert m.get_measurement("Image", "Count_AllRois", without) == 0
    assert m.get_measurement("Image", "Count_Rects", without) == 0


def test_overlapping_rois_keep_the_shared_pixels_in_both_objects(
        cp_session: Any, drawn: dict[str, Any]) -> None:
    from cellprofiler_core.image import ImageSetList
    from cellprofiler_core.workspace import Workspace

    from cellprofiler_omero.cp_integration.load_objects import LoadObjectsFromOMERO

    module = LoadObjectsFromOMERO()
    module.set_module_num(1)
    module.image_name.value = "DNA"
    module.objects_name.value = "Boxes"
    module.kinds.value = "Rectangle"
    m, image_set, object_set = _one_image_set(f"omero:iid={drawn['image']}")
    module.run(Workspace(None, module, image_set, object_set, m, ImageSetList()))
    ijv = object_set.get_objects("Boxes").ijv
    first = {(i, j) for i, j, v in ijv.tolist() if v == 1}
    second = {(i, j) for i, j, v in ijv.tolist() if v == 2}
    # Two objects of 24 pixels each (6 × 4 rectangles), the 3 × 2 overlap in both.
    assert len(first) == len(second) == drawn["areas"]["rectangle"]
    assert first & second == {(r, c) for r in range(5, 7) for c in range(23, 26)}
    assert object_set.get_objects("Boxes").count == 2
    assert m.get_measurement("Boxes", "OMERO_RoiID").tolist() == sorted(
        [drawn["ids"]["rectangle"], drawn["ids"]["overlapping"]])


def _one_image_set(url: str) -> tuple[Any, Any, Any]:
    """Measurements and an image set holding one image 'DNA' read from ``url``."""
    from cellprofiler_core.image import ImageSetList
    from cellprofiler_core.image.abstract_image.file.url import MonochromeImage
    from cellprofiler_core.measurement import Measurements
    from cellprofiler_core.object import ObjectSet

    m = Measurements()
    m.add_image_measurement("URL_DNA", url)
    image_set = ImageSetList().get_image_set(0)
    image_set.add_provider(MonochromeImage("DNA", url, None, None, None))
    return m, image_set, ObjectSet()


def test_the_image_sets_z_and_t_choose_the_plane_whose_rois_are_loaded(
        cellprofiler_plugins: None) -> None:
    from cellprofiler_core.measurement import Measurements

    from cellprofiler_omero.cp_integration.load_objects import LoadObjectsFromOMERO

    module = LoadObjectsFromOMERO()
    module.image_name.value = "DNA"
    m = Measurements()
    m.add_image_measurement("URL_DNA", "https://omero.example.org/webclient/?show=image-42")
    assert module.source_image(m)[1:] == (0, 0)  # a whole 2-D image: plane 0, 0
    m.add_image_measurement("Z_DNA", 3)
    m.add_image_measurement("T_DNA", 2)
    ref, z, t = module.source_image(m)
    assert (ref.id, ref.host, z, t) == (42, "omero.example.org", 3, 2)


def test_an_image_set_image_not_from_omero_is_one_clear_error(cp_session: Any,
                                                             tmp_path: Any) -> None:
    from cellprofiler_core.image import ImageSetList
    from cellprofiler_core.workspace import Workspace

    from cellprofiler_omero.cp_integration.load_objects import (
        LoadObjectsFromOMERO,
        NotAnOmeroImage,
    )

    url = (tmp_path / "local.tif").as_uri()
    module = LoadObjectsFromOMERO()
    module.set_module_num(1)
    module.image_name.value = "DNA"
    m, image_set, object_set = _one_image_set(url)
    with pytest.raises(NotAnOmeroImage) as failure:
        module.run(Workspace(None, module, image_set, object_set, m, ImageSetList()))
    assert failure.value.url == url and failure.value.image_name == "DNA"
    assert "OMERO link" in (failure.value.hint or "")
