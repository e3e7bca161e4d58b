#!/bin/sh
# The test command (`npm test`): prepares the machine, builds, lints (npm run lint), checks the layers
# (npm run layers: no import cycle, each layer's imports as .dependency-cruiser.cjs allows), runs every test file with node:test.
# BLKSNAP_TEST_DURATION=long runs the scenario tests for minutes instead of seconds.
# The test files run one at a time (they share loop devices, mounts and the machine's disk), but for
# the S3 suite: it waits on a Ceph cluster of its own most of its time and touches nothing the others
# do, so it runs beside them; its report follows theirs.
set -eu
cd "$(dirname "$0")/.."
sh scripts/prepare.sh
npx biome lint --error-on-warnings
npx depcruise --config .dependency-cruiser.cjs src test bench
beside=dist/test/integration/s3-repository.test.js
files=$(find dist/test -name '*.test.js' ! -path "$beside" | sort)
report=$(mktemp)
trap 'rm -f "$report"' EXIT
node --test --test-concurrency=1 "$beside" > "$report" 2>&1 &
s3=$!
status=0
node --test --test-concurrency=1 $files || status=$?
s3status=0
wait "$s3" || s3status=$?
echo "# the S3 suite ($beside), run beside the others:"
cat "$report"
[ "$s3status" -eq 0 ] || status=$s3status
exit "$status"
