#!/bin/sh
# The main job on embedded defaults (`npm start`): builds, then runs blksnapd in the foreground with its
# sockets and state in ./.blksnap and a 1 GiB sparse demo disk attached. Ctrl-C stops it cleanly.
set -eu
cd "$(dirname "$0")/.."
sh scripts/prepare.sh
state="$(pwd)/.blksnap"
mkdir -p "$state"
[ -e "$state/demo.img" ] || truncate -s 1G "$state/demo.img"
cat <<TOUR
blksnapd is starting with its state in $state and demo.img attached. In another shell:
  export BLKSNAP_CONTROL=$state/control.sock
  ./bin/blksnap list
  qemu-io -f raw -c 'write -P 0xab 0 1M' 'nbd+unix:///demo.img?socket=$state/nbd.sock'
  ./bin/blksnap cbtinfo --device demo.img
TOUR
export BLKSNAP_RUNTIME_DIR="$state"
exec node bin/blksnapd --state-dir "$state" --attach "$state/demo.img"
