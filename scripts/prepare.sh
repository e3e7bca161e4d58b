#!/bin/sh
# Installs what blksnap's build and tests need on a fresh Debian machine with Node 20, then builds.
# Debian tools come from apt only when missing; node_modules from `npm ci` when absent or stale.
set -eu
cd "$(dirname "$0")/.."

need=""
want() { command -v "$1" >/dev/null 2>&1 || need="$need $2"; }
want qemu-img qemu-utils
want nbdinfo libnbd-bin
want nbdkit nbdkit
want fio fio
want fusermount3 fuse3
want mkfs.ext4 e2fsprogs
want mkfs.xfs xfsprogs
want losetup mount
want openssl openssl
want lintian lintian
want dpkg-deb dpkg
want curl curl
# The S3 tests' server: a single-node Ceph cluster with its RADOS Gateway (test/helpers/ceph.ts).
want ceph-mon ceph-mon
want ceph-osd ceph-osd
want radosgw radosgw
# The RPM package's build and check (test/integration/rpm-package.test.ts).
want rpmbuild rpm
want rpmlint rpmlint
want gpg gnupg
# The database of the application-consistency test (test/integration/postgresql.test.ts).
[ -n "$(ls /usr/lib/postgresql/*/bin/pg_amcheck 2>/dev/null)" ] || need="$need postgresql"
[ -e /usr/lib/python3/dist-packages/nbd.py ] || need="$need python3-libnbd"
ldconfig -p 2>/dev/null | grep -q 'libzstd.so.1 ' || need="$need libzstd1"
ldconfig -p 2>/dev/null | grep -q 'libcrypto.so.3 ' || need="$need openssl"
if [ -n "$need" ]; then
  echo "prepare: installing Debian packages:$need" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npx tsc -p tsconfig.json
node dist/src/cli/generate-docs.js dist/share
