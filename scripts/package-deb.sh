#!/bin/sh
# Builds blksnap_VERSION_amd64.deb with dpkg-deb from the build in dist/ (npm run package:deb):
# the program under /usr/lib/blksnap (with its production node_modules, koffi's Linux x64 build
# only), the two commands in /usr/bin, a systemd unit, a config file, man pages, bash completion,
# the sample take hooks (PostgreSQL, MySQL) under /usr/share/blksnap/hooks, and the job units
# (blksnap-job@.service and .timer, with a generator that gives each job file its timer).
#   sh scripts/package-deb.sh [OUTDIR]     (default dist/: build outputs stay out of the tree)
set -eu
cd "$(dirname "$0")/.."
out="${1:-dist}"
mkdir -p "$out"
version="$(node -p 'require("./package.json").version')"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
lib="$stage/usr/lib/blksnap"

mkdir -p "$lib/bin" "$stage/usr/bin" "$stage/usr/lib/systemd/system" "$stage/etc/blksnap" \
  "$stage/usr/share/man/man8" "$stage/usr/share/bash-completion/completions" "$stage/usr/share/doc/blksnap" "$stage/DEBIAN"
cp -r dist/src "$lib/dist-src"
mkdir -p "$lib/dist" && mv "$lib/dist-src" "$lib/dist/src"
find "$lib/dist" -name '*.d.ts' -delete -o -name '*.map' -delete
cp bin/blksnapd bin/blksnap "$lib/bin/"
# blksnap's "tests from the installed package": the scenario suite, run against this install.
mkdir -p "$lib/dist/test" "$lib/tests"
cp -r dist/test/helpers dist/test/scenarios "$lib/dist/test/"
cat > "$lib/tests/all.sh" <<'EOF'
#!/bin/sh
# Runs blksnap's scenario suite against the installed program (needs root, qemu-utils, libnbd-bin,
# e2fsprogs, xfsprogs, fuse3). Arguments go to node --test (e.g. --test-name-pattern=corrupt).
exec /usr/bin/node --test "$@" /usr/lib/blksnap/dist/test/scenarios/*.test.js
EOF
node -e 'const p=require("./package.json"); delete p.devDependencies; delete p.scripts; p.files=undefined; require("fs").writeFileSync(process.argv[1], JSON.stringify(p,null,2)+"\n")' "$lib/package.json"

# Production dependencies only, as npm resolves them; koffi keeps the build for this machine alone.
for dep in $(npm ls --omit=dev --parseable --all 2>/dev/null | tail -n +2); do
  rel="${dep#"$PWD"/}"
  mkdir -p "$lib/$(dirname "$rel")"
  cp -r "$dep" "$lib/$rel"
done
rm -rf "$lib/node_modules/@koromix/koffi-linux-x64/musl_x64" "$lib/node_modules/koffi/doc" "$lib/node_modules/koffi/cnoke.cjs"
find "$lib/node_modules" \( -name '*.md' -o -name '*.ts' -o -name '*.map' -o -name 'LICENSE*' -o -name '.npmignore' \) -type f -delete
find "$lib" -type d -exec chmod 0755 {} + && find "$lib" -type f -exec chmod 0644 {} +
chmod 0755 "$lib/bin/blksnapd" "$lib/bin/blksnap" "$lib/tests/all.sh"
printf '#!/bin/sh\nexec /usr/lib/blksnap/tests/all.sh "$@"\n' > "$stage/usr/bin/blksnap-tests"
chmod 0755 "$stage/usr/bin/blksnap-tests"

for cmd in blksnapd blksnap; do
  printf '#!/bin/sh\nexec /usr/bin/node /usr/lib/blksnap/bin/%s "$@"\n' "$cmd" > "$stage/usr/bin/$cmd"
  chmod 0755 "$stage/usr/bin/$cmd"
done

cat > "$stage/usr/lib/systemd/system/blksnapd.service" <<'EOF'
[Unit]
Description=blksnap daemon: block device snapshots and change tracking
Documentation=man:blksnapd(8) man:blksnap(8)
After=local-fs.target

[Service]
Type=simple
ExecStart=/usr/bin/blksnapd --config /etc/blksnap/blksnapd.conf
RuntimeDirectory=blksnap
RuntimeDirectoryMode=0700
StateDirectory=blksnap
StateDirectoryMode=0700
KillSignal=SIGTERM
TimeoutStopSec=60
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
EOF

# Scheduled jobs: blksnap-job@NAME.service runs /etc/blksnap/jobs/NAME.conf once; the generator
# enables blksnap-job@NAME.timer for each job file with its schedule as OnCalendar.
cat > "$stage/usr/lib/systemd/system/blksnap-job@.service" <<'EOF'
[Unit]
Description=blksnap backup job %i (/etc/blksnap/jobs/%i.conf)
Documentation=man:blksnap(8)
Requires=blksnapd.service
After=blksnapd.service network-online.target
Wants=network-online.target

[Service]
Type=oneshot
ExecStart=/usr/bin/blksnap job run %i
EOF
cat > "$stage/usr/lib/systemd/system/blksnap-job@.timer" <<'EOF'
[Unit]
Description=blksnap backup job %i, on its schedule (OnCalendar from /etc/blksnap/jobs/%i.conf)
Documentation=man:blksnap(8)

[Timer]
Persistent=true

[Install]
WantedBy=timers.target
EOF
mkdir -p "$stage/usr/lib/systemd/system-generators" "$stage/etc/blksnap/jobs"
cp packaging/blksnap-job-generator "$stage/usr/lib/systemd/system-generators/blksnap-job-generator"
chmod 0755 "$stage/usr/lib/systemd/system-generators/blksnap-job-generator" "$stage/etc/blksnap/jobs"
chmod 0644 "$stage/usr/lib/systemd/system/blksnap-job@.service" "$stage/usr/lib/systemd/system/blksnap-job@.timer"

cat > "$stage/etc/blksnap/blksnapd.conf" <<'EOF'
# blksnapd configuration: the options of blksnapd --help, one per line ("option = value", or
# "option" for a flag); the command line wins. Devices attached with `blksnap attach` come back
# from the state directory at the next start.
state-dir = /var/lib/blksnap
control = /run/blksnap/control.sock
nbd = /run/blksnap/nbd.sock
# attach = /srv/vm.img=vm
# loop
# metrics = 9100
# log-format = json
EOF
chmod 0644 "$stage/etc/blksnap/blksnapd.conf"
echo /etc/blksnap/blksnapd.conf > "$stage/DEBIAN/conffiles"

# Sample take hooks, enabled by a link in /etc/blksnap/hooks.d (blksnapd --hooks-dir).
mkdir -p "$stage/usr/share/blksnap/hooks" "$stage/etc/blksnap/hooks.d"
cp packaging/hooks/postgresql packaging/hooks/mysql "$stage/usr/share/blksnap/hooks/"
chmod 0755 "$stage/usr/share/blksnap/hooks/"* "$stage/etc/blksnap/hooks.d"

for page in blksnap.8 blksnapd.8; do gzip -9n < "dist/share/man/man8/$page" > "$stage/usr/share/man/man8/$page.gz"; done
cp dist/share/bash-completion/completions/blksnap "$stage/usr/share/bash-completion/completions/blksnap"
chmod 0644 "$stage/usr/share/man/man8/"*.gz "$stage/usr/share/bash-completion/completions/blksnap" "$stage/usr/lib/systemd/system/blksnapd.service"

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
