"""SaveImagesToOMERO: save images, masks and label images as new OMERO images.

Settings follow SaveImages: what to save (an image, or objects as a label image or
a mask), the bit depth, how the name is made (from the input image's name, a
sequence, or a single name with metadata tags), when to save (every cycle, or the
first or last of each group), and the Dataset to put it in (or none). The new
image carries provenance (a map annotation naming the source images) and its id
and OMERO.web URL are recorded as image measurements ``OMERO_ImageID_<name>`` and
``OMERO_URL_<name>``.

Uploads are exactly once: the key (``core.uploading.content_key``) is derived from the
name, dataset, sources and pixel content, so a retry — or rerunning the same pipeline
on the same images — finds the image already made instead of making another.

Uploads go up behind the pipeline: ``run`` finds or creates the image (so its id is
recorded in the image set's own measurements), then hands the pixels to the process's
``UploadQueue``, which writes them in order on its own thread while the next image sets
are processed. At most ``transfer.upload_queue`` uploads wait or run there (a further
save waits for room; 0 uploads each image before going on). A failed upload is raised
by the next save in the process, at the end of the group (``post_group``) or of the run
(``post_run``); an upload still going when the process exits is finished first. If the
process dies, the image it was writing stays marked incomplete, and running the
pipeline again sets it aside and makes it anew under the same key.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from cellprofiler_core.constants.measurement import (
    C_URL,
    COLTYPE_INTEGER,
    COLTYPE_VARCHAR_FILE_NAME,
)
from cellprofiler_core.module import Module
from cellprofiler_core.setting import Binary, ValidationError
from cellprofiler_core.setting.choice import Choice
from cellprofiler_core.setting.do_something import DoSomething
from cellprofiler_core.setting.subscriber import (
    FileImageSubscriber,
    ImageSubscriber,
    LabelSubscriber,
)
from cellprofiler_core.setting.text import Integer, Text

from cellprofiler_omero.core import refs, runtime
from cellprofiler_omero.core.errors import OmeroError, RetriesExhausted, UploadInterrupted
from cellprofiler_omero.core.model import PhysicalSize
from cellprofiler_omero.core.uploading import PendingUpload, begin_upload, content_key, upload
from cellprofiler_omero.cp_integration import session
from cellprofiler_omero.cp_integration.targets import parse_target

log = logging.getLogger(__name__)

SAVE_IMAGE = "Image"
SAVE_LABELS = "Objects as a label image"
SAVE_MASK = "Objects as a mask"

BIT_DEPTH_8 = "8-bit integer"
BIT_DEPTH_16 = "16-bit integer"
BIT_DEPTH_FLOAT = "32-bit floating point"
BIT_DEPTH_RAW = "No conversion"

FN_FROM_IMAGE = "From image filename"
FN_SEQUENTIAL = "Sequential numbers"
FN_SINGLE_NAME = "Single name"

WS_EVERY_CYCLE = "Every cycle"
WS_FIRST_CYCLE = "First cycle"
WS_LAST_CYCLE = "Last cycle"

CATEGORY = "OMERO"


def convert(pixels: np.ndarray, bit_depth: str) -> np.ndarray:
    """CellProfiler's float [0, 1] pixels in the chosen bit depth (masks stay 0/1)."""
    if pixels.dtype == np.bool_:
        return pixels.astype(np.uint8)
    if bit_depth == BIT_DEPTH_8:
        return np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    if bit_depth == BIT_DEPTH_16:
        return np.round(np.clip(pixels, 0, 1) * 65535).astype(np.uint16)
    if bit_depth == BIT_DEPTH_FLOAT:
        return pixels.astype(np.float32)
    return pixels


