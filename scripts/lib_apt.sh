# Sourced by scripts/setup_gui.sh and scripts/setup_browser.sh: the one way they install
# Debian packages, and the one way they say that the set-up is impossible here.
#
#   SETUP_TAG=setup-gui; source scripts/lib_apt.sh
#   apt_ensure system_ready "the reason the packages are needed" pkg1 pkg2 ...
#
# `apt_ensure` returns at once when READY (a shell function or command) succeeds.
# Otherwise it installs the packages with apt-get (as root only; the install is tried
# first and `apt-get update` run only when it fails, as an image without package lists
# needs) and checks READY again. Every way it cannot succeed ends the script with exit 3
# (IMPOSSIBLE) and the reason on the last line of stderr: not root, no apt-get, apt-get
# failed, or the packages installed but READY still fails. Callers (tests/gui,
# tests/web) skip on 3 and fail on any other non-zero exit.
#
# SETUP_DRY_RUN=1 installs nothing: it prints the apt-get commands it would run and
# exits 3 (the set-up was not done), so both scripts' paths can be checked anywhere.

SETUP_TAG=${SETUP_TAG:-setup}
APT_IMPOSSIBLE=3

say() { echo "[$SETUP_TAG] $*" >&2; }
impossible() { echo "[$SETUP_TAG] IMPOSSIBLE: $*" >&2; exit "$APT_IMPOSSIBLE"; }

apt_ensure() {
  local ready=$1 why=$2
  shift 2
  local packages=("$@")
  if "$ready"; then
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    impossible "need ${packages[*]} ($why) but not root;" \
      "ask an administrator to run: apt-get install -y ${packages[*]}"
  fi
  if ! command -v apt-get >/dev/null; then
    impossible "no apt-get: this set-up needs Debian's ${packages[*]} packages ($why)."
  fi
  local apt_get=(apt-get -o DPkg::Lock::Timeout=300 -y -q)
  local install=("${apt_get[@]}" install --no-install-recommends "${packages[@]}")
  if [ "${SETUP_DRY_RUN:-}" = 1 ]; then
    say "would run: DEBIAN_FRONTEND=noninteractive ${install[*]}"
    say "would run, if that fails: ${apt_get[*]} update, then the install again"
    impossible "dry run: ${packages[*]} not installed."
  fi
  say "installing ${packages[*]} with apt-get"
  if ! DEBIAN_FRONTEND=noninteractive "${install[@]}" >/dev/null; then
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" update >/dev/null \
      || impossible "apt-get update failed; cannot install ${packages[*]}."
    DEBIAN_FRONTEND=noninteractive "${install[@]}" >/dev/null \
      || impossible "apt-get could not install ${packages[*]}."
  fi
  "$ready" || impossible "apt-get installed ${packages[*]} but the check still fails ($why)."
}
