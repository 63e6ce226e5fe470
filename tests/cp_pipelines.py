"""Pipelines for the end-to-end tests: the demo pipeline plus local copies to compare with."""

from __future__ import annotations

import io


def with_local_copies(cppipe: str) -> str:
    """The pipeline with the nuclei labels saved locally (npy, raw) and measurements in CSV."""
    from cellprofiler.modules.convertobjectstoimage import ConvertObjectsToImage, ImageMode
    from cellprofiler.modules.exporttospreadsheet import ExportToSpreadsheet
    from cellprofiler.modules.saveimages import (
        BIT_DEPTH_RAW,
        FF_NPY,
        FN_FROM_IMAGE,
        SaveImages,
    )
    from cellprofiler_core.pipeline import Pipeline

    pipeline = Pipeline()
    pipeline.loadtxt(io.StringIO(cppipe), raise_on_error=True)
    number = len(pipeline.modules()) + 1
    convert = ConvertObjectsToImage()
    convert.set_module_num(number)
    convert.object_name.value = "Nuclei"
    convert.image_name.value = "NucleiLabels"
    convert.image_mode.value = ImageMode.UINT16
    pipeline.add_module(convert)
    save = SaveImages()
    save.set_module_num(number + 1)
    save.image_name.value = "NucleiLabels"
    save.file_name_method.value = FN_FROM_IMAGE
    save.file_image_name.value = "DNA"
    save.wants_file_name_suffix.value = True
    save.file_name_suffix.value = "_labels"
    save.file_format.value = FF_NPY
    save.bit_depth.value = BIT_DEPTH_RAW
    pipeline.add_module(save)
    export = ExportToSpreadsheet()
    export.set_module_num(number + 2)
    export.wants_aggregate_means.value = True
    pipeline.add_module(export)
    out = io.StringIO()
    pipeline.dump(out)
    return out.getvalue()
