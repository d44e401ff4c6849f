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
#                                 LOOP_RA_KB=128 (read_ahead_kb of every loop device),
#                                 BENCH_DIR=/var/tmp (scratch parent)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FILE_MIB=${FILE_MIB:-900}
ROUNDS=${ROUNDS:-4}
SIZE=${SIZE:-2G}
OTHER_BIN=${OTHER_BIN:-}
STACKS=${STACKS:-a d${OTHER_BIN:+ o}}
# Every stack's loop device gets the same readahead, set here: the kernel gives a loop
# device over a file on a block device that device's readahead (2560 KiB on this machine's
# vda) but one over a FUSE file 128 KiB, and a value once set stays with the device number
# after detach. Restored on exit.
LOOP_RA_KB=${LOOP_RA_KB:-128}

die() { echo "error: $*" >&2; exit 1; }
positive() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1=$2 is not a positive whole number; e.g. $1=$3"; }
# Everything is checked before anything is set up.
[ "$(id -u)" -eq 0 ] || die "run as root (the bench attaches loop devices and mounts FUSE and ext4)"
command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 is missing: apt-get install -y e2fsprogs"
positive FILE_MIB "$FILE_MIB" 900
positive ROUNDS "$ROUNDS" 4
positive LOOP_RA_KB "$LOOP_RA_KB" 4096
SIZE_BYTES=$(numfmt --from=iec "${SIZE%i}" 2>/dev/null) || die "SIZE=$SIZE is not a size; e.g. SIZE=2G"
# ext4 keeps about 5% for itself and its metadata: leave a tenth of the volume free.
[ $((FILE_MIB * 1048576)) -le $((SIZE_BYTES * 9 / 10)) ] ||
  die "FILE_MIB=$FILE_MIB does not fit in a volume of SIZE=$SIZE; raise SIZE or lower FILE_MIB"
[ -z "$OTHER_BIN" ] || [ -x "$OTHER_BIN" ] || die "OTHER_BIN=$OTHER_BIN is not an executable; build the other revision first"
[ -n "${STACKS// /}" ] || die "STACKS is empty; use some of: a d o"
seen=" "
for s in $STACKS; do
  case $s in a | d | o) ;; *) die "unknown stack '$s' in STACKS; use some of: a d o" ;; esac
  case $seen in *" $s "*) die "stack $s appears twice in STACKS; name each once" ;; esac
  seen="$seen$s "
done
case " $STACKS " in *" o "*) [ -n "$OTHER_BIN" ] || die "stack o needs OTHER_BIN=path/to/storageos-fuse";; esac
[ -d "${BENCH_DIR:-/var/tmp}" ] || die "BENCH_DIR=${BENCH_DIR:-} is not a directory; create it or pick another"

echo "== cargo build --release"
cargo build --release --quiet
BIN=$ROOT/target/release/storageos-fuse

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/storageos-bench-fs.XXXXXX")
declare -A DEV=() MNT=() RA_BEFORE=()
PIDS=()
cleanup() {
  # A second Ctrl-C or a TERM must not cut the teardown short.
  trap '' INT TERM HUP
  set +e
  for s in "${!MNT[@]}"; do
    umount "${MNT[$s]}" 2>/dev/null || umount -l "${MNT[$s]}" 2>/dev/null
  done
  for s in "${!DEV[@]}"; do
    [ -n "${RA_BEFORE[$s]:-}" ] && echo "${RA_BEFORE[$s]}" >"/sys/block/$(basename "${DEV[$s]}")/queue/read_ahead_kb"
    losetup -d "${DEV[$s]}" 2>/dev/null
  done
  # The daemons refuse to stop while their image is in use; the loop devices detach
  # asynchronously, so give each a few seconds before forcing it.
  for p in "${PIDS[@]}"; do
    kill "$p" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; kill "$p" 2>/dev/null; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  for f in "$WORK"/*.img; do findmnt -n "$f" >/dev/null 2>&1 && umount -l "$f"; done
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
# bash runs these once the command in the foreground (a dd) has finished, then exits
# through the EXIT trap above.
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

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
  esac
  DEV[$s]=$(losetup -f --show --direct-io=on "$WORK/$s.img")
  ra=/sys/block/$(basename "${DEV[$s]}")/queue/read_ahead_kb
  RA_BEFORE[$s]=$(cat "$ra")
  echo "$LOOP_RA_KB" >"$ra"
  echo "== ($s) ${DEV[$s]}: read_ahead_kb $(cat "$ra")"
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
