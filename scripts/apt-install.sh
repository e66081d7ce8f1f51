# Sourced by the set-up scripts: apt_install PKG... installs Debian packages quietly, through sudo
# when not root (saying what to run when there is no sudo). Needs a `say` function.
apt_install() {
  local sudo=
  if [ "$(id -u)" -ne 0 ]; then
    sudo=sudo
    command -v sudo >/dev/null || { say "missing: $*; install them as root: apt-get install $*"; exit 1; }
  fi
  say "installing $* from Debian"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