class UploadFailed(OmeroError):
    """An upload that went on behind the pipeline failed (raised at a later save, or at
    the end of the group or run). ``image_number`` is the image set whose image it was,
    ``name`` the image's name, ``image_id`` the id recorded for it (now an incomplete
    image), ``cause`` the error (also ``__cause__``), ``more`` how many other uploads
    failed since."""

    def __init__(self, message: str, *, image_number: int, name: str, image_id: int,
                 cause: BaseException, more: int = 0, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.image_number = image_number
        self.name = name
        self.image_id = image_id
        self.cause = cause
        self.more = more


#: Made again after an interrupted write: the new image's id goes to ``patch``.
Redo = Callable[[], Any]
Patch = Callable[[int], None]


def _interrupted(exc: BaseException) -> bool:
    """An upload stopped after its first pixels (directly, or as a spent budget's last
    cause): a real server lets nothing finish that image, but it can be made again."""
    return isinstance(exc, UploadInterrupted) or (
        isinstance(exc, RetriesExhausted) and isinstance(exc.last_cause, UploadInterrupted))


class UploadQueue:
    """Uploads finishing on one thread behind the pipeline, first in, first out.

    ``put`` blocks while ``depth`` uploads are waiting or running (so memory stays
    bounded: each holds its pixels); failures are kept and raised by the next ``put``
    or by ``drain``, which also waits for every upload to end.

    A write the server cut off after its first pixels (a dropped connection closes
    the stores, and a real server binds every later store read-only) is not a failure
    while the job has ``redo``: the whole upload runs again (same key: the incomplete
    image is set aside, a new one made), and the new id reaches ``patch`` on the
    pipeline's thread, at the next ``put`` or ``drain``, so the image set's measurements
    name the image that holds the pixels.
    """

    def __init__(self, depth: int) -> None:
        if depth < 1:
            raise ValueError("An upload queue holds at least one upload.")
        self.depth = depth
        self._room = threading.Semaphore(depth)
        self._jobs: deque[tuple[Callable[[], Any], int, str, int, Redo | None,
                                Patch | None]] = deque()
        self._failures: list[UploadFailed] = []
        self._patches: list[tuple[Patch, int]] = []
        self._lock = threading.Condition()
        self._busy = 0
        self._thread = threading.Thread(target=self._work, name="omero-upload-queue",
                                        daemon=True)
        self._thread.start()

    def put(self, finish: Callable[[], Any], *, image_number: int, name: str,
            image_id: int, redo: Redo | None = None, patch: Patch | None = None) -> None:
        """Queue ``finish`` (writes one image), waiting for room; first raises an earlier
        upload's failure. ``redo`` makes the image again when ``finish`` is cut off after
        its first pixels; ``patch`` is then given the new image's id."""
        self.raise_failure()
        self._room.acquire()
        with self._lock:
            self._jobs.append((finish, image_number, name, image_id, redo, patch))
            self._busy += 1
            self._lock.notify_all()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._jobs:
                    self._lock.wait()
                finish, image_number, name, image_id, redo, patch = self._jobs.popleft()
            try:
                try:
                    finish()
                except BaseException as exc:
                    if redo is None or not _interrupted(exc):
                        raise
                    log.warning("the upload of image %s (%r, image set %s) was cut off; "
                                "making it again", image_id, name, image_number)
                    made = redo()
                    if patch is not None and int(made.id) != image_id:
                        with self._lock:
                            self._patches.append((patch, int(made.id)))
            except BaseException as exc:  # kept for the pipeline's thread to raise
                log.error("saving image %r (image set %s) to OMERO failed: %s", name,
                          image_number, exc)
                with self._lock:
                    self._failures.append(UploadFailed(
                        f"Saving image {name!r} of image set {image_number} to OMERO "
                        f"failed: {exc}", image_number=image_number, name=name,
                        image_id=image_id, cause=exc,
                        hint=f"Image {image_id} is left marked incomplete; run the "
                             "pipeline again to make it (it is not duplicated)."))
            finally:
                self._room.release()
                with self._lock:
                    self._busy -= 1
                    self._lock.notify_all()

    def pending(self) -> int:
        """Uploads waiting or running."""
        with self._lock:
            return self._busy

    def raise_failure(self) -> None:
        """Give remade images' ids to their patches, then raise the first failure not
        raised yet (``more`` counts the others). Runs on the pipeline's thread."""
        with self._lock:
            patches, self._patches = self._patches, []
        for patch, image_id in patches:
            patch(image_id)
        with self._lock:
            if not self._failures:
                return
            first, rest = self._failures[0], self._failures[1:]
            self._failures = []
        first.more = len(rest)
        raise first from first.cause

    def drain(self) -> None:
        """Wait until every queued upload has ended; then raise the first failure."""
        with self._lock:
            while self._busy:
                self._lock.wait()
        self.raise_failure()


_queue: UploadQueue | None = None
#: OMERO names of source images by URL (names made "From image filename").
_names: dict[str, str] = {}
_queue_lock = threading.Lock()


def upload_queue(depth: int) -> UploadQueue:
    """The process's upload queue (made on first use with ``depth``; kept after)."""
    global _queue
    with _queue_lock:
        if _queue is None:
            _queue = UploadQueue(depth)
            atexit.register(_finish_at_exit)
        return _queue


def finish_uploads() -> None:
    """Wait for the uploads still going behind the pipeline; raise the first failure
    (``UploadFailed``). Nothing to do when none was queued."""
    if _queue is not None:
        _queue.drain()


def _finish_at_exit() -> None:
    try:
        finish_uploads()
    except UploadFailed as exc:  # nobody is left to raise to: the log says it
        log.error("%s (and %d more)", exc, exc.more)


def source_images(measurements: Any) -> list[tuple[int, str]]:
    """(OMERO image id, URL) of every OMERO image of the current image set."""
    found: dict[int, str] = {}
    for feature in measurements.get_feature_names("Image"):
        if not feature.startswith(C_URL + "_"):
            continue
        url = measurements.get_current_image_measurement(feature)
        if isinstance(url, str) and refs.is_image_reference(url):
            found.setdefault(refs.parse_image(url).id, url)
    return sorted(found.items())


class SaveImagesToOMERO(Module):
    """Save images, masks and label images from the pipeline as new OMERO images."""

    module_name = "SaveImagesToOMERO"
    category = "File Processing"
    variable_revision_number = 1

    def create_settings(self) -> None:
        self.save_what = Choice(
            "Select the type of image to save", [SAVE_IMAGE, SAVE_LABELS, SAVE_MASK],
            SAVE_IMAGE, doc="An image, or objects as a label image (one integer per object) "
                            "or as a mask (1 inside objects, 0 outside).")
        self.image_name = ImageSubscriber("Select the image to save", "None",
                                          doc="The image to send to OMERO.")
        self.objects_name = LabelSubscriber("Select the objects to save", "None",
                                            doc="The objects to send to OMERO.")
        self.bit_depth = Choice(
            "Image bit depth", [BIT_DEPTH_8, BIT_DEPTH_16, BIT_DEPTH_FLOAT, BIT_DEPTH_RAW],
            BIT_DEPTH_16, doc="How CellProfiler's 0–1 intensities are stored. Label images "
                              "and masks are always saved as integers.")
        self.name_method = Choice(
            "Select method for constructing image names",
            [FN_FROM_IMAGE, FN_SEQUENTIAL, FN_SINGLE_NAME], FN_FROM_IMAGE,
            doc="From the name of an input image, numbered in sequence, or one name "
                "(which may use metadata tags such as \\g<Well>).")
        self.file_image_name = FileImageSubscriber(
            "Select image name for naming", "None",
            doc="The input image whose name (in OMERO) starts the new image's name.")
        self.single_name = Text("Enter single image name", "OrigBlue",
                                metadata=True, doc="The name; metadata tags are filled in.")
        self.name_suffix = Text("Append a suffix to the image name?", "_labels",
                                doc="Added after the base name.")
        self.number_of_digits = Integer("Number of digits", 4, minval=1,
                                        doc="Digits of the sequence number.")
        self.when_to_save = Choice(
            "When to save", [WS_EVERY_CYCLE, WS_FIRST_CYCLE, WS_LAST_CYCLE], WS_EVERY_CYCLE,
            doc="Every cycle, or only the first or last cycle of each group.")
        self.wants_dataset = Binary("Put the images in a Dataset?", True,
                                    doc="No: the images are created without a parent "
                                        "(OMERO lists them as orphaned).")
        self.dataset = Text("Dataset", "",
                            doc="The Dataset's id, or its OMERO.web link.")
        self.check_dataset = DoSomething(
            "Check that the Dataset exists and you may add images to it", "Check",
            self.on_check_dataset)

    def settings(self) -> list[Any]:
        return [self.save_what, self.image_name, self.objects_name, self.bit_depth,
                self.name_method, self.file_image_name, self.single_name, self.name_suffix,
                self.number_of_digits, self.when_to_save, self.wants_dataset, self.dataset]

    def visible_settings(self) -> list[Any]:
        result = [self.save_what]
        result += [self.image_name] if self.save_what == SAVE_IMAGE else [self.objects_name]
        if self.save_what == SAVE_IMAGE:
            result.append(self.bit_depth)
        result.append(self.name_method)
        if self.name_method == FN_FROM_IMAGE:
            result += [self.file_image_name, self.name_suffix]
        elif self.name_method == FN_SEQUENTIAL:
            result += [self.single_name, self.number_of_digits]
        else:
            result.append(self.single_name)
        result += [self.when_to_save, self.wants_dataset]
        if self.wants_dataset:
            result += [self.dataset, self.check_dataset]
        return result

    def volumetric(self) -> bool:
        return True

    # -- checks ------------------------------------------------------------------------------

    def dataset_id(self) -> int | None:
        if not self.wants_dataset.value:
            return None
        return parse_target(self.dataset.value, "Dataset")

    def run_key_settings(self) -> list[str]:
        """This module's part of ExportToOMEROTable's run key: its settings, with the
        Dataset as its id (an id and a link to the same Dataset are one run)."""
        try:
            dataset = str(self.dataset_id())
        except OmeroError:  # not a Dataset reference: validation says so
            dataset = self.dataset.value
        return [dataset if setting is self.dataset else str(setting.unicode_value)
                for setting in self.settings()]

    def validate_module(self, pipeline: Any) -> None:
        if self.wants_dataset.value:
            try:
                self.dataset_id()
            except OmeroError as exc:
                raise ValidationError(str(exc), self.dataset) from None

    def check_access(self) -> str:
        """Check the Dataset exists and is writable; return a message or raise ``OmeroError``."""
        dataset = self.dataset_id()
        if dataset is None:
            return "Images will be saved without a Dataset."
        mgr = session.manager()

        async def check() -> bool:
            return await mgr.call(lambda conn: conn.can_write("Dataset", dataset),
                                  what=f"checking Dataset {dataset}")

        if not runtime.run(check):
            from cellprofiler_omero.core.errors import PermissionDenied

            raise PermissionDenied(
                f"{mgr.info.user if mgr.info else 'You'} may not add images to Dataset "
                f"{dataset}.", hint="Choose a Dataset you own or one in a read-write group.")
        session.after_connect(mgr)
        return f"Dataset {dataset} exists and {mgr.info.user if mgr.info else 'you'} may " \
               "add images to it."

    def on_check_dataset(self) -> None:
        try:
            message = self.check_access()
        except OmeroError as exc:
            _tell(f"Cannot use this Dataset: {exc}", error=True)
            return
        _tell(message)

    def prepare_run(self, workspace: Any) -> bool:
        if workspace.pipeline.test_mode:
            return True
        self.check_access()
        return True

    # -- running ---------------------------------------------------------------------------

    def run(self, workspace: Any) -> None:
        if workspace.pipeline.test_mode:
            return
        if self.when_to_save == WS_FIRST_CYCLE and \
                workspace.measurements["Image", "Group_Index"] > 1:
            return
        if self.when_to_save == WS_LAST_CYCLE:
            return
        self.save(workspace)

    def post_group(self, workspace: Any, *args: Any) -> None:
        if workspace.pipeline.test_mode:
            return
        if self.when_to_save == WS_LAST_CYCLE:
            self.save(workspace)
        finish_uploads()

    def post_run(self, workspace: Any) -> None:
        if not workspace.pipeline.test_mode:
            finish_uploads()

    def output_name(self) -> str:
        return self.image_name.value if self.save_what == SAVE_IMAGE \
            else self.objects_name.value

    def image_name_for(self, workspace: Any) -> str:
        m = workspace.measurements
        if self.name_method == FN_FROM_IMAGE:
            base = m.get_current_image_measurement(f"FileName_{self.file_image_name.value}")
            url = m.get_current_image_measurement(f"URL_{self.file_image_name.value}")
            base = self._omero_name(url) or str(base)
            return f"{base}{m.apply_metadata(self.name_suffix.value)}"
        name = m.apply_metadata(self.single_name.value)
        if self.name_method == FN_SEQUENTIAL:
            number = int(m["Image", "ImageNumber"])
            return f"{name}{number:0{int(self.number_of_digits.value)}d}"
        return str(name)

    @staticmethod
    def _omero_name(url: Any) -> str | None:
        if not isinstance(url, str) or not refs.is_image_reference(url):
            return None
        known = _names.get(url)
        if known is not None:  # one round trip per source image, not per save
            return known
        ref = refs.parse_image(url)
        mgr = session.manager()

        async def name() -> str:
            meta = await mgr.call(lambda conn: conn.image_meta(ref.id), ref,
                                  what=f"reading image {ref.id}")
            return meta.name

        try:
            found = runtime.run(name)
        except OmeroError:
            return None
        if len(_names) >= 4096:
            _names.clear()
        _names[url] = found
        return found

    def pixels_for(self, workspace: Any) -> tuple[np.ndarray, str, bool, Any]:
        """(array, axes, volumetric, spacing) of what to save."""
        if self.save_what == SAVE_IMAGE:
            image = workspace.image_set.get_image(self.image_name.value)
            data = convert(image.pixel_data, self.bit_depth.value)
            volumetric = bool(image.volumetric)
            spacing = getattr(image, "spacing", None)
        else:
            objects = workspace.object_set.get_objects(self.objects_name.value)
            labels = objects.segmented
            data = labels > 0 if self.save_what == SAVE_MASK else labels
            data = data.astype(np.uint8) if data.dtype == np.bool_ else data
            volumetric = bool(objects.volumetric)
            spacing = None
        if volumetric:
            axes = "ZYXC" if data.ndim == 4 else "ZYX"
        else:
            axes = "YXC" if data.ndim == 3 else "YX"
        return data, axes, volumetric, spacing

    def save(self, workspace: Any) -> None:
        data, axes, _volumetric, _spacing = self.pixels_for(workspace)
        name = self.image_name_for(workspace)
        dataset = self.dataset_id()
        sources = source_images(workspace.measurements)
        key = content_key(data, name=name, dataset_id=dataset, axes=axes,
                          source_image_ids=[i for i, _ in sources])
        size_c = data.shape[-1] if axes.endswith("C") else 1
        channel_names = [f"{self.output_name()}{'' if size_c == 1 else f'_c{i}'}"
                         for i in range(size_c)]
        mgr = session.manager()
        arguments: dict[str, Any] = dict(
            name=name, axes=axes, dataset_id=dataset, channel_names=channel_names,
            description=f"Saved by CellProfiler module {self.module_num} "
                        f"({self.module_name}) from {self.output_name()}",
            physical_size=PhysicalSize(), source_image_ids=[i for i, _ in sources],
            source_urls=[u for _, u in sources], client_key=key)
        depth = mgr.settings.transfer.upload_queue
        if depth == 0:
            finish_uploads()  # the setting may have changed within the process
            result = runtime.run(lambda: upload(mgr, data, **arguments))
        else:
            queue = upload_queue(depth)
            queue.raise_failure()  # an earlier image's failure, before making this one
            pending: PendingUpload = runtime.run(lambda: begin_upload(mgr, data, **arguments))
            result = pending.image
            if not pending.done:
                number = int(workspace.measurements["Image", "ImageNumber"])
                measurements = workspace.measurements

                def patch(image_id: int) -> None:
                    # The remade image replaces the one this image set recorded (its
                    # rows wait for this: ExportToOMEROTable drains the queue first).
                    measurements.add_measurement("Image", self.id_feature, image_id,
                                                 image_set_number=number)
                    measurements.add_measurement("Image", self.url_feature,
                                                 self._web_url(mgr, image_id),
                                                 image_set_number=number)

                queue.put(lambda: runtime.run(pending.finish),
                          redo=lambda: runtime.run(lambda: upload(mgr, data, **arguments)),
                          patch=patch, image_number=number, name=name, image_id=result.id)
        session.after_connect(mgr)
        url = self._web_url(mgr, result.id)
        m = workspace.measurements
        m.add_image_measurement(self.id_feature, result.id)
        m.add_image_measurement(self.url_feature, url)
        if self.show_window:
            workspace.display_data.saved = (name, result.id, url, result.reused)

    @staticmethod
    def _web_url(mgr: Any, image_id: int) -> str:
        info = mgr.info
        host = info.server.host if info else ""
        return refs.web_url(refs.ObjectRef(refs.Kind.IMAGE, image_id, host),
                            mgr.settings.server.web_url or None)

    @property
    def id_feature(self) -> str:
        return f"{CATEGORY}_ImageID_{self.output_name()}"

    @property
    def url_feature(self) -> str:
        return f"{CATEGORY}_URL_{self.output_name()}"

    def get_measurement_columns(self, pipeline: Any) -> list[tuple[str, str, str]]:
        return [("Image", self.id_feature, COLTYPE_INTEGER),
                ("Image", self.url_feature, COLTYPE_VARCHAR_FILE_NAME)]

    def get_categories(self, pipeline: Any, object_name: str) -> list[str]:
        return [CATEGORY] if object_name == "Image" else []

    def get_measurements(self, pipeline: Any, object_name: str, category: str) -> list[str]:
        if object_name == "Image" and category == CATEGORY:
            return [f"ImageID_{self.output_name()}", f"URL_{self.output_name()}"]
        return []

    def display(self, workspace: Any, figure: Any) -> None:
        saved = getattr(workspace.display_data, "saved", None)
        figure.set_subplots((1, 1))
        text = "Nothing saved this cycle." if saved is None else (
            f"{'Found' if saved[3] else 'Saved'} image {saved[1]} ({saved[0]})\n{saved[2]}")
        figure.subplot_table(0, 0, [[text]])


def _tell(message: str, *, error: bool = False) -> None:
    """Show a message in the GUI when there is one, else log it."""
    try:
        import wx

        if wx.GetApp() is not None:
            wx.MessageBox(message, "OMERO", wx.ICON_ERROR if error else wx.ICON_INFORMATION)
            return
    except ImportError:
        pass
    (log.error if error else log.info)(message)
