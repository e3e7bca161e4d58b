#!/bin/sh
# Builds blksnap-VERSION-1.x86_64.rpm with rpmbuild from the build in dist/ (npm run package:rpm):
# the same tree as the Debian package (scripts/stage-package.sh), the unit enabled and systemd
# reloaded by its scriptlets where systemd runs; signed with BLKSNAP_RPM_GPG_NAME's key when given.
#   sh scripts/package-rpm.sh [OUTDIR]     (default dist/)
set -eu
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-dist}")"
mkdir -p "$out"
version="$(node -p 'require("./package.json").version')"
top="$(mktemp -d)"
trap 'rm -rf "$top"' EXIT
stage="$top/stage"
mkdir -p "$stage" "$top/SPECS" "$top/RPMS" "$top/BUILD" "$top/BUILDROOT"
sh scripts/stage-package.sh "$stage"
mkdir -p "$stage/usr/share/licenses/blksnap" "$stage/usr/share/doc/blksnap"
cp LICENSE "$stage/usr/share/licenses/blksnap/LICENSE"
cp README.md "$stage/usr/share/doc/blksnap/README.md"
chmod 0644 "$stage/usr/share/licenses/blksnap/LICENSE" "$stage/usr/share/doc/blksnap/README.md"

# Every file and directory of the tree, as %files lists it: the config file kept over upgrades,
# the package's own directories owned by it.
files="$top/files.list"
(
  cd "$stage"
  find . -type d \( -path ./usr/lib/blksnap -o -path './usr/lib/blksnap/*' -o -path ./usr/share/blksnap -o -path './usr/share/blksnap/*' -o -path ./etc/blksnap -o -path './etc/blksnap/*' -o -path ./usr/share/doc/blksnap -o -path ./usr/share/licenses/blksnap \) | sed 's|^\.|%dir |'
  find . \( -type f -o -type l \) | sed 's|^\.||' | while read -r f; do
    case "$f" in
      /etc/blksnap/blksnapd.conf) echo "%config(noreplace) $f" ;;
      /usr/share/licenses/*) echo "%license $f" ;;
      /usr/share/doc/*) echo "%doc $f" ;;
      *) echo "$f" ;;
    esac
  done
) > "$files"

cat > "$top/SPECS/blksnap.spec" <<EOF
Name:           blksnap
Version:        $version
Release:        1
Summary:        Block device snapshots with change tracking, for backup
License:        GPL-2.0-or-later
Group:          System/Base
Packager:       blksnap developers <blksnap-devel@users.noreply.github.com>
URL:            https://github.com/veeam/blksnap
BuildArch:      x86_64
Requires:       nodejs >= 20
Requires:       fuse3
Requires:       libzstd.so.1()(64bit)
Requires:       libcrypto.so.3()(64bit)
Recommends:     libnbd
Recommends:     qemu-img
AutoReqProv:    no

%description
blksnapd owns attached devices (files or block devices), tracks their changed
blocks (CBT) durably, takes consistent snapshots across devices and serves
devices and snapshot images over NBD and as /dev/loopN. The blksnap tool
drives it, and keeps incremental backups in a repository of its own.

%install
mkdir -p %{buildroot}
cp -a $stage/. %{buildroot}/

%post
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || :
  [ \$1 -eq 1 ] && systemctl enable blksnapd.service >/dev/null 2>&1 || :
fi

%preun
if [ \$1 -eq 0 ] && [ -d /run/systemd/system ]; then
  systemctl disable --now blksnapd.service >/dev/null 2>&1 || :
fi

%postun
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || :; fi

%files -f $files

%changelog
* $(LC_ALL=C date -u "+%a %b %d %Y") blksnap developers <blksnap-devel@users.noreply.github.com> - $version-1
- Package built from the npm build.
EOF

rpmbuild --quiet -bb --define "_topdir $top" --define "_rpmdir $out" --define '_build_id_links none' \
  --define '__os_install_post %{nil}' --define 'debug_package %{nil}' "$top/SPECS/blksnap.spec" >/dev/null
rpm="$(find "$out" -name "blksnap-$version-1.x86_64.rpm" | head -n 1)"
# Signed where a key is named (BLKSNAP_RPM_GPG_NAME, in the caller's GnuPG keyring).
if [ -n "${BLKSNAP_RPM_GPG_NAME:-}" ]; then
  rpmsign --addsign --define "__gpg $(command -v gpg)" --define "_gpg_name $BLKSNAP_RPM_GPG_NAME" "$rpm" >/dev/null 2>&1
fi
echo "$rpm"
