#!/usr/bin/env bash
# Ceph's object gateway for the fault suite's native-conditional-write test: one monitor, one OSD
# and radosgw from Debian (about 60 MB to download, 270 MB installed, so not in scripts/setup.sh
# and not in `npm test`). Idempotent and quick when all is in place. The test calls it and fails
# when it fails: a missing server is a failure, not a skip.
set -euo pipefail

say() { printf 'setup-ceph: %s\n' "$*" >&2; }
. "$(dirname "$0")/apt-install.sh"

# Debian 12 ships Ceph 16.2 (Pacific), whose gateway honours If-None-Match: * and If-Match on
# PutObject (If-Match only with the bare ETag; see docs/reliability.md).
missing=0
for cmd in ceph ceph-mon ceph-osd monmaptool radosgw radosgw-admin; do
  command -v "$cmd" >/dev/null || missing=1
done
[ "$missing" -eq 0 ] || apt_install --no-install-recommends radosgw ceph-mon ceph-osd
for cmd in ceph ceph-mon ceph-osd monmaptool radosgw radosgw-admin; do
  command -v "$cmd" >/dev/null || { say "$cmd is still missing after the install"; exit 1; }
done
