"""Pipelines this package builds: the demo (and the end-to-end tests) use them.

Built with CellProfiler's own module classes and saved with its writer, so the
``.cppipe`` files always match the installed CellProfiler.
"""

from __future__ import annotations

import io
from typing import Any


def _module(cls: Any, number: int, pipeline: Any) -> Any:
    module = cls()
    module.set_module_num(number)
    pipeline.add_module(module)
    return module


def nuclei_pipeline(dataset_id: int | None, *, save_labels: bool = True,
                    export_tables: bool = True, table_parent: tuple[str, int] | None = None,
                    table_prefix: str = "CellProfiler", save_rois: bool = False) -> str:
    """Images (OMERO URLs, planes extracted) → NamesAndTypes (C0 = DNA, C1 = Cyto) →
    IdentifyPrimaryObjects (Nuclei) → MeasureObjectSizeShape → MeasureObjectIntensity
    → SaveImagesToOMERO (nuclei labels) → [SaveObjectsToOMERO (nuclei as Mask ROIs on
    their source images, ``save_rois``)] → ExportToOMEROTable; returns ``.cppipe`` text.
    """
    import logging

    import cellprofiler_core.preferences as preferences

    preferences.set_headless()
    # mysqlclient is deliberately not installed (ExportToDatabase to MySQL only); keep
    # CellProfiler's import-time warning about it out of this package's output.
    logging.getLogger("cellprofiler.modules.exporttodatabase").setLevel(logging.ERROR)
    import cellprofiler_core.modules.namesandtypes as nt_module
    from cellprofiler.modules.identifyprimaryobjects import IdentifyPrimaryObjects
    from cellprofiler.modules.measureobjectintensity import MeasureObjectIntensity
    from cellprofiler.modules.measureobjectsizeshape import MeasureObjectSizeShape
    from cellprofiler_core.modules.groups import Groups
    from cellprofiler_core.modules.images import Images
    from cellprofiler_core.modules.metadata import Metadata
    from cellprofiler_core.modules.namesandtypes import NamesAndTypes
    from cellprofiler_core.pipeline import Pipeline

    from cellprofiler_omero.cp_integration.export_table import ExportToOMEROTable
    from cellprofiler_omero.cp_integration.save_images import (
        FN_FROM_IMAGE,
        SAVE_LABELS,
        SaveImagesToOMERO,
    )

    pipeline = Pipeline()
    images = _module(Images, 1, pipeline)
    images.filter_choice.value = "No filtering"
    images.want_split.value = True  # one plane per channel: NamesAndTypes picks them by C
    _module(Metadata, 2, pipeline)
    names = _module(NamesAndTypes, 3, pipeline)
    names.assignment_method.value = nt_module.ASSIGN_RULES
    names.add_assignment()
    for assignment, channel, name in zip(names.assignments, (0, 1), ("DNA", "Cyto"),
                                         strict=True):
        assignment.rule_filter.value = f'and (metadata does C "{channel}")'
        assignment.image_name.value = name
    names.matching_choice.value = nt_module.MATCH_BY_ORDER
    _module(Groups, 4, pipeline)
    identify = _module(IdentifyPrimaryObjects, 5, pipeline)
    identify.x_name.value = "DNA"
    identify.y_name.value = "Nuclei"
    identify.size_range.min = 15
    identify.size_range.max = 45
    shape = _module(MeasureObjectSizeShape, 6, pipeline)
    shape.objects_list.value = "Nuclei"
    intensity = _module(MeasureObjectIntensity, 7, pipeline)
    intensity.images_list.value = "DNA, Cyto"
    intensity.objects_list.value = "Nuclei"
    number = 8
    if save_labels:
        save = _module(SaveImagesToOMERO, number, pipeline)
        number += 1
        save.save_what.value = SAVE_LABELS
        save.objects_name.value = "Nuclei"
        save.name_method.value = FN_FROM_IMAGE
        save.file_image_name.value = "DNA"
        save.name_suffix.value = "_nuclei"
        save.wants_dataset.value = dataset_id is not None
        save.dataset.value = str(dataset_id or "")
    if save_rois:
        from cellprofiler_omero.cp_integration.save_objects import SaveObjectsToOMERO

        rois = _module(SaveObjectsToOMERO, number, pipeline)
        number += 1
        rois.objects_name.value = "Nuclei"
        rois.image_name.value = "DNA"
    if export_tables:
        export = _module(ExportToOMEROTable, number, pipeline)
        kind, parent = table_parent or ("Dataset", dataset_id or 0)
        export.parent_kind.value = kind
        export.parent.value = str(parent)
        export.table_prefix.value = table_prefix
    out = io.StringIO()
    pipeline.dump(out)
    return out.getvalue()
