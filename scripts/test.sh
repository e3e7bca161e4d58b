#!/bin/sh
# The test command (`npm test`): prepares the machine, builds, lints (npm run lint), checks the layers
# (npm run layers: no import cycle, each layer's imports as .dependency-cruiser.cjs allows), runs every test file with node:test.
# BLKSNAP_TEST_DURATION=long runs the scenario tests for minutes instead of seconds.
set -eu
cd "$(dirname "$0")/.."
sh scripts/prepare.sh
npx biome lint --error-on-warnings
npx depcruise --config .dependency-cruiser.cjs src test bench
files=$(find dist/test -name '*.test.js' | sort)
exec node --test --test-concurrency=1 $files
