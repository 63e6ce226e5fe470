"""A headless Chromium driven by selenium, for the browser tests of OMERO.web and OMERO.iviewer.

Debian's ``chromium`` and ``chromium-driver`` (``scripts/setup_browser.sh``) are used
directly: ``Service(executable_path=...)`` means Selenium Manager never looks for (or
downloads) a browser. Every step saves a screenshot under ``test-artifacts/web/`` so a
failure, and a success, can be looked at afterwards.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from PIL import Image, ImageChops
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chromium.webdriver import ChromiumDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "web"
SETUP_SCRIPT = ROOT / "scripts" / "setup_browser.sh"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
IMPOSSIBLE = 3  # setup_browser.sh's exit code when the set-up cannot be done here
# A fixed size (and scale 1) so screenshots and element crops are comparable run to run.
WINDOW = (1400, 1000)

T = TypeVar("T")


@dataclass(frozen=True)
class SetupResult:
    """What ``scripts/setup_browser.sh`` answered: its exit code and its last line."""

    code: int
    output: str

    @property
    def impossible(self) -> bool:
        return self.code == IMPOSSIBLE

    @property
    def reason(self) -> str:
        lines = self.output.strip().splitlines()
        return lines[-1] if lines else f"exit {self.code}"


_setup: list[SetupResult] = []


def setup_browser() -> SetupResult:
    """Run ``scripts/setup_browser.sh`` once per process (it installs chromium when root)."""
    if not _setup:
        proc = subprocess.run([str(SETUP_SCRIPT)], cwd=ROOT, capture_output=True, text=True,
                              check=False)
        _setup.append(SetupResult(proc.returncode, proc.stdout + proc.stderr))
    return _setup[0]


@dataclass(frozen=True)
class PixelStats:
    """How varied a rendered region is: a blank (one-colour) region has one colour."""

    width: int
    height: int
    colours: int
    spread: int  # the largest max-min over the R, G and B bands

    @property
    def blank(self) -> bool:
        return self.colours <= 1


def decode_png(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("RGB")


def changed_fraction(before: Image.Image, after: Image.Image) -> float:
    """The fraction of pixels whose colour differs between two same-sized screenshots."""
    if before.size != after.size:
        return 1.0
    diff = ImageChops.difference(before, after).convert("L")
    histogram = diff.histogram()
    return 1.0 - histogram[0] / (before.width * before.height)


def pixel_stats(png: bytes) -> PixelStats:
    """Distinct colours and value spread of a PNG (a screenshot of an element)."""
    image = decode_png(png)
    colours = image.getcolors(maxcolors=1 << 24) or []
    # An RGB image's extrema are one (low, high) pair per band.
    bands = cast("tuple[tuple[int, int], ...]", image.getextrema())
    spread = max(high - low for low, high in bands)
    return PixelStats(image.width, image.height, len(colours), int(spread))


class BrowserTimeout(AssertionError):
    """A condition the page should reach did not hold in time (a screenshot was saved)."""

    def __init__(self, what: str, timeout: float, screenshot: Path, url: str,
                 last_error: BaseException | None) -> None:
        detail = f" (last error: {last_error!r})" if last_error else ""
        super().__init__(f"The page did not show {what} within {timeout:g} s at {url}{detail}; "
                         f"screenshot: {screenshot}")
        self.what, self.timeout, self.screenshot, self.url = what, timeout, screenshot, url
        self.last_error = last_error


class Browser:
    """One headless Chromium: navigation, waits that fail with a screenshot, pixel checks."""

    def __init__(self, driver: ChromiumDriver, base_url: str, artifacts: Path = ARTIFACTS) -> None:
        self.driver = driver
        self.base_url = base_url.rstrip("/") + "/"
        self.artifacts = artifacts
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.steps: list[Path] = []

    # -- navigation and screenshots --------------------------------------------------------

    def url(self, path: str) -> str:
        return self.base_url + path.lstrip("/")

    def open(self, path: str) -> None:
        self.driver.get(self.url(path))

    def shot(self, name: str) -> Path:
        """Save a screenshot of the whole window as ``<artifacts>/<name>.png``."""
        path = self.artifacts / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
        self.driver.save_screenshot(str(path))
        self.steps.append(path)
        return path

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def console_errors(self) -> list[str]:
        """The browser console's SEVERE messages since the last call (for failure messages)."""
        with contextlib.suppress(WebDriverException):
            return [e["message"] for e in self.driver.get_log("browser")
                    if e.get("level") == "SEVERE"]
        return []

    # -- waiting --------------------------------------------------------------------------

    def wait(self, condition: Callable[[], T | Literal[False] | None], what: str,
             timeout: float = 30.0, poll: float = 0.25) -> T:
        """Poll ``condition`` until it returns something truthy and return that.

        Exceptions while polling (an element not there yet, a stale one) count as "not yet";
        on timeout a screenshot is saved and ``BrowserTimeout`` says what was awaited.
        """
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while True:
            try:
                value = condition()
                if value:
                    return value
            except (WebDriverException, LookupError, ValueError) as exc:
                last_error = exc
            if time.monotonic() > deadline:
                name = "timeout-" + re.sub(r"\W+", "-", what)[:60]
                raise BrowserTimeout(what, timeout, self.shot(name), self.driver.current_url,
                                     last_error)
            time.sleep(poll)

    def visible(self, css: str) -> list[WebElement]:
        """The displayed elements matching ``css`` (an empty list while there are none)."""
        return [e for e in self.driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]

    def wait_visible(self, css: str, what: str, timeout: float = 30.0) -> list[WebElement]:
        return self.wait(lambda: self.visible(css), what, timeout)

    # -- OMERO.web ------------------------------------------------------------------------

    def login(self, user: str, password: str, timeout: float = 30.0) -> None:
        """Log in through OMERO.web's login form, as a person does; waits for the webclient."""
        self.open("webclient/login/")
        self.wait_visible("#id_username", "the login form", timeout)
        self.driver.find_element(By.ID, "id_username").send_keys(user)
        self.driver.find_element(By.ID, "id_password").send_keys(password)
        self.driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        self.wait(lambda: "/login" not in self.driver.current_url or self._login_error(),
                  f"the webclient after logging in as {user}", timeout)
        if "/login" in self.driver.current_url:
            shot = self.shot(f"login-refused-{user}")
            raise AssertionError(f"OMERO.web refused the login of {user}: "
                                 f"{self._login_error()!r} (screenshot: {shot})")

    def _login_error(self) -> str:
        """The login form's error text (only on the login page)."""
        if "/login" not in self.driver.current_url:
            return ""
        return " ".join(e.text for e in self.visible(".error, .errorlist") if e.text.strip())

    def logout(self) -> None:
        """Forget the session (a fresh login follows; OMERO.web's logout needs a POST)."""
        self.driver.delete_all_cookies()

    # -- what the page shows ---------------------------------------------------------------

    def element_pixels(self, element: WebElement) -> PixelStats:
        """Pixel statistics of what the element shows on screen (a crop of a screenshot)."""
        self.js("arguments[0].scrollIntoView({block: 'center'})", element)
        return pixel_stats(element.screenshot_as_png)

    def element_image(self, element: WebElement) -> Image.Image:
        """What the element shows on screen, as an RGB image."""
        return decode_png(element.screenshot_as_png)

    def natural_size(self, img: WebElement) -> tuple[int, int]:
        """An ``<img>``'s decoded size: (0, 0) until it has loaded, or when it failed to."""
        width, height = self.js("return [arguments[0].naturalWidth, arguments[0].naturalHeight]",
                                img)
        return int(width), int(height)


def chrome_options() -> webdriver.ChromeOptions:
    """Headless Chromium at a fixed size; no sandbox (tests may run as root in a container)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                     "--force-device-scale-factor=1", "--no-first-run",
                     "--disable-extensions", "--disable-background-networking",
                     "--disable-component-update", "--disable-default-apps", "--disable-sync",
                     "--lang=en-US",
                     # The tests never leave this machine: OMERO.web's login page asks
                     # GitHub for OMERO.insight's releases, which fails at once here.
                     "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


@contextlib.contextmanager
def chromium(base_url: str, artifacts: Path = ARTIFACTS) -> Iterator[Browser]:
    """A headless Chromium for ``base_url``, quit afterwards (no orphan browser)."""
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER),
                              options=chrome_options())
    try:
        driver.set_page_load_timeout(60)
        yield Browser(driver, base_url, artifacts)
    finally:
        driver.quit()
