#!/bin/sh
# Builds blksnap_VERSION_amd64.deb with dpkg-deb from the build in dist/ (npm run package:deb): the
# tree scripts/stage-package.sh lays out, with Debian's control files and maintainer scripts.
#   sh scripts/package-deb.sh [OUTDIR]     (default dist/: build outputs stay out of the tree)
set -eu
cd "$(dirname "$0")/.."
out="${1:-dist}"
mkdir -p "$out"
version="$(node -p 'require("./package.json").version')"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

sh scripts/stage-package.sh "$stage"
mkdir -p "$stage/DEBIAN"
echo /etc/blksnap/blksnapd.conf > "$stage/DEBIAN/conffiles"
mkdir -p "$stage/usr/share/doc/blksnap"
cat > "$stage/usr/share/doc/blksnap/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: blksnap
Source: https://github.com/veeam/blksnap (the design it rebuilds)

Files: *
Copyright: 2026 the blksnap developers
License: GPL-2+
 On Debian systems the full text of the GNU General Public License version 2
 is in /usr/share/common-licenses/GPL-2.
EOF
printf 'blksnap (%s) unstable; urgency=medium\n\n  * Package built from the npm build.\n\n -- blksnap developers <blksnap-devel@users.noreply.github.com>  %s\n' \
  "$version" "$(date -R -u -d @0)" | gzip -9n > "$stage/usr/share/doc/blksnap/changelog.gz"
chmod 0644 "$stage/usr/share/doc/blksnap/"*

size="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
cat > "$stage/DEBIAN/control" <<EOF
Package: blksnap
Version: $version
Architecture: amd64
Maintainer: blksnap developers <blksnap-devel@users.noreply.github.com>
Installed-Size: $size
Depends: nodejs (>= 20), libc6 (>= 2.28), fuse3, libzstd1, libssl3 | libssl3t64
Recommends: libnbd-bin, qemu-utils
Section: admin
Priority: optional
Homepage: https://github.com/veeam/blksnap
Description: block device snapshots with change tracking, for backup
 blksnapd owns attached devices (files or block devices), tracks their changed
 blocks (CBT) durably, takes consistent snapshots across devices and serves
 devices and snapshot images over NBD and as /dev/loopN. The blksnap tool
 drives it, and keeps incremental backups in a repository of its own.
EOF

cat > "$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null || true
  systemctl enable blksnapd.service >/dev/null || true
fi
EOF
cat > "$stage/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl stop blksnapd.service >/dev/null 2>&1 || true
fi
EOF
cat > "$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
  rm -rf /var/lib/blksnap /run/blksnap
  if [ -d /run/systemd/system ]; then systemctl disable blksnapd.service >/dev/null 2>&1 || true; fi
fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi
EOF
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

mkdir -p "$out"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$out/blksnap_${version}_amd64.deb" >/dev/null
echo "$out/blksnap_${version}_amd64.deb"
