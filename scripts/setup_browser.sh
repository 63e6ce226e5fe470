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
# line, only when the set-up is impossible here (scripts/lib_apt.sh, shared with
# setup_gui.sh: missing and no root, no apt-get, or apt-get failed); the tests then skip,
# as the GUI tests do on setup_gui.sh's exit 3. SETUP_DRY_RUN=1 installs nothing.
set -euo pipefail

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver}
APT_PACKAGES=(chromium chromium-driver)

SETUP_TAG=setup-browser
# shellcheck source=scripts/lib_apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib_apt.sh"

# Both run (`--version` needs no display): an installed but broken browser is not ready.
system_ready() {
  [ -x "$CHROMIUM" ] && [ -x "$CHROMEDRIVER" ] \
    && "$CHROMIUM" --headless=new --no-sandbox --version >/dev/null 2>&1 \
    && "$CHROMEDRIVER" --version >/dev/null 2>&1
}

apt_ensure system_ready "$CHROMIUM and $CHROMEDRIVER for the browser tests" "${APT_PACKAGES[@]}"

say "ready: $("$CHROMIUM" --headless=new --no-sandbox --version 2>/dev/null | head -1)," \
  "$("$CHROMEDRIVER" --version | head -1)"
