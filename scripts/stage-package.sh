#!/bin/sh
# Lays out blksnap as a package installs it, under STAGE (npm run build first): the program under
# /usr/lib/blksnap (with its production node_modules, koffi's Linux x64 build only), the two commands
# in /usr/bin, the systemd units (blksnapd.service; blksnap-job@.service and .timer, with a generator
# that gives each job file its timer), the config file, man pages, bash completion, the sample take
# hooks, and the installed tests. The Debian and the RPM package are both made from this tree.
#   sh scripts/stage-package.sh STAGE
set -eu
cd "$(dirname "$0")/.."
stage="$1"
version="$(node -p 'require("./package.json").version')"
lib="$stage/usr/lib/blksnap"

mkdir -p "$lib/bin" "$stage/usr/bin" "$stage/usr/lib/systemd/system" "$stage/etc/blksnap" \
  "$stage/usr/share/man/man8" "$stage/usr/share/bash-completion/completions"
cp -r dist/src "$lib/dist-src"
mkdir -p "$lib/dist" && mv "$lib/dist-src" "$lib/dist/src"
find "$lib/dist" -name '*.d.ts' -delete -o -name '*.map' -delete
cp bin/blksnapd bin/blksnap "$lib/bin/"
# Installed, they name the system's node, not whichever one PATH finds.
sed -i '1s|^#!/usr/bin/env node$|#!/usr/bin/node|' "$lib/bin/blksnapd" "$lib/bin/blksnap"
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
# koffi runs from its prebuilt binary: its build scripts, sources and headers stay out (all of
# src/koffi/src but static.*, which it loads).
rm -rf "$lib/node_modules/@koromix/koffi-linux-x64/musl_x64" "$lib/node_modules/koffi/doc" "$lib/node_modules/koffi/cnoke.cjs" \
  "$lib/node_modules/koffi/src/koffi/src/trampolines.cjs" "$lib/node_modules/koffi/src/koffi/CMakeLists.txt" "$lib/node_modules/koffi/vendor"
find "$lib/node_modules/koffi/src/koffi/src" -type f ! -name "static.*" -delete
find "$lib/node_modules/koffi/src/koffi/src" -depth -type d -empty -delete
find "$lib/node_modules" -name '.*' -type f -delete
find "$lib/node_modules" \( -name '*.md' -o -name '*.ts' -o -name '*.map' -o -name 'LICENSE*' -o -name '.npmignore' \) -type f -delete
find "$lib" -type d -exec chmod 0755 {} + && find "$lib" -type f -exec chmod 0644 {} +
chmod 0755 "$lib/bin/blksnapd" "$lib/bin/blksnap" "$lib/tests/all.sh"
printf '#!/bin/sh\nexec /usr/lib/blksnap/tests/all.sh "$@"\n' > "$stage/usr/bin/blksnap-tests"
chmod 0755 "$stage/usr/bin/blksnap-tests"

for cmd in blksnapd blksnap; do
  printf '#!/bin/sh\nexec /usr/bin/node /usr/lib/blksnap/bin/%s "$@"\n' "$cmd" > "$stage/usr/bin/$cmd"
  chmod 0755 "$stage/usr/bin/$cmd"
done

cp packaging/blksnapd.service "$stage/usr/lib/systemd/system/blksnapd.service"

# Scheduled jobs: blksnap-job@NAME.service runs /etc/blksnap/jobs/NAME.conf once; the generator
# enables blksnap-job@NAME.timer for each job file with its schedule as OnCalendar.
cp packaging/blksnap-job@.service "$stage/usr/lib/systemd/system/blksnap-job@.service"
cp packaging/blksnap-job@.timer "$stage/usr/lib/systemd/system/blksnap-job@.timer"
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

# Sample take hooks, enabled by a link in /etc/blksnap/hooks.d (blksnapd --hooks-dir).
mkdir -p "$stage/usr/share/blksnap/hooks" "$stage/etc/blksnap/hooks.d"
cp packaging/hooks/postgresql packaging/hooks/mysql "$stage/usr/share/blksnap/hooks/"
chmod 0755 "$stage/usr/share/blksnap/hooks/"* "$stage/etc/blksnap/hooks.d"

for page in blksnap.8 blksnapd.8; do gzip -9n < "dist/share/man/man8/$page" > "$stage/usr/share/man/man8/$page.gz"; done
cp dist/share/bash-completion/completions/blksnap "$stage/usr/share/bash-completion/completions/blksnap"
chmod 0644 "$stage/usr/share/man/man8/"*.gz "$stage/usr/share/bash-completion/completions/blksnap" "$stage/usr/lib/systemd/system/blksnapd.service"


