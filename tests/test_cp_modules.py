"""SaveImagesToOMERO and ExportToOMEROTable: settings, planning and behaviour in-process."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest

from cellprofiler_omero.core.errors import InvalidReference
from cellprofiler_omero.core.model import ColumnKind
from cellprofiler_omero.cp_integration.targets import parse_target

pytestmark = pytest.mark.cellprofiler


def load(text: str) -> Any:
    from cellprofiler_core.pipeline import Pipeline

    pipeline = Pipeline()
    pipeline.loadtxt(io.StringIO(text), raise_on_error=True)
    return pipeline


def dump(pipeline: Any) -> str:
    out = io.StringIO()
    pipeline.dump(out)
    return out.getvalue()


def test_demo_pipeline_round_trips_through_cppipe(cellprofiler_plugins: None) -> None:
    from cellprofiler_omero.cp_integration.pipelines import nuclei_pipeline

    text = nuclei_pipeline(42, table_parent=("Screen", 7), table_prefix="Run1")
    pipeline = load(text)
    names = [m.module_name for m in pipeline.modules()]
    assert names[-2:] == ["SaveImagesToOMERO", "ExportToOMEROTable"]
    save, export = pipeline.modules()[-2:]
    assert (save.objects_name.value, save.dataset.value, save.name_suffix.value) == (
        "Nuclei", "42", "_nuclei")
    assert (export.parent_kind.value, export.parent.value, export.table_prefix.value) == (
        "Screen", "7", "Run1")
    assert dump(load(dump(pipeline))) == dump(pipeline)


def test_every_save_images_setting_round_trips(cellprofiler_plugins: None) -> None:
    from cellprofiler_omero.cp_integration import save_images as si
    from cellprofiler_omero.cp_integration.pipelines import nuclei_pipeline

    pipeline = load(nuclei_pipeline(1))
    save = pipeline.modules()[-2]
    save.save_what.value = si.SAVE_MASK
    save.bit_depth.value = si.BIT_DEPTH_FLOAT
    save.name_method.value = si.FN_SEQUENTIAL
    save.single_name.value = "mask_\\g<Well>_"
    save.number_of_digits.value = 6
    save.when_to_save.value = si.WS_LAST_CYCLE
    save.wants_dataset.value = False
    again = load(dump(pipeline)).modules()[-2]
    assert [s.value for s in again.settings()] == [s.value for s in save.settings()]


def test_every_export_setting_round_trips(cellprofiler_plugins: None) -> None:
    from cellprofiler_omero.cp_integration.pipelines import nuclei_pipeline

    pipeline = load(nuclei_pipeline(1))
    export = pipeline.modules()[-1]
    export.parent_kind.value = "Well"
    export.parent.value = "https://omero.example.org/webclient/?show=well-9"
    export.flush_every.value = 7
    export.string_size.value = 99
    export.wants_relationships.value = False
    again = load(dump(pipeline)).modules()[-1]
    assert [s.value for s in again.settings()] == [s.value for s in export.settings()]
    assert again.target().id == 9


@pytest.mark.parametrize("text,kind,expected", [
    ("12", "Dataset", 12), (" Dataset:5 ", "Dataset", 5),
    ("https://omero.example.org/webclient/?show=plate-3", "Plate", 3),
    ("image-8", "Image", 8),
])
def test_parents_are_named_by_id_or_link(text: str, kind: str, expected: int) -> None:
    assert parse_target(text, kind) == expected


@pytest.mark.parametrize("text", ["", "Project:4", "not a dataset"])
def test_wrong_parents_are_refused_clearly(text: str) -> None:
    with pytest.raises(InvalidReference):
        parse_target(text, "Dataset")


@pytest.mark.parametrize("depth,dtype,top", [
    ("8-bit integer", np.uint8, 255), ("16-bit integer", np.uint16, 65535),
    ("32-bit floating point", np.float32, 1.0), ("No conversion", np.float64, 1.0),
])
def test_bit_depths_convert_cellprofiler_intensities(depth: str, dtype: type,
                                                     top: float) -> None:
    from cellprofiler_omero.cp_integration.save_images import convert

    data = convert(np.array([[0.0, 0.5, 1.0]]), depth)
    assert data.dtype == dtype and data[0, 2] == top and data[0, 0] == 0


def test_masks_convert_to_zero_and_one() -> None:
    from cellprofiler_omero.cp_integration.save_images import convert

    data = convert(np.array([[True, False]]), "8-bit integer")
    assert data.dtype == np.uint8 and data.tolist() == [[1, 0]]


def test_tables_are_planned_per_object_with_double_measurements_and_aggregates() -> None:
    from cellprofiler_omero.cp_integration.export_table import plan_tables

    columns = [("Image", "Count_Nuclei", "integer"), ("Image", "FileName_DNA", "varchar(128)"),
               ("Nuclei", "AreaShape_Area", "float"), ("Nuclei", "Number_Object_Number",
                                                       "integer"),
               ("Experiment", "Pipeline_Pipeline", "longblob")]
    plans = {p.schema.name: p for p in plan_tables(columns, "CP", 256, True)}
    assert set(plans) == {"CP_Image", "CP_Nuclei", "CP_Relationships"}
    image = {c.name: c for c in plans["CP_Image"].schema.columns}
    assert image["ImageNumber"].kind is ColumnKind.LONG
    assert image["Image"].kind is ColumnKind.IMAGE
    assert image["Count_Nuclei"].kind is ColumnKind.DOUBLE
    assert image["FileName_DNA"].kind is ColumnKind.STRING and image["FileName_DNA"].size == 128
    for agg in ("Mean", "Median", "StDev"):
        assert image[f"{agg}_Nuclei_AreaShape_Area"].kind is ColumnKind.DOUBLE
    nuclei = plans["CP_Nuclei"]
    assert nuclei.keys == ("ImageNumber", "ObjectNumber")
    assert [c.name for c in nuclei.schema.columns][:3] == ["ImageNumber", "ObjectNumber",
                                                           "Image"]


class _Measurements:
    """The few Measurements calls ExportToOMEROTable makes, for one image set."""

    def __init__(self, image: dict[str, Any], objects: dict[str, dict[str, Any]],
                 relationships: list[tuple[Any, ...]] | None = None) -> None:
        self.image = image
        self.objects = objects
        self.relationships = relationships or []
        self.image_set_number = 2

    def has_feature(self, obj: str, feature: str) -> bool:
        return feature in (self.image if obj == "Image" else self.objects.get(obj, {}))

    def get_current_image_measurement(self, feature: str) -> Any:
        return self.image[feature]

    def get_current_measurement(self, obj: str, feature: str) -> Any:
        return self.objects[obj][feature]

    def get_feature_names(self, obj: str) -> list[str]:
        return list(self.image)

    def get_relationship_groups(self) -> list[tuple[int, str, str, str]]:
        return [(5, "Parent", "Cells", "Nuclei")] if self.relationships else []

    def get_relationships(self, *args: Any, **kwargs: Any) -> list[tuple[int, ...]]:
        return self.relationships


def _module(cellprofiler_plugins: None) -> Any:
    from cellprofiler_omero.cp_integration.export_table import ExportToOMEROTable

    return ExportToOMEROTable()


def test_missing_measurements_become_nan_not_a_failure(cellprofiler_plugins: None) -> None:
    from cellprofiler_omero.cp_integration.export_table import plan_tables

    module = _module(cellprofiler_plugins)
    plan = plan_tables([("Nuclei", "AreaShape_Area", "float"),
                        ("Nuclei", "Intensity_Mean", "float")], "CP", 32, False)[1]
    m = _Measurements({}, {"Nuclei": {"AreaShape_Area": [10.0, 20.0]}})
    rows = module._rows(plan, m, 2, 77)
    assert rows["ObjectNumber"] == [1, 2] and rows["Image"] == [77, 77]
    assert rows["AreaShape_Area"] == [10.0, 20.0]
    assert all(np.isnan(v) for v in rows["Intensity_Mean"])


def test_relationships_are_written_once_across_cycles(cellprofiler_plugins: None) -> None:
    module = _module(cellprofiler_plugins)
    # Cycle 2 sees a link recorded with image 1 (already written at cycle 1) and its own.
    m = _Measurements({}, {}, relationships=[(1, 4, 2, 3), (2, 1, 2, 2)])
    rows = module._relationships(m, 2)
    assert list(zip(rows["ImageNumber1"], rows["ObjectNumber1"], strict=True)) == [(1, 4),
                                                                                    (2, 1)]
    m.image_set_number = 3
    assert module._relationships(m, 3)["ImageNumber1"] == []


def test_test_mode_writes_nothing(cellprofiler_plugins: None) -> None:
    module = _module(cellprofiler_plugins)

    class Pipeline:
        test_mode = True

    class Workspace:
        pipeline = Pipeline()
        measurements = None

    assert module.prepare_run(Workspace()) is True
    module.run(Workspace())
    module.post_run(Workspace())
    assert module._run_state is None or not module._run_state["writers"]


class _WidePipeline:
    test_mode = False

    def get_measurement_columns(self, module: Any) -> list[tuple[str, str, str]]:
        return [("Nuclei", f"Feature_{i}", "float") for i in range(600)]


def test_wide_measurements_are_split_into_joinable_tables() -> None:
    from cellprofiler_omero.cp_integration.export_table import plan_tables

    columns = _WidePipeline().get_measurement_columns(None)
    plans = plan_tables(columns, "CP", 64, False, max_columns=500)
    labels = [p.label for p in plans]
    assert labels == ["Image", "Image_2", "Image_3", "Image_4", "Nuclei", "Nuclei_2"]
    assert all(len(p.schema.columns) <= 500 for p in plans)
    nuclei = [p for p in plans if p.object_name == "Nuclei"]
    assert all([c.name for c in p.schema.columns][:3] == ["ImageNumber", "ObjectNumber",
                                                          "Image"] for p in nuclei)
    assert sum(len(p.features) for p in nuclei) == 600


def test_splitting_is_announced_when_the_run_is_prepared(cellprofiler_plugins: None,
                                                         manager: Any) -> None:
    from cellprofiler_core.setting import ValidationError

    from cellprofiler_omero.core import session as core_session
    from cellprofiler_omero.cp_integration.export_table import ExportToOMEROTable

    module = ExportToOMEROTable()
    module.parent.value = "1"
    core_session.set_manager(manager)
    try:
        module.validate_module(_WidePipeline())  # no error: the tables are split
        with pytest.raises(ValidationError, match="Image, Nuclei measurements need more "
                                                  "than 500 columns"):
            module.validate_module_warnings(_WidePipeline())
    finally:
        core_session.set_manager(None)
