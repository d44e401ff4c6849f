#!/usr/bin/env bash
# Cold sequential file read through a real file system: ext4 on a loop device over
#   a  a plain sparse file                 (the limit of this stack)
#   d  a storageos-fuse encrypted volume   (this build)
#   o  the same, served by OTHER_BIN       (an earlier build, to compare one change)
# Each stack: mkfs.ext4, write a file of FILE_MIB MiB, fsync, then ROUNDS times: drop caches
# and read it back with dd bs=1M. The stacks' rounds interleave (a d o a d o ...) so drift on
# a shared machine spreads over all of them. Prints MiB/s per round and the mean, and d/a,
# d/o. This is the job the daemon's own readahead exists for (`src/image/readahead.rs`):
# without any, the loop device's 128 KiB-at-a-time reads reach the backing file cold.
#
# Usage: scripts/bench-fs.sh      environment: FILE_MIB=900, ROUNDS=4, SIZE=2G (volume),
#                                 OTHER_BIN=path (optional), STACKS="a d o",
#                                 LOOP_RA_KB=N (read_ahead_kb of the loop devices; default:
#                                 the kernel's, 128), BENCH_DIR=/var/tmp (scratch parent)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FILE_MIB=${FILE_MIB:-900}
ROUNDS=${ROUNDS:-4}
SIZE=${SIZE:-2G}
OTHER_BIN=${OTHER_BIN:-}
STACKS=${STACKS:-a d${OTHER_BIN:+ o}}

die() { echo "error: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (the bench attaches loop devices and mounts FUSE and ext4)"
command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 is missing: apt-get install -y e2fsprogs"
[ -z "$OTHER_BIN" ] || [ -x "$OTHER_BIN" ] || die "OTHER_BIN=$OTHER_BIN is not an executable; build the other revision first"
case " $STACKS " in *" o "*) [ -n "$OTHER_BIN" ] || die "stack o needs OTHER_BIN=path/to/storageos-fuse";; esac

echo "== cargo build --release"
cargo build --release --quiet
BIN=$ROOT/target/release/storageos-fuse

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/storageos-bench-fs.XXXXXX")
declare -A DEV=() MNT=()
PIDS=()
cleanup() {
  set +e
  for s in "${!MNT[@]}"; do umount "${MNT[$s]}" 2>/dev/null; done
  for s in "${!DEV[@]}"; do losetup -d "${DEV[$s]}" 2>/dev/null; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for f in "$WORK"/*.img; do findmnt -n "$f" >/dev/null 2>&1 && umount -l "$f"; done
  rm -rf "$WORK"
}
trap cleanup EXIT

serve() { # STACK BINARY -> the image file of an encrypted volume, served in the background
  local s=$1 bin=$2 data=$WORK/data-$1
  "$bin" --data-dir "$data" volume create "bench/fs-$s" --size "$SIZE" \
    --label storageos.com/encryption=true >/dev/null
  touch "$WORK/$s.img"
  "$bin" --data-dir "$data" mount "bench/fs-$s" --at "$WORK/$s.img" >"$WORK/$s-daemon.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 200); do
    findmnt -n "$WORK/$s.img" >/dev/null 2>&1 && return 0
    kill -0 "${PIDS[-1]}" 2>/dev/null || die "server for stack $s exited (see $WORK/$s-daemon.log)"
    sleep 0.05
  done
  die "stack $s was not mounted within 10 s"
}

for s in $STACKS; do
  case $s in
  a) truncate -s "$SIZE" "$WORK/a.img" ;;
  d) serve d "$BIN" ;;
  o) serve o "$OTHER_BIN" ;;
  *) die "unknown stack $s (use a d o)" ;;
  esac
  DEV[$s]=$(losetup -f --show --direct-io=on "$WORK/$s.img")
  if [ -n "${LOOP_RA_KB:-}" ]; then
    echo "$LOOP_RA_KB" >"/sys/block/$(basename "${DEV[$s]}")/queue/read_ahead_kb"
  fi
  echo "== ($s) ${DEV[$s]}: read_ahead_kb $(cat "/sys/block/$(basename "${DEV[$s]}")/queue/read_ahead_kb")"
  mkfs.ext4 -q -F "${DEV[$s]}"
  MNT[$s]=$WORK/mnt-$s
  mkdir -p "${MNT[$s]}"
  mount "${DEV[$s]}" "${MNT[$s]}"
  echo "== ($s) writing $FILE_MIB MiB through ext4 on ${DEV[$s]}"
  dd if=/dev/urandom of="${MNT[$s]}/file" bs=1M count="$FILE_MIB" conv=fsync status=none
done

declare -A SUM=()
for r in $(seq "$ROUNDS"); do
  line="round $r:"
  for s in $STACKS; do
    sync; echo 3 >/proc/sys/vm/drop_caches
    t0=$(date +%s.%N)
    dd if="${MNT[$s]}/file" of=/dev/null bs=1M status=none
    t1=$(date +%s.%N)
    mib=$(awk -v n="$FILE_MIB" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", n / (b - a)}')
    SUM[$s]=$(( ${SUM[$s]:-0} + mib ))
    line="$line $s $mib MiB/s"
  done
  echo "$line"
done
echo "== cold sequential read of a ${FILE_MIB} MiB file through ext4, mean of $ROUNDS rounds (MiB/s)"
for s in $STACKS; do echo "$s: $(( SUM[$s] / ROUNDS ))"; done
if [ -n "${SUM[d]:-}" ]; then
  for x in a o; do
    if [ -n "${SUM[$x]:-}" ]; then
      awk -v d="${SUM[d]}" -v x="${SUM[$x]}" -v n="$x" 'BEGIN {printf "d/%s: %.2fx\n", n, d / x}'
    fi
  done
fi
