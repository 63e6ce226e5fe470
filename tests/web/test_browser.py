"""The real OMERO.web and OMERO.iviewer in front of the emulator, seen in a headless Chromium.

A person's first look after a run: log in, browse to the demo dataset, see its thumbnails,
open an image with its channels and nuclei ROIs in OMERO.iviewer, open the label image,
read the table; another user must not see demo's private data. Each test asserts on what
the page shows (tree entries, pixels that are not all one colour, the ROI count, table
rows) and saves a screenshot of every step under ``test-artifacts/web/``. Each test also
reads the server side's logs for the time it ran: the emulator must log no unimplemented
operation and no HQL it cannot parse, and OMERO.web must answer no request with a 5xx.

Skipped only when ``scripts/setup_browser.sh`` says the browser cannot be set up here
(exit 3), as the GUI tests are.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from cellprofiler_omero.commands.web import OmeroWeb
from tests.web.browser import ARTIFACTS, Browser, changed_fraction, chromium, setup_browser
from tests.web.conftest import TABLE_NAME, WebEmulator, WebIds

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DEMO_PROJECT = "CellProfiler demo"
DEMO_DATASET = "Nuclei and cytoplasm"
DEMO_SCREEN = "Demo screen"
DEMO_PLATE = "Plate 1"
OTHER_PROJECT = "Other's project"
OTHER_DATASET = "Other's dataset"

#: What the emulator logs for a gap (emulator/icebase.py, emulator/services/query.py), and
#: any traceback it logs.
EMULATOR_GAP = re.compile(r"not implemented by the emulator|HQL not supported by the emulator"
                          r"|unsupported HQL|Traceback")
#: gunicorn's access-log line: ... "GET /path HTTP/1.1" STATUS ...
ACCESS_STATUS = re.compile(r'"(?P<request>[A-Z]+ \S+ [^"]*)" (?P<status>\d{3}) ')


class ServerLogs:
    """The emulator's, gunicorn's and OMERO.web's logs, read from where a test began."""

    def __init__(self, emulator_log: Path, access_log: Path, web_log: Path,
                 gunicorn_log: Path) -> None:
        self.paths = {"emulator": emulator_log, "access": access_log, "web": web_log,
                      "gunicorn": gunicorn_log}
        self.start = {name: self._size(path) for name, path in self.paths.items()}

    @staticmethod
    def _size(path: Path) -> int:
        return path.stat().st_size if path.exists() else 0

    def new_lines(self, name: str) -> list[str]:
        path = self.paths[name]
        if not path.exists():
            return []
        with path.open("rb") as log:
            log.seek(self.start[name])
            return log.read().decode(errors="replace").splitlines()

    def problems(self) -> list[str]:
        """Every gap, traceback or 5xx logged since the test began (one line each)."""
        found = [f"emulator: {line.strip()}" for line in self.new_lines("emulator")
                 if EMULATOR_GAP.search(line)]
        for line in self.new_lines("access"):
            match = ACCESS_STATUS.search(line)
            if match and match["status"].startswith("5"):
                found.append(f"OMERO.web answered {match['status']}: {match['request']}")
        found += [f"OMERO.web log: {line.strip()}" for line in self.new_lines("web")
                  if " ERROR " in line or line.startswith("Traceback")]
        found += [f"gunicorn: {line.strip()}" for line in self.new_lines("gunicorn")
                  if "[ERROR]" in line or line.startswith("Traceback")]
        return found

    def assert_clean(self) -> None:
        problems = self.problems()
        assert not problems, ("the server side logged problems while the page was used:\n"
                              + "\n".join(problems))


@pytest.fixture(scope="module")
def browser(omero_web: OmeroWeb) -> Iterator[Browser]:
    """One headless Chromium for the module (a fresh login per test)."""
    result = setup_browser()
    if result.impossible:
        pytest.skip(f"browser set-up impossible here: {result.reason}")
    if result.code != 0:
        pytest.fail(f"scripts/setup_browser.sh failed (exit {result.code}):\n"
                    f"{result.output[-4000:]}")
    # This run's screenshots only (a stale "timeout-…" one would mislead).
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    with chromium(omero_web.url) as opened:
        yield opened


@pytest.fixture
def logs(web_emulator: WebEmulator, omero_web: OmeroWeb) -> ServerLogs:
    return ServerLogs(web_emulator.emulator.data_dir / "emulator.log",
                      omero_web.home / "var" / "log" / "access.log", omero_web.log_path,
                      omero_web.gunicorn_log)


