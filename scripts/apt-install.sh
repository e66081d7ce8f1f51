# Sourced by the set-up scripts: apt_install PKG... installs Debian packages quietly, through sudo
# when not root (saying what to run when there is no sudo). Needs a `say` function.
# apt's own output (debconf's "delaying package configuration", progress lines) goes to a log
# file that is shown only when the install fails.
apt_install() {
  local sudo=() log status=0
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { say "missing: $*; install them as root: apt-get install $*"; exit 1; }
    sudo=(sudo)
  fi
  say "installing $* from Debian"
  log=$(mktemp "${TMPDIR:-/tmp}/tandem-apt.XXXXXX")
  # env: sudo resets the environment, so DEBIAN_FRONTEND must be passed on the command line.
  { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"; } >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    cat "$log" >&2
    rm -f "$log"
    say "apt-get failed (exit $status) installing $*; its output is above"
    exit 1
  fi
  rm -f "$log"
}
