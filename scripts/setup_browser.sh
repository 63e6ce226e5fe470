#!/usr/bin/env bash
# Make sure a headless Chromium and its chromedriver are here for the browser tests
# (tests/web/test_browser.py drives the real OMERO.web and OMERO.iviewer through them).
#
# Debian's `chromium` and `chromium-driver` come from the same source package, so their
# versions always match; selenium (pinned in constraints.txt) talks to that chromedriver
# directly and never lets Selenium Manager download a browser. A pip-installed browser
# would need the network at test time and a matching driver, hence apt-get.
#
# Idempotent: when both are present it only says so. Exits 3, with the reason on its last
# line, only when the set-up is impossible here (missing and no root, or no apt-get); the
# tests then skip, as the GUI tests do on setup_gui.sh's exit 3.
set -euo pipefail

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver}
APT_PACKAGES=(chromium chromium-driver)

say() { echo "[setup-browser] $*" >&2; }
impossible() { echo "[setup-browser] IMPOSSIBLE: $*" >&2; exit 3; }

# Both run (`--version` needs no display): an installed but broken browser is not ready.
system_ready() {
  [ -x "$CHROMIUM" ] && [ -x "$CHROMEDRIVER" ] \
    && "$CHROMIUM" --headless=new --no-sandbox --version >/dev/null 2>&1 \
    && "$CHROMEDRIVER" --version >/dev/null 2>&1
}

if ! system_ready; then
  if [ "$(id -u)" != 0 ]; then
    impossible "need ${APT_PACKAGES[*]} ($CHROMIUM, $CHROMEDRIVER) but not root;" \
      "ask an administrator to run: apt-get install -y ${APT_PACKAGES[*]}"
  fi
  if ! command -v apt-get >/dev/null; then
    impossible "no apt-get: the browser tests need Debian's ${APT_PACKAGES[*]} packages."
  fi
  say "installing ${APT_PACKAGES[*]} with apt-get"
  apt_get=(apt-get -o DPkg::Lock::Timeout=300 -y -q)
  # An image without package lists needs one update; try the install first (fast path).
  if ! DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install --no-install-recommends \
      "${APT_PACKAGES[@]}" >/dev/null; then
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" update >/dev/null
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install --no-install-recommends \
      "${APT_PACKAGES[@]}" >/dev/null || impossible "apt-get could not install ${APT_PACKAGES[*]}."
  fi
  system_ready || impossible "apt-get ran but $CHROMIUM or $CHROMEDRIVER does not run."
fi

say "ready: $("$CHROMIUM" --headless=new --no-sandbox --version 2>/dev/null | head -1)," \
  "$("$CHROMEDRIVER" --version | head -1)"