#: iviewer asks OMERO.web whether the image-region micro-service is installed; the 404 is
#: the answer "no", as on any real deployment without it.
IMAGE_REGION_PROBE = "/omero_ms_image_region/ - Failed to load resource"


def assert_console_clean(page: Browser) -> None:
    """No script error and no failed request to OMERO.web in the browser's console.

    Requests elsewhere fail on purpose (the browser resolves no other host: OMERO.web's
    login page asks GitHub for OMERO.insight's releases).
    """
    errors = [e for e in page.console_errors()
              if IMAGE_REGION_PROBE not in e
              and not (e.startswith("http") and not e.startswith(page.base_url))]
    assert not errors, "the browser console shows errors:\n" + "\n".join(errors)


@pytest.fixture
def page(browser: Browser) -> Iterator[Browser]:
    """The browser, logged out again after the test (the next test logs in itself)."""
    browser.console_errors()  # what an earlier test left there is not this test's
    yield browser
    browser.logout()


def channel_labels(web_emulator: WebEmulator, image_id: int) -> list[str]:
    """The image's channel names as the server has them (BlitzGateway, not OMERO.web)."""
    from omero.gateway import BlitzGateway

    emu = web_emulator.emulator
    conn = BlitzGateway("demo", "demo", host=emu.host, port=emu.port)
    assert conn.connect(), conn.getLastError()
    try:
        image = conn.getObject("Image", image_id)
        return [str(channel.getLabel()) for channel in image.getChannels(noRE=True)]
    finally:
        conn.close()


# -- the webclient -------------------------------------------------------------------------


#: The text of a tree node's own label: OMERO.web's jstree puts the child count in a
#: ``<span class="children_count">`` inside the anchor, which is not the name.
OWN_TEXT = ("return Array.from(arguments[0].childNodes).filter(n => n.nodeType === 3)"
            ".map(n => n.textContent).join('').trim()")


def tree_anchors(page: Browser) -> list[tuple[str, WebElement]]:
    """The tree's visible node labels: (name, anchor element)."""
    return [(str(page.js(OWN_TEXT, anchor)), anchor)
            for anchor in page.visible("#dataTree .jstree-anchor")]


def tree_texts(page: Browser) -> list[str]:
    """The names the webclient's tree shows."""
    return [name for name, _anchor in tree_anchors(page) if name]


def tree_node(page: Browser, name: str) -> WebElement:
    """The tree's ``<li>`` whose own anchor shows ``name``."""
    for text, anchor in tree_anchors(page):
        if text == name:
            node: WebElement = anchor.find_element(By.XPATH, "./..")
            return node
    raise LookupError(name)


def open_tree(page: Browser, user: str, expected: str) -> list[str]:
    """The webclient tree's names once it shows ``expected`` (loaded for ``user``)."""
    page.wait_visible("#dataTree", "the webclient's tree")
    return page.wait(lambda: (names := tree_texts(page)) and expected in names and names,
                     f"{expected!r} in {user}'s tree")


def expand(page: Browser, name: str, child: str) -> None:
    """Open the tree node ``name`` (its triangle, as a person does) until ``child`` shows."""
    node = tree_node(page, name)
    if "jstree-closed" in (node.get_attribute("class") or ""):
        node.find_element(By.CSS_SELECTOR, ":scope > i.jstree-ocl").click()
    page.wait(lambda: child in tree_texts(page), f"{child!r} under {name!r}")


