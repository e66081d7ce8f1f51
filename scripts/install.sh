#!/usr/bin/env bash
# Installs tandem: both agents as one npm package with every dependency inside (npm install
# --global --prefix), their systemd units (ExecStart pointing at the commands installed here),
# the documentation the units name, and the sample configs. Run it as root for the default paths.
set -euo pipefail
umask 022

say() { printf 'install: %s\n' "$*" >&2; }
die() {
  say "error: $1"
  [ $# -lt 2 ] || printf '  hint: %s\n' "$2" >&2
  exit 1
}

usage() {
  cat <<'EOF'
Usage: scripts/install.sh [TARBALL] [--prefix DIR] [--sysconfdir DIR] [--unitdir DIR] [--docdir DIR]

Installs tandem-primary and tandem-standby (one npm package with every dependency inside), their
systemd units, the documentation and the sample configs. Without TARBALL it first builds the
package from this checkout (npm ci when needed, then npm pack); with TARBALL (a tandem-*.tgz made
by `npm pack`) it installs that, and needs neither a checkout nor the network.

  PREFIX/lib/node_modules/tandem      the package (upgrading replaces it)
  PREFIX/bin/tandem-primary           the commands
  PREFIX/bin/tandem-standby
  UNITDIR/tandem-primary.service      the units: ExecStart=PREFIX/bin/..., --config SYSCONFDIR/tandem/...
  UNITDIR/tandem-standby.service      (replaced on upgrade: change them with drop-ins, systemctl edit)
  DOCDIR/                             README.md, operations.md and the other docs; examples/
  SYSCONFDIR/tandem/*.yml.example     the sample configs (primary.yml and standby.yml are never touched)

Options:
  --prefix DIR      default /usr/local
  --sysconfdir DIR  default /etc
  --unitdir DIR     default /usr/local/lib/systemd/system with the default prefix (systemd looks
                    there, and /etc/systemd/system stays the administrator's), else /etc/systemd/system
  --docdir DIR      default PREFIX/share/doc/tandem
  -h, --help        this text

Needs Node.js 20 or later and npm. It creates no user and enables no unit: it prints what to do next.
EOF
}

prefix=/usr/local
sysconfdir=/etc
unitdir=
docdir=
tarball=
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --prefix | --sysconfdir | --unitdir | --docdir)
      [ $# -ge 2 ] || die "$1 needs a directory" 'see scripts/install.sh --help'
      case "$1" in
        --prefix) prefix=$2 ;;
        --sysconfdir) sysconfdir=$2 ;;
        --unitdir) unitdir=$2 ;;
        --docdir) docdir=$2 ;;
      esac
      shift 2 ;;
    --prefix=* ) prefix=${1#*=}; shift ;;
    --sysconfdir=* ) sysconfdir=${1#*=}; shift ;;
    --unitdir=* ) unitdir=${1#*=}; shift ;;
    --docdir=* ) docdir=${1#*=}; shift ;;
    -*) die "unknown option $1" 'see scripts/install.sh --help' ;;
    *)
      [ -z "$tarball" ] || die "more than one tarball: $tarball and $1" 'see scripts/install.sh --help'
      tarball=$1; shift ;;
  esac
done
prefix=${prefix%/}
sysconfdir=${sysconfdir%/}
if [ -z "$unitdir" ]; then
  if [ "$prefix" = /usr/local ]; then unitdir=/usr/local/lib/systemd/system; else unitdir=/etc/systemd/system; fi
fi
unitdir=${unitdir%/}
docdir=${docdir:-$prefix/share/doc/tandem}
docdir=${docdir%/}

# The paths go into unit files: absolute, and nothing systemd would read as a specifier or a separator.
for pair in "--prefix:$prefix" "--sysconfdir:$sysconfdir" "--unitdir:$unitdir" "--docdir:$docdir"; do
  opt=${pair%%:*}
  dir=${pair#*:}
  case "$dir" in /*) ;; *) die "$opt $dir is not an absolute path" 'give it as /like/this' ;; esac
  [[ "$dir" =~ ^[A-Za-z0-9._/+@-]+$ ]] || die "$opt $dir: only letters, digits and ._/+@- may appear in it" 'the path is written into the systemd units'
done

node_hint='Debian 12 ships Node.js 18 (apt-get install nodejs): install Node.js 20 or later from NodeSource
  (curl -fsSL https://deb.nodesource.com/setup_22.x -o nodesource_setup.sh && bash nodesource_setup.sh
  && apt-get install -y nodejs; npm comes with it), or unpack the Linux binary from
  https://nodejs.org/en/download into /usr/local (tar -xJf node-v22.*-linux-x64.tar.xz -C /usr/local
  --strip-components=1)'

# node --version >= 20, else say how to get it (rather than fail later in npm or at run time).
node_major() { local v; v=$("$1" --version 2>/dev/null) || return 1; v=${v#v}; printf '%s\n' "${v%%.*}"; }
command -v node >/dev/null || die 'node is not installed (tandem needs Node.js 20 or later)' "$node_hint"
major=$(node_major node || true)
if ! [[ "$major" =~ ^[0-9]+$ ]] || [ "$major" -lt 20 ]; then
  die "tandem needs Node.js 20 or later; $(command -v node) is $(node --version 2>/dev/null || echo 'unknown')" "$node_hint"
fi
command -v npm >/dev/null || die 'npm is not installed' "NodeSource's nodejs package includes it; with Debian's own, apt-get install npm"
# The commands' first line is `#!/usr/bin/env -S GLIBC_TUNABLES=... node`.
/usr/bin/env -S true 2>/dev/null || die "/usr/bin/env does not take -S, which tandem's commands start with" 'install GNU coreutils 8.30 or later (Debian 10 and Ubuntu 19.04 on have it)'

# Commands of an earlier, hand-made install (links into a checkout) would make npm refuse: say so first.
for b in tandem-primary tandem-standby; do
  f=$prefix/bin/$b
  if [ -e "$f" ] || [ -L "$f" ]; then
    target=$(readlink "$f" || true)
    case "$target" in
      *lib/node_modules/tandem/*) ;;
      *) die "$f exists and is not from a tandem package${target:+ (it links to $target)}" "remove it (an earlier install made it by hand): rm $f" ;;
    esac
  fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ -z "$tarball" ]; then
  root=$(cd "$(dirname "$0")/.." && pwd)
  [ -f "$root/package.json" ] && [ -d "$root/packages/primary-agent" ] ||
    die "$root is not a tandem checkout and no TARBALL was given" 'run it from a checkout, or give the tandem-*.tgz that `npm pack` made'
  cd "$root"
  if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    say 'installing the build dependencies (npm ci)'
    npm ci --no-audit --no-fund --loglevel=error >&2
  fi
  say 'building and packing (npm pack)'
  npm pack --pack-destination "$work" --loglevel=error >&2 || die 'npm pack failed (the build above says why)'
  tarball=$(ls "$work"/*.tgz)
else
  [ -f "$tarball" ] || die "$tarball: no such file" 'give the tandem-*.tgz that `npm pack` made'
  tarball=$(cd "$(dirname "$tarball")" && pwd)/$(basename "$tarball")
fi

# Every dependency is inside the tarball: --offline makes npm fetch nothing.
say "installing $(basename "$tarball") into $prefix"
npm install --global --prefix "$prefix" --offline --no-audit --no-fund --loglevel=error "$tarball" >&2
pkg=$prefix/lib/node_modules/tandem
[ -f "$pkg/package.json" ] || die "npm installed no $pkg" 'is the tarball a tandem package (made by npm pack in a tandem checkout)?'
version=$("$prefix/bin/tandem-primary" --version) || die "$prefix/bin/tandem-primary does not run"
"$prefix/bin/tandem-standby" --version >/dev/null || die "$prefix/bin/tandem-standby does not run"

# The units, for the paths of this install.
install -d -m 0755 "$unitdir"
for unit in tandem-primary.service tandem-standby.service; do
  sed -e "s|/usr/local/bin/tandem-|$prefix/bin/tandem-|g" \
    -e "s|file:///usr/local/share/doc/tandem/|file://$docdir/|g" \
    -e "s|/etc/tandem/|$sysconfdir/tandem/|g" \
    "$pkg/etc/$unit" >"$work/$unit"
  install -m 0644 "$work/$unit" "$unitdir/$unit"
  # A whole unit of the same name in /etc/systemd/system (an earlier install copied it there) wins.
  if [ "$unitdir" != /etc/systemd/system ] && [ -f "/etc/systemd/system/$unit" ]; then
    say "warning: /etc/systemd/system/$unit overrides the unit installed in $unitdir"
    say "  hint: remove it and put your changes in a drop-in (systemctl edit ${unit%.service}); see $docdir/operations.md"
  fi
done

# The documentation (the units' Documentation=), with every sample file from etc/ under examples/.
install -d -m 0755 "$docdir" "$docdir/examples"
cp -R "$pkg/docs/." "$docdir/"
install -m 0644 "$pkg/README.md" "$docdir/README.md"
cp -R "$pkg/etc/." "$docdir/examples/"

# The sample configs beside where the units look for the real ones.
install -d -m 0755 "$sysconfdir/tandem"
install -m 0644 "$pkg/etc/primary.yml" "$sysconfdir/tandem/primary.yml.example"
install -m 0644 "$pkg/etc/standby.yml" "$sysconfdir/tandem/standby.yml.example"
# Several sites on one server (Zotonic's layout): one config holding every site.
install -m 0644 "$pkg/etc/primary-sites.yml" "$sysconfdir/tandem/primary-sites.yml.example"
install -m 0644 "$pkg/etc/standby-sites.yml" "$sysconfdir/tandem/standby-sites.yml.example"

# The units start the commands through `#!/usr/bin/env node` with systemd's own PATH: a node
# found only through this shell's PATH (nvm, a home directory) is not the one they get.
service_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
service_node=$(PATH=$service_path command -v node || true)
if [ -z "$service_node" ]; then
  say "warning: no node on the PATH systemd gives services ($service_path): the units would not start"
  say "  hint: $node_hint"
elif ! [ "$(node_major "$service_node" || echo 0)" -ge 20 ] 2>/dev/null; then
  say "warning: the units would run $service_node, which is $("$service_node" --version 2>/dev/null || echo 'unknown'), not Node.js 20 or later"
  say "  hint: $node_hint"
fi

cat <<EOF
tandem $version installed:
  commands       $prefix/bin/tandem-primary, $prefix/bin/tandem-standby
  units          $unitdir/tandem-primary.service, $unitdir/tandem-standby.service
  documentation  $docdir/operations.md
  sample configs $sysconfdir/tandem/primary.yml.example, $sysconfdir/tandem/standby.yml.example
                 (several sites on one server: primary-sites.yml.example, standby-sites.yml.example)
Next (see $docdir/operations.md):
  useradd --system --home-dir /var/lib/tandem --shell /usr/sbin/nologin tandem   # once
  cp $sysconfdir/tandem/primary.yml.example $sysconfdir/tandem/primary.yml         # then edit it (standby.yml on a standby)
  systemctl edit tandem-standby          # on a standby: the site's directories (ReadWritePaths=), its user
  systemctl daemon-reload && systemctl enable --now tandem-primary               # or tandem-standby
EOF
