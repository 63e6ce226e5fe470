"""The OMERO browser window, and the file list's drop target that understands OMERO links.

A tree of the user's groups ▸ Projects ▸ Datasets ▸ Images and Screens ▸ Plates ▸
Wells ▸ fields, loaded a page at a time when a branch is opened (a "load more…" entry
fetches the next page), with thumbnails as tree icons, a larger thumbnail and the
image's sizes beside the tree, and multi-selection. *Add to file list* puts the
OMERO.web links of the selected images (and of every image in selected containers)
into the Images module's file list; dragging the selection onto the file list does
the same.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import wx

from cellprofiler_omero.core import refs
from cellprofiler_omero.core.errors import InvalidReference
from cellprofiler_omero.core.model import Node, Page
from cellprofiler_omero.core.refs import Kind, ObjectRef
from cellprofiler_omero.cp_integration.gui import bridge, connect
from cellprofiler_omero.cp_integration.gui.source import (
    GROUP,
    MY_DATA,
    THUMBNAIL_SIZE,
    BrowseSource,
    Entry,
    describe,
    details,
    error_text,
)

log = logging.getLogger(__name__)

TITLE = "Browse OMERO"
ICON = 32  # tree icon size; thumbnails are scaled into it


@dataclass
class _More:
    """The "load more…" entry of a branch: the next page starts at ``offset``."""

    entry: Entry | None
    offset: int
    loading: bool = False


@dataclass
class _Placeholder:
    """Stands in for the children of a branch not opened yet (so it shows an expander)."""


def _scaled(data: bytes, size: int) -> Any | None:
    """A square bitmap of ``size`` with the JPEG ``data`` scaled into it (centred)."""
    image = wx.Image(io.BytesIO(data), wx.BITMAP_TYPE_ANY)
    if not image.IsOk():
        return None
    w, h = image.GetWidth(), image.GetHeight()
    scale = min(size / w, size / h)
    nw, nh = max(1, int(w * scale)), max(1, int(h * scale))
    image = image.Scale(nw, nh, wx.IMAGE_QUALITY_HIGH)
    image.Resize((size, size), ((size - nw) // 2, (size - nh) // 2), 255, 255, 255)
    return wx.Bitmap(image)


class BrowserFrame(wx.Frame):
    """Browse the connected server and add images to CellProfiler's file list."""

    def __init__(self, parent: Any) -> None:
        super().__init__(parent, title=TITLE, name="omero_browser", size=(940, 620),
                         style=wx.DEFAULT_FRAME_STYLE | wx.FRAME_FLOAT_ON_PARENT)
        self.source = BrowseSource(connect.manager())
        self._thumbs: dict[int, bytes] = {}
        self._thumb_icons: dict[int, int] = {}
        self._items_by_image: dict[int, list[Any]] = {}
        self.pending = 0  # listings in flight (tests and the status bar use it)

        panel = wx.Panel(self)
        splitter = wx.SplitterWindow(panel, style=wx.SP_LIVE_UPDATE | wx.SP_3DSASH)
        self.tree = wx.TreeCtrl(splitter, name="omero_tree",
                                style=wx.TR_HIDE_ROOT | wx.TR_HAS_BUTTONS | wx.TR_MULTIPLE
                                | wx.TR_LINES_AT_ROOT | wx.TR_FULL_ROW_HIGHLIGHT)
        self.icons = wx.ImageList(ICON, ICON)
        self._icon = {name: self.icons.Add(_art(art))
                      for name, art in (("group", wx.ART_HARDDISK), ("folder", wx.ART_FOLDER),
                                        ("image", wx.ART_NORMAL_FILE),
                                        ("more", wx.ART_PLUS), ("wait", wx.ART_FIND))}
        self.tree.SetImageList(self.icons)
        self.root = self.tree.AddRoot("OMERO")

        side = wx.Panel(splitter)
        self.preview = wx.StaticBitmap(side, size=(THUMBNAIL_SIZE, THUMBNAIL_SIZE),
                                       name="preview")
        self.details = wx.StaticText(side, label="Select an image or a container.",
                                     name="details")
        tip = wx.StaticText(side, label="Select several items with Ctrl or Shift. Drag them "
                                        "onto the Images module's file list, or use Add to "
                                        "file list. Containers add all their images.")
        tip.Wrap(300)
        tip.SetForegroundColour(wx.SystemSettings.GetColour(wx.SYS_COLOUR_GRAYTEXT))
        side_sizer = wx.BoxSizer(wx.VERTICAL)
        side_sizer.Add(self.preview, 0, wx.ALL | wx.ALIGN_CENTER_HORIZONTAL, 10)
        side_sizer.Add(self.details, 0, wx.ALL | wx.EXPAND, 10)
        side_sizer.AddStretchSpacer()
        side_sizer.Add(tip, 0, wx.ALL, 10)
        side.SetSizer(side_sizer)
        splitter.SplitVertically(self.tree, side, -320)
        splitter.SetMinimumPaneSize(200)
        splitter.SetSashGravity(1.0)

        self.add_button = wx.Button(panel, label="Add to file list", name="add_to_file_list")
        self.add_button.SetToolTip("Add the selected images, and every image of the selected "
                                   "containers, to the Images module's file list.")
        refresh = wx.Button(panel, label="Refresh", name="refresh")
        close = wx.Button(panel, wx.ID_CLOSE, name="close")
        buttons = wx.BoxSizer(wx.HORIZONTAL)
        buttons.Add(self.add_button, 0, wx.RIGHT, 8)
        buttons.Add(refresh, 0)
        buttons.AddStretchSpacer()
        buttons.Add(close, 0)
        sizer = wx.BoxSizer(wx.VERTICAL)
        sizer.Add(splitter, 1, wx.EXPAND | wx.ALL, 6)
        sizer.Add(buttons, 0, wx.EXPAND | wx.LEFT | wx.RIGHT | wx.BOTTOM, 8)
        panel.SetSizer(sizer)
        self.status = self.CreateStatusBar(2)
        self.status.SetStatusWidths([-2, -1])

        self.tree.Bind(wx.EVT_TREE_ITEM_EXPANDING, self._on_expanding)
        self.tree.Bind(wx.EVT_TREE_SEL_CHANGED, self._on_selection)
        self.tree.Bind(wx.EVT_TREE_ITEM_ACTIVATED, self._on_activated)
        self.tree.Bind(wx.EVT_TREE_BEGIN_DRAG, self._on_begin_drag)
        self.add_button.Bind(wx.EVT_BUTTON, lambda event: self.add_selection())
        refresh.Bind(wx.EVT_BUTTON, lambda event: self.reload())
        close.Bind(wx.EVT_BUTTON, lambda event: self.Close())
        self.add_button.Disable()
        self.update_connection()
        self.reload()

    # -- status -------------------------------------------------------------------------------

    def update_connection(self) -> None:
        """Show who is connected where (title and status bar)."""
        info = self.source.manager.info
        if info is None:
            self.SetTitle(f"{TITLE} (not connected)")
            self.status.SetStatusText("Not connected: use Plugins ▸ Connect to OMERO.", 0)
            return
        self.SetTitle(f"{TITLE} — {info.user}@{info.server}")
        self.status.SetStatusText(f"Connected to {info.server} as {info.user} "
                                  f"(group {info.group})", 0)

    def _say(self, text: str) -> None:
        self.status.SetStatusText(text, 1)

    # -- loading ------------------------------------------------------------------------------

    def reload(self) -> None:
        """Forget everything loaded and list the groups again."""
        self.tree.DeleteChildren(self.root)
        self._items_by_image.clear()
        self._load_start()

        def done(entries: list[Entry] | None, error: BaseException | None) -> None:
            if not self:
                return
            self._load_end()
            if error is not None or entries is None:
                self._error(error)
                return
            for entry in entries:
                self._append(self.root, entry)
            first, _ = self.tree.GetFirstChild(self.root)
            if first.IsOk():
                self.tree.Expand(first)

        bridge.submit(self.source.roots, on_done=done)

    def _load_start(self) -> None:
        self.pending += 1
        self._say("Loading…")

    def _load_end(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self._say("")

    def _error(self, error: BaseException | None) -> None:
        text = error_text(error or RuntimeError("unknown error"))
        self._say("Failed")
        self.status.SetStatusText(text, 0)
        log.warning("OMERO browser: %s", text)

    def _append(self, parent: Any, entry: Entry) -> Any:
        kind = entry.node.kind
        icon = self._icon["group" if kind in (GROUP, MY_DATA) else
                          "image" if entry.is_image else "folder"]
        item = self.tree.AppendItem(parent, describe(entry.node), icon, data=entry)
        if entry.has_children:
            self.tree.AppendItem(item, "Loading…", self._icon["wait"], data=_Placeholder())
        if entry.is_image:
            self._items_by_image.setdefault(entry.node.id, []).append(item)
            if entry.node.id in self._thumb_icons:
                self.tree.SetItemImage(item, self._thumb_icons[entry.node.id])
        return item

    def _on_expanding(self, event: Any) -> None:
        item = event.GetItem()
        child, _ = self.tree.GetFirstChild(item)
        if child.IsOk() and isinstance(self.tree.GetItemData(child), _Placeholder):
            entry = self.tree.GetItemData(item)
            self._load_page(item, entry, 0, placeholder=child)

    def _load_page(self, item: Any, entry: Entry, offset: int, *,
                   placeholder: Any | None = None, more: Any | None = None) -> None:
        self._load_start()
        group_id = entry.group_id if entry.node.kind != GROUP else entry.node.id

        def done(page: Page | None, error: BaseException | None) -> None:
            if not self:
                return
            self._load_end()
            for old in (placeholder, more):
                if old is not None and old.IsOk():
                    self.tree.Delete(old)
            if error is not None or page is None:
                self._error(error)
                return
            images: list[int] = []
            for node in page.items:
                self._append(item, Entry(node, group_id))
                if node.kind == Kind.IMAGE.value:
                    images.append(node.id)
            if page.has_more:
                shown = page.offset + len(page.items)
                self.tree.AppendItem(item, f"Load more…  ({shown} of {page.total} shown)",
                                     self._icon["more"], data=_More(entry, shown))
            self._load_thumbnails(images)
            self._say(f"{page.offset + len(page.items)} of {page.total} in {entry.node.name}")

        bridge.submit(self.source.children, entry, offset, on_done=done)

    def _load_thumbnails(self, image_ids: Sequence[int]) -> None:
        wanted = [i for i in image_ids if i not in self._thumbs]
        if not wanted:
            return

        def done(found: dict[int, bytes] | None, error: BaseException | None) -> None:
            if not self or error is not None or not found:
                if error is not None:
                    log.info("thumbnails unavailable: %s", error_text(error))
                return
            for image_id, data in found.items():
                self._thumbs[image_id] = data
                bitmap = _scaled(data, ICON)
                if bitmap is None:
                    continue
                index = self.icons.Add(bitmap)
                self._thumb_icons[image_id] = index
                for item in self._items_by_image.get(image_id, []):
                    if item.IsOk():
                        self.tree.SetItemImage(item, index)
            self._show_selection()

        bridge.submit(self.source.thumbnails, list(wanted), on_done=done)

    def load_more(self, item: Any) -> None:
        """Fetch the next page of the branch that ``item`` (a "load more…" entry) ends."""
        more = self.tree.GetItemData(item)
        if not isinstance(more, _More) or more.loading or more.entry is None:
            return
        more.loading = True
        self.tree.SetItemText(item, "Loading more…")
        self._load_page(self.tree.GetItemParent(item), more.entry, more.offset, more=item)

    def _on_activated(self, event: Any) -> None:
        item = event.GetItem()
        if isinstance(self.tree.GetItemData(item), _More):
            self.load_more(item)
        elif self.tree.ItemHasChildren(item):
            self.tree.Toggle(item)

    # -- selection ----------------------------------------------------------------------------

    def selected_entries(self) -> list[Entry]:
        """The selected groups, containers and images, in tree order."""
        out: list[Entry] = []
        for item in self.tree.GetSelections():
            data = self.tree.GetItemData(item)
            if isinstance(data, Entry):
                out.append(data)
        return out

    def _on_selection(self, event: Any) -> None:
        item = event.GetItem()
        if item.IsOk() and isinstance(self.tree.GetItemData(item), _More) \
                and self.tree.IsSelected(item):
            self.load_more(item)
        self._show_selection()

    def _show_selection(self) -> None:
        entries = self.selected_entries()
        self.add_button.Enable(bool(entries))
        blank = wx.Bitmap(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
        if len(entries) != 1:
            self.preview.SetBitmap(_blank(blank))
            self.details.SetLabel(f"{len(entries)} items selected." if entries else
                                  "Select an image or a container.")
        else:
            node = entries[0].node
            data = self._thumbs.get(node.id) if entries[0].is_image else None
            bitmap = _scaled(data, THUMBNAIL_SIZE) if data else None
            self.preview.SetBitmap(bitmap or _blank(blank))
            self.details.SetLabel("\n".join(f"{k}: {v}" for k, v in details(node)))
        self.details.Wrap(280)
        self.details.GetParent().Layout()

    # -- adding to the file list ----------------------------------------------------------

    def add_selection(self) -> None:
        """Add the selection's images to CellProfiler's file list (containers expanded)."""
        entries = self.selected_entries()
        if not entries:
            return
        self.add_button.Disable()
        self._load_start()
        self._say(f"Listing the images of {len(entries)} selected item(s)…")

        def done(urls: list[str] | None, error: BaseException | None) -> None:
            if not self:
                return
            self._load_end()
            self.add_button.Enable()
            if error is not None or urls is None:
                self._error(error)
                return
            add_urls(urls)
            self._say(f"Added {len(urls)} image(s) to the file list")

        bridge.submit(self.source.image_urls, entries, on_done=done)

    def _on_begin_drag(self, event: Any) -> None:
        info = self.source.manager.info
        entries = self.selected_entries()
        if info is None or not entries:
            return
        links = []
        for entry in entries:
            ref = entry.ref
            if ref is None:
                self._say("Groups cannot be dragged: use Add to file list")
                continue
            links.append(refs.web_url(ObjectRef(ref.kind, ref.id, info.server.host),
                                      self.source.manager.settings.server.web_url or None))
        if not links:
            return
        data = wx.TextDataObject("\n".join(links))
        source = wx.DropSource(self.tree)
        source.SetData(data)
        result = source.DoDragDrop(wx.Drag_CopyOnly)
        if result in (wx.DragCopy, wx.DragMove):
            self._say(f"Dropped {len(links)} item(s) on the file list")


def _art(art_id: Any) -> Any:
    """A stock icon at exactly the tree's icon size (themes may answer another size)."""
    bitmap = wx.ArtProvider.GetBitmap(art_id, wx.ART_OTHER, (ICON, ICON))
    if bitmap.GetWidth() == ICON and bitmap.GetHeight() == ICON:
        return bitmap
    image = bitmap.ConvertToImage().Scale(ICON, ICON, wx.IMAGE_QUALITY_HIGH)
    return wx.Bitmap(image)


def _blank(bitmap: Any) -> Any:
    dc = wx.MemoryDC(bitmap)
    dc.SetBackground(wx.Brush(wx.SystemSettings.GetColour(wx.SYS_COLOUR_BTNFACE)))
    dc.Clear()
    dc.SelectObject(wx.NullBitmap)
    return bitmap


# -- the file list --------------------------------------------------------------------------

def controller() -> Any | None:
    """CellProfiler's pipeline controller (owner of the file list), if the window exists."""
    frame = connect.main_frame()
    return getattr(frame, "pipeline_controller", None)


def add_urls(urls: Sequence[str]) -> None:
    """Add ``urls`` to the Images module's file list (GUI thread)."""
    ctrl = controller()
    if ctrl is None or not urls:
        return
    ctrl.add_urls(list(urls))


def drop_text(text: str) -> None:
    """Handle text dropped on the file list: OMERO image links go straight in, OMERO
    container links are expanded into their images, anything else goes to CellProfiler."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    images: list[str] = []
    containers: list[ObjectRef] = []
    others: list[str] = []
    for line in lines:
        try:
            found = refs.parse(line)
        except InvalidReference:
            others.append(line)
            continue
        if len(found) == 1 and found[0].kind is Kind.IMAGE:
            images.append(line)
        else:
            for ref in found:
                if ref.kind is Kind.IMAGE:
                    images.append(refs.web_url(ref) if ref.host else refs.legacy_url(ref))
                else:
                    containers.append(ref)
    if images:
        add_urls(images)
    if others:
        ctrl = controller()
        if ctrl is not None:
            ctrl.on_pathlist_drop_text(0, 0, "\n".join(others))
    if containers:
        host = next((r.host for r in containers if r.host), None)
        if not connect.ensure_connected(host, why="Log in to add the images of the "
                                                  "dropped OMERO containers."):
            return
        source = BrowseSource(connect.manager())
        entries = [Entry(Node(ref.kind.value, ref.id, str(ref))) for ref in containers]

        def done(urls: list[str] | None, error: BaseException | None) -> None:
            if error is not None or urls is None:
                wx.MessageBox(f"Could not list the images: {error_text(error or Exception())}",
                              "OMERO", wx.ICON_ERROR)
                return
            add_urls(urls)

        bridge.submit(source.image_urls, entries, on_done=done)


class FileListDropTarget(wx.DropTarget):
    """Accepts files (as CellProfiler's own target does) and text with OMERO links."""

    def __init__(self, pipeline_controller: Any) -> None:
        super().__init__()
        self.pipeline_controller = pipeline_controller
        self.files = wx.FileDataObject()
        self.text = wx.TextDataObject()
        self.composite = wx.DataObjectComposite()
        self.composite.Add(self.files, True)
        self.composite.Add(self.text)
        self.SetDataObject(self.composite)

    def OnEnter(self, x: int, y: int, default: Any) -> Any:
        return wx.DragCopy

    def OnDragOver(self, x: int, y: int, default: Any) -> Any:
        return wx.DragCopy

    def OnData(self, x: int, y: int, default: Any) -> Any:
        if not self.GetData():
            return wx.DragNone
        received = self.composite.GetReceivedFormat()
        if received.GetType() == wx.DF_FILENAME:
            self.pipeline_controller.on_pathlist_drop_files(x, y, self.files.GetFilenames())
        else:
            # After the drop has finished: expanding containers may open a dialog.
            wx.CallAfter(drop_text, self.text.GetText())
        return wx.DragCopy


_browser: BrowserFrame | None = None


def open_browser() -> BrowserFrame:
    """Show the browser (one per process; raised when already open)."""
    global _browser
    if _browser:
        _browser.update_connection()
        _browser.Raise()
        return _browser
    _browser = BrowserFrame(connect.main_frame())
    _browser.Show()
    return _browser


def current_browser() -> BrowserFrame | None:
    return _browser if _browser else None


def close_browser() -> None:
    """Close the browser if it is open (on disconnect and at exit)."""
    global _browser
    if _browser:
        _browser.Destroy()
    _browser = None