def test_demo_logs_in_through_the_form_and_sees_the_dataset_thumbnails_and_its_table(
        page: Browser, logs: ServerLogs, web_ids: WebIds) -> None:
    page.login("demo", "demo")
    page.shot("01-webclient-demo")
    open_tree(page, "demo", DEMO_PROJECT)

    # Open the project (its triangle) and select the dataset, as a person does.
    expand(page, DEMO_PROJECT, DEMO_DATASET)
    page.shot("02-tree-project-open")
    tree_node(page, DEMO_DATASET).find_element(By.CSS_SELECTOR,
                                               ":scope > .jstree-anchor").click()

    icons = page.wait_visible("#dataIcons li.row", "the dataset's images in the centre panel")
    shown = {int(icon.get_attribute("data-id") or 0) for icon in icons}
    assert {web_ids.image, web_ids.label_image} <= shown, (
        f"the dataset shows images {sorted(shown)}")
    thumbs = [icon.find_element(By.CSS_SELECTOR, "img") for icon in icons]
    page.wait(lambda: all(page.natural_size(img)[0] > 0 for img in thumbs),
              "every thumbnail loaded")
    page.shot("03-dataset-thumbnails")

    source = page.driver.find_element(By.CSS_SELECTOR, f"#image_icon-{web_ids.image} img")
    stats = page.element_pixels(source)
    assert not stats.blank and stats.spread > 16, (
        f"the image's thumbnail is all one colour: {stats}")

    # The right panel lists the dataset's table among its attachments, with a link to
    # OMERO.web's table page, and counts it (IQuery's type(an.class) per annotation).
    page.wait_visible("#fileannsPane h1", "the dataset's Attachments section")[0].click()
    entry = page.wait(
        lambda: next((li for li in page.visible("#fileanns_container li.file_ann_wrapper")
                      if TABLE_NAME in li.text), None), f"{TABLE_NAME} among the attachments")
    page.shot("03b-dataset-attachments")
    view = entry.find_element(By.CSS_SELECTOR, "a.btn_view").get_attribute("href") or ""
    assert view.endswith(f"/webclient/omero_table/{web_ids.table_file}/"), view
    count = page.driver.find_element(By.CSS_SELECTOR, "#fileannsPane .annotationCount").text
    assert count.strip() == "1", f"the Attachments section counts {count!r}"
    assert_console_clean(page)
    logs.assert_clean()


def test_demo_opens_the_plate_and_sees_a_thumbnail_in_every_well(
        page: Browser, logs: ServerLogs, web_ids: WebIds) -> None:
    page.login("demo", "demo")
    open_tree(page, "demo", DEMO_SCREEN)
    expand(page, DEMO_SCREEN, DEMO_PLATE)
    tree_node(page, DEMO_PLATE).find_element(By.CSS_SELECTOR, ":scope > .jstree-anchor").click()

    wells = web_ids.seeded["wells"]
    assert isinstance(wells, dict)
    cells = page.wait(lambda: len(found := page.visible("td.well")) == len(wells) and found,
                      f"the plate's {len(wells)} wells in its grid")
    assert {cell.get_attribute("id") for cell in cells} == {f"well-{w}" for w in wells.values()}
    images = [cell.find_element(By.CSS_SELECTOR, "img[id^='image-']") for cell in cells]
    page.wait(lambda: all(page.natural_size(img)[0] > 0 for img in images),
              "every well's thumbnail loaded")
    page.shot("03c-plate-grid")
    for img in images:
        stats = page.element_pixels(img)
        assert not stats.blank, f"well image {img.get_attribute('id')} is all one colour"
    assert_console_clean(page)
    logs.assert_clean()


def test_other_user_does_not_see_demos_private_project_dataset_or_image(
        page: Browser, logs: ServerLogs, web_ids: WebIds) -> None:
    page.login("other", "other")
    open_tree(page, "other", OTHER_PROJECT)
    expand(page, OTHER_PROJECT, OTHER_DATASET)
    page.shot("04-webclient-other")
    names = tree_texts(page)
    assert DEMO_PROJECT not in names and DEMO_DATASET not in names, (
        f"other sees demo's private data: {names}")

    # A link straight to demo's dataset shows other nothing of it either.
    page.open(f"webclient/?show=dataset-{web_ids.dataset}")
    open_tree(page, "other", OTHER_PROJECT)
    page.shot("04b-webclient-other-link-to-demo-dataset")
    names = tree_texts(page)
    assert DEMO_PROJECT not in names and DEMO_DATASET not in names, names
    assert_console_clean(page)

    # OMERO.iviewer: demo's image is "not found" for other, and nothing is rendered.
    page.open(f"iviewer/?images={web_ids.image}")
    page.wait(lambda: any("Image not found" in m.text for m in page.visible(".modal")),
              "iviewer's 'Image not found'")
    page.shot("04c-iviewer-other-demo-image")
    assert not viewer_pixels_rendered(page)
    # The console saw OMERO.web's 404 for the image's data (so the console check sees
    # failed requests; this one is the right answer and is not left for the next test).
    refused = f"/iviewer/image_data/{web_ids.image}/"
    page.wait(lambda: any(refused in e and "404" in e for e in page.console_errors()),
              f"the 404 for {refused} in the console")
    logs.assert_clean()


# -- OMERO.iviewer ---------------------------------------------------------------------------


def viewer_pixels_rendered(page: Browser) -> bool:
    """True once the viewer's image canvas shows more than one colour."""
    canvases = [c for c in page.visible(".ol-viewport canvas")
                if c.size["width"] > 50 and c.size["height"] > 50]
    return any(not page.element_pixels(canvas).blank for canvas in canvases)


