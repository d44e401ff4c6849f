#!/usr/bin/env bash
# The main job on a fresh Linux machine, as root: install what is missing, build, then
# create an encrypted volume, mount its image, losetup, mkfs.ext4, mount, write and read
# files, unmount, mount again in a new process, read back, and show that the backing file
# holds no plaintext. Everything lives in a scratch directory that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
run() { printf '$ %s\n' "$*" >&2; "$@"; }

if [ "$(id -u)" -ne 0 ]; then echo "error: run as root (FUSE mounts and loop devices need it)" >&2; exit 1; fi
need=()
command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
command -v losetup >/dev/null 2>&1 || need+=(util-linux)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
if [ ${#need[@]} -gt 0 ]; then
  step "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -e /dev/fuse ] || modprobe fuse

step "building storageos-fuse (release)"
run cargo build --release --quiet
SF="$PWD/target/release/storageos-fuse"

WORK=$(mktemp -d /tmp/storageos-fuse-quickstart.XXXXXX)
export STORAGEOS_FUSE_DATA_DIR="$WORK/data"
IMG="$WORK/pvc0002.img"
MNT="$WORK/mnt"
LOOP=""
cleanup() {
  set +e
  mountpoint -q "$MNT" && umount "$MNT"
  [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
  "$SF" umount "$IMG" >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$MNT"

step "create an encrypted volume (data dir $STORAGEOS_FUSE_DATA_DIR)"
run "$SF" volume create default/pvc0002 --size 1Gi --label storageos.com/encryption=true >/dev/null
run "$SF" volume inspect default/pvc0002 | grep -m1 id
ID=$("$SF" volume inspect default/pvc0002 | grep -m1 id | cut -d'"' -f4)
echo "key Secrets (key source dir: $STORAGEOS_FUSE_DATA_DIR/keys):"
ls -1 "$STORAGEOS_FUSE_DATA_DIR/keys"

step "mount the plaintext image, attach a loop device, make ext4"
run "$SF" mount default/pvc0002 --at "$IMG" --background
LOOP=$(run losetup -f --show "$IMG")
echo "$LOOP"
run mkfs.ext4 -q "$LOOP"
run mount "$LOOP" "$MNT"

step "write files"
run dd if=/dev/urandom of="$MNT/random.bin" bs=1M count=32 status=none
echo "storageos-fuse quickstart secret $(date +%s)" > "$MNT/hello.txt"
MARK=$(cat "$MNT/hello.txt")
(cd "$MNT" && sha256sum random.bin hello.txt > "$WORK/sums")
cat "$WORK/sums"

step "unmount everything"
run umount "$MNT"
run losetup -d "$LOOP"; LOOP=""
run "$SF" umount default/pvc0002

step "the backing file holds only ciphertext"
DATA="$STORAGEOS_FUSE_DATA_DIR/volumes/$ID/data"
ls -ls "$DATA"
if grep -qF "$MARK" "$DATA"; then echo "error: plaintext found in $DATA" >&2; exit 1; fi
echo "plaintext marker \"$MARK\" not found in $DATA: good"

step "mount again (a new server process) and read back"
run "$SF" mount default/pvc0002 --at "$IMG" --background
LOOP=$(run losetup -f --show "$IMG")
run mount "$LOOP" "$MNT"
(cd "$MNT" && run sha256sum -c "$WORK/sums")
run cat "$MNT/hello.txt"
run umount "$MNT"
run losetup -d "$LOOP"; LOOP=""
run "$SF" umount "$IMG"

step "done: encrypted volume created, used through FUSE + loop + ext4, and read back intact"