def open_in_iviewer(page: Browser, image_id: int, step: str) -> list[str]:
    """Open the image in OMERO.iviewer; returns the channel names its buttons show."""
    page.open(f"iviewer/?images={image_id}")
    buttons = page.wait_visible("button.channel", "the channel buttons", timeout=60)
    page.wait(lambda: viewer_pixels_rendered(page), "the image rendered in the viewer",
              timeout=60)
    page.shot(step)
    return [str(button.get_attribute("title") or button.text).strip() for button in buttons]


def roi_ids_in_table(page: Browser) -> set[str]:
    """The ROI ids of the rows in iviewer's ROI table (a row id is roi-<roi>[:<shape>])."""
    ids = set()
    for row in page.driver.find_elements(By.CSS_SELECTOR, ".regions-table-row"):
        found = re.fullmatch(r"roi-(-?\d+)(?::-?\d+)?", row.get_attribute("id") or "")
        if found:
            ids.add(found.group(1))
    return ids


def test_iviewer_renders_the_image_with_its_channels_and_nuclei_rois(
        page: Browser, logs: ServerLogs, web_emulator: WebEmulator, web_ids: WebIds) -> None:
    page.login("demo", "demo")
    labels = open_in_iviewer(page, web_ids.image, "05-iviewer-image")
    assert labels == channel_labels(web_emulator, web_ids.image)

    saved = len(web_ids.rois)
    # Found afresh on every poll: iviewer re-renders the tab as the image's data arrive.
    tab = page.wait(lambda: next((a for a in page.visible("#panel-tabs a[href='#rois']")
                                  if f"[{saved}]" in a.text), None),
                    f"the ROIs tab counting {saved}")
    tab.click()
    page.wait(lambda: len(roi_ids_in_table(page)) == saved,
              f"{saved} ROIs listed in the ROI table", timeout=60)
    page.shot("06-iviewer-rois")

    # The ROIs are drawn over the image: hiding them all changes what the viewer shows
    # (the masks cover a few percent of this field).
    viewer = page.visible(".ol-viewport")[0]
    shown = page.element_image(viewer)
    page.driver.find_element(By.ID, "shapes_visibility_toggler").click()
    page.wait(lambda: changed_fraction(shown, page.element_image(viewer)) > 0.005,
              "the viewer without the ROIs drawn")
    page.shot("06b-iviewer-rois-hidden")
    assert_console_clean(page)
    logs.assert_clean()


def test_label_image_opens_in_iviewer_and_the_table_shows_its_rows(
        page: Browser, logs: ServerLogs, web_emulator: WebEmulator, web_ids: WebIds) -> None:
    page.login("demo", "demo")
    labels = open_in_iviewer(page, web_ids.label_image, "07-iviewer-label-image")
    assert labels == channel_labels(web_emulator, web_ids.label_image)

    page.open(f"webclient/omero_table/{web_ids.table_file}/")
    summary = page.wait(
        lambda: next((found for p in page.visible("p")
                      if (found := re.search(r"Table rows: (\d+)\.", p.text))), None),
        "the table's row count")
    page.shot("08-table")
    assert int(summary.group(1)) == web_ids.table_rows
    header = [th.text.strip() for th in page.driver.find_elements(By.CSS_SELECTOR, "table th")]
    assert {"ObjectNumber", "Roi", "AreaShape_Area"} <= set(header), header
    # Below the header row, one <tr> per table row (a page holds up to 200).
    rows = page.driver.find_elements(By.CSS_SELECTOR, "table tr")
    assert len(rows) - 1 == min(web_ids.table_rows, 200)
    assert_console_clean(page)
    logs.assert_clean()


def test_the_log_check_reports_a_query_the_emulator_cannot_parse(
        logs: ServerLogs, web_emulator: WebEmulator) -> None:
    """The check every test above ends with does fire (on the emulator's real log line)."""
    import omero
    from omero.gateway import BlitzGateway

    emu = web_emulator.emulator
    conn = BlitzGateway("demo", "demo", host=emu.host, port=emu.port)
    assert conn.connect(), conn.getLastError()
    try:
        with pytest.raises(omero.QueryException):
            conn.c.sf.getQueryService().projection("select x from NoSuchClass x where ((", None)
    finally:
        conn.close()
    problems = logs.problems()
    assert any("NoSuchClass" in line for line in problems), problems
    with pytest.raises(AssertionError, match="NoSuchClass"):
        logs.assert_clean()
