#!/usr/bin/env bash
# Side-by-side block I/O benchmark, in ONE run, of four stacks, each a loop device over a file:
#   a  loop on a plain sparse file                      (the limit of this stack)
#   b  qemu-storage-daemon: LUKS aes-256-xts image exported through FUSE (the peer)
#   c  storageos-fuse, unencrypted volume
#   d  storageos-fuse, encrypted volume (AES-256-XTS)
# fio (libaio, --direct=1 on the loop device, 1 GiB, time based) runs the same five jobs on
# each; then `storageos-fuse benchmark` runs beside `openssl speed -evp aes-256-xts`.
# Prints a table with the ratios d/b, d/c, d/a and the daemons' peak RSS (VmHWM), and
# writes bench/results/<stamp>.json and .md. Needs root (loop devices, FUSE mounts).
#
# Usage: scripts/bench.sh            environment: RUNTIME=10 (s per job), SIZE=1G,
#                                    MIRROR=1 (two passes, a b c d d c b a; 0: one pass),
#                                    THREADS=8 (storageos-fuse workers), LOOP_DIO=on|off,
#                                    BACKING_IO=buffered|direct (storageos-fuse --backing-io),
#                                    STACKS="a b c d", JOBS="seqwrite seqread randread randrw lat",
#                                    BENCH_DIR=/var/tmp (scratch parent),
#                                    PROFILE=1 (perf record the storageos-fuse daemons; the
#                                    top symbols go into the results; slows the run a little)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

RUNTIME=${RUNTIME:-10}
SIZE=${SIZE:-1G}
THREADS=${THREADS:-8}
BACKING_IO=${BACKING_IO:-buffered}
LOOP_DIO=${LOOP_DIO:-on}
STACKS=${STACKS:-a b c d}
MIRROR=${MIRROR:-1}
# Every stack runs twice, in mirrored order (a b c d d c b a), and the table shows the mean
# of its two passes: the stack that runs later was measured at a disadvantage (by up to 30%
# on random read/write), and mirroring cancels that drift between the stacks compared.
ORDER=$STACKS
if [ "$MIRROR" = 1 ]; then ORDER="$STACKS $(printf '%s\n' $STACKS | tac | xargs)"; fi
JOBS=${JOBS:-seqwrite seqread randread randrw lat}
PROFILE=${PROFILE:-0}

die() { echo "error: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (the bench attaches loop devices and mounts FUSE)"

need=()
command -v fio >/dev/null 2>&1 || need+=(fio)
command -v qemu-storage-daemon >/dev/null 2>&1 || need+=(qemu-system-common qemu-utils)
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true

echo "== cargo build --release"
cargo build --release --quiet
BIN=$ROOT/target/release/storageos-fuse

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/storageos-bench.XXXXXX")
OUT=$WORK/out
mkdir -p "$OUT" "$ROOT/bench/results"
LOOPS=()
MOUNTS=()
PIDS=()

cleanup() {
  set +e
  for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for m in "${MOUNTS[@]}"; do
    for _ in $(seq 50); do mountpoint -q "$m" 2>/dev/null || findmnt -n "$m" >/dev/null || break; sleep 0.1; done
    findmnt -n "$m" >/dev/null 2>&1 && umount -l "$m"
  done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_mounted() { # PATH PID
  for _ in $(seq 200); do
    findmnt -n "$1" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || die "server for $1 exited before mounting (see $OUT)"
    sleep 0.05
  done
  die "$1 was not mounted within 10 s"
}

attach() { # FILE -> sets $dev to the new loop device
  dev=$(losetup -f --show --direct-io="$LOOP_DIO" "$1")
  LOOPS+=("$dev")
}

detach_last() {
  local dev=${LOOPS[-1]}
  losetup -d "$dev"
  unset 'LOOPS[-1]'
}

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# fio NAME DEV ARGS... -> $OUT/<stack>-<job>.json
fio_job() {
  local file=$1 dev=$2; shift 2
  fio --name=job --filename="$dev" --ioengine=libaio --direct=1 --size="$SIZE" \
    --time_based --runtime="$RUNTIME" --numjobs=1 --group_reporting \
    --output-format=json --output="$file" "$@" >/dev/null
}

# CPU time (user+system, clock ticks) of a process so far; 0 without one.
cpu_ticks() {
  if [ -n "${1:-}" ]; then awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; else echo 0; fi
}

run_jobs() { # STACK DEV [DAEMON_PID]
  local s=$1 dev=$2 dpid=${3:-} j t0
  echo "   prefill (1 pass of sequential writes, not measured)"
  fio --name=fill --filename="$dev" --ioengine=libaio --direct=1 --size="$SIZE" \
    --rw=write --bs=1M --iodepth=16 --output-format=json >/dev/null
  for j in $JOBS; do
    if [ "$j" = seqread ]; then drop_caches; fi
    t0=$(cpu_ticks "$dpid")
    case $j in
    seqwrite) echo "   seq write 1M qd16";  fio_job "$OUT/$s-$j.json" "$dev" --rw=write --bs=1M --iodepth=16 ;;
    seqread)  echo "   seq read 1M qd16";   fio_job "$OUT/$s-$j.json" "$dev" --rw=read --bs=1M --iodepth=16 ;;
    randread) echo "   rand read 4k qd32";  fio_job "$OUT/$s-$j.json" "$dev" --rw=randread --bs=4k --iodepth=32 --norandommap ;;
    randrw)   echo "   rand rw 4k qd32";    fio_job "$OUT/$s-$j.json" "$dev" --rw=randrw --bs=4k --iodepth=32 --norandommap ;;
    lat)      echo "   rand read 4k qd1";   fio_job "$OUT/$s-$j.json" "$dev" --rw=randread --bs=4k --iodepth=1 --norandommap ;;
    esac
    if [ -n "$dpid" ]; then echo $(($(cpu_ticks "$dpid") - t0)) >"$OUT/$s-$j.cpu"; fi
  done
}

hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

echo "== load before: $(cut -d' ' -f1-3 /proc/loadavg), scratch $WORK, $RUNTIME s per job, loop direct-io=$LOOP_DIO"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

declare -A PASSES=()
for s in $ORDER; do
  PASSES[$s]=$(( ${PASSES[$s]:-0} + 1 ))
  tag=$s.p${PASSES[$s]}   # results of this pass: $OUT/<tag>-<job>.json
  echo "== pass ${PASSES[$s]} of ($s)"
  case $s in
  a)
    echo "== (a) loop on a plain sparse file"
    truncate -s "$SIZE" "$WORK/plain.img"
    attach "$WORK/plain.img"
    run_jobs "$tag" "$dev"
    detach_last
    rm -f "$WORK/plain.img"
    ;;
  b)
    echo "== (b) peer: qemu-storage-daemon, LUKS aes-256-xts, FUSE export"
    qemu-img create -q -f luks --object secret,id=sec0,data=bench-passphrase \
      -o key-secret=sec0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,hash-alg=sha256,iter-time=10 \
      "$WORK/peer.luks" "$SIZE"
    touch "$WORK/peer.img"
    qemu-storage-daemon --object secret,id=sec0,data=bench-passphrase \
      --blockdev driver=file,node-name=file0,filename="$WORK/peer.luks" \
      --blockdev driver=luks,node-name=luks0,file=file0,key-secret=sec0 \
      --export type=fuse,id=exp0,node-name=luks0,mountpoint="$WORK/peer.img",writable=on \
      >"$OUT/qsd.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    MOUNTS+=("$WORK/peer.img")
    wait_mounted "$WORK/peer.img" "$pid"
    attach "$WORK/peer.img"
    run_jobs "$tag" "$dev" "$pid"
    echo "$(hwm_kib "$pid")" >"$OUT/$tag-hwm"
    detach_last
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -f "$WORK/peer.luks"
    ;;
  c | d)
    data=$WORK/data-$s
    labels=()
    [ "$s" = d ] && labels=(--label storageos.com/encryption=true)
    echo "== ($s) storageos-fuse, $([ "$s" = d ] && echo encrypted || echo unencrypted) volume"
    "$BIN" --data-dir "$data" volume create "bench/vol-$s" --size "$SIZE" "${labels[@]}" >/dev/null
    touch "$WORK/$s.img"
    "$BIN" --data-dir "$data" mount "bench/vol-$s" --at "$WORK/$s.img" --threads "$THREADS" \
      --backing-io "$BACKING_IO" >"$OUT/$tag-daemon.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    MOUNTS+=("$WORK/$s.img")
    wait_mounted "$WORK/$s.img" "$pid"
    attach "$WORK/$s.img"
    perf_pid=
    if [ "$PROFILE" = 1 ]; then
      perf record -q -g -p "$pid" -o "$OUT/$tag-perf.data" >/dev/null 2>&1 &
      perf_pid=$!
    fi
    run_jobs "$tag" "$dev" "$pid"
    echo "$(hwm_kib "$pid")" >"$OUT/$tag-hwm"
    if [ -n "$perf_pid" ]; then
      kill -INT "$perf_pid" 2>/dev/null || true
      wait "$perf_pid" 2>/dev/null || true
      perf report -i "$OUT/$tag-perf.data" --no-children --sort dso,sym --stdio 2>/dev/null \
        | grep -E '^ +[0-9]' | head -15 >"$OUT/$tag-perf.txt" || true
    fi
    detach_last
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$data"
    ;;
  *) die "unknown stack $s (use a b c d)" ;;
  esac
done

echo "== XTS kernel: storageos-fuse benchmark beside openssl speed (best of 2 each)"
for i in 1 2; do
  openssl speed -evp aes-256-xts -bytes 4096 -seconds 3 2>/dev/null | awk '/^AES-256-XTS/ {print $2}' >>"$OUT/openssl.txt"
  "$BIN" benchmark -o json >>"$OUT/xts.jsonl"
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$OUT" "$ROOT/bench/results/$STAMP" "$(getconf CLK_TCK)" "$STAMP" "$RUNTIME" "$SIZE" "$THREADS" "$LOOP_DIO" \
  "$LOAD_BEFORE" "$LOAD_AFTER" "$STACKS" "$(uname -r)" "$(nproc)" \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" "$BACKING_IO" "$ORDER" <<'PY'
import json, os, sys
out, dest, hz, stamp, runtime, size, threads, dio, load0, load1, stacks, kernel, ncpu, cpu, backing_io, order = sys.argv[1:]
stacks = stacks.split()
MiB = 1024 * 1024

def job(s, j):  # s: "<stack>.p<N>"
    p = f"{out}/{s}-{j}.json"
    if not os.path.exists(p):
        return None
    return json.load(open(p))["jobs"][0]

def metrics(s):
    """The figures of one pass (`s` = "<stack>.p<N>")."""
    r = {}
    # Daemon CPU (user+system) per unit of work: robust when other work shares the CPUs.
    def cpu_of(j):
        p = f"{out}/{s}-{j}.cpu"
        return int(open(p).read()) / int(hz) if os.path.exists(p) else None
    # Any job may be left out (JOBS=...): its rows then show "-".
    w = job(s, "seqwrite")
    if w:
        r["seq_write_mib_s"] = w["write"]["bw_bytes"] / MiB
        if cpu_of("seqwrite") is not None:
            r["cpu_s_per_gib_seq_write"] = cpu_of("seqwrite") / (w["write"]["io_bytes"] / 2**30)
    rd = job(s, "seqread")
    if rd:
        r["seq_read_mib_s"] = rd["read"]["bw_bytes"] / MiB
        if cpu_of("seqread") is not None:
            r["cpu_s_per_gib_seq_read"] = cpu_of("seqread") / (rd["read"]["io_bytes"] / 2**30)
    rr = job(s, "randread")
    if rr:
        r["rand_read_iops"] = rr["read"]["iops"]
        if cpu_of("randread") is not None:
            r["cpu_us_per_io_rand_read"] = cpu_of("randread") * 1e6 / rr["read"]["total_ios"]
    rw = job(s, "randrw")
    if rw:
        r["rand_rw_iops"] = rw["read"]["iops"] + rw["write"]["iops"]
        if cpu_of("randrw") is not None:
            r["cpu_us_per_io_rand_rw"] = cpu_of("randrw") * 1e6 / (rw["read"]["total_ios"] + rw["write"]["total_ios"])
    lt = job(s, "lat")
    if lt:
        pct = lt["read"]["clat_ns"]["percentile"]
        r["qd1_read_iops"] = lt["read"]["iops"]
        r["qd1_p50_us"] = pct["50.000000"] / 1000
        r["qd1_p99_us"] = pct["99.000000"] / 1000
    hwm = f"{out}/{s}-hwm"
    if os.path.exists(hwm):
        r["daemon_peak_rss_mib"] = int(open(hwm).read().strip() or 0) / 1024
    return r

res = {}
per_pass = {}
for s in stacks:
    passes = []
    n = 1
    while any(f.startswith(f"{s}.p{n}-") for f in os.listdir(out)):
        passes.append(metrics(f"{s}.p{n}"))
        n += 1
    per_pass[s] = passes
    # The mean of the passes (peak RSS: the largest).
    r = {}
    for key in set().union(*passes) if passes else []:
        vals = [p[key] for p in passes if key in p]
        r[key] = max(vals) if key == "daemon_peak_rss_mib" else sum(vals) / len(vals)
    res[s] = r

ossl = [float(x.rstrip("k")) * 1000 / MiB for x in open(f"{out}/openssl.txt").read().split()]
ours = [json.loads(l) for l in open(f"{out}/xts.jsonl") if l.strip()]
xts = {
    "openssl_aes_256_xts_4096_mib_s": max(ossl),
    "storageos_encrypt_mib_s": max(o["encrypt_mib_s"] for o in ours),
    "storageos_decrypt_mib_s": max(o["decrypt_mib_s"] for o in ours),
}
xts["encrypt_ratio_vs_openssl"] = xts["storageos_encrypt_mib_s"] / xts["openssl_aes_256_xts_4096_mib_s"]
xts["decrypt_ratio_vs_openssl"] = xts["storageos_decrypt_mib_s"] / xts["openssl_aes_256_xts_4096_mib_s"]

rows = [
    ("seq write 1M qd16 (MiB/s)", "seq_write_mib_s", "{:.0f}", True),
    ("seq read 1M qd16 (MiB/s)", "seq_read_mib_s", "{:.0f}", True),
    ("rand read 4k qd32 (IOPS)", "rand_read_iops", "{:.0f}", True),
    ("rand rw 4k qd32 (IOPS)", "rand_rw_iops", "{:.0f}", True),
    ("rand read 4k qd1 (IOPS)", "qd1_read_iops", "{:.0f}", True),
    ("qd1 read p50 (us)", "qd1_p50_us", "{:.0f}", False),
    ("qd1 read p99 (us)", "qd1_p99_us", "{:.0f}", False),
    ("daemon peak RSS (MiB)", "daemon_peak_rss_mib", "{:.1f}", False),
    ("daemon CPU s per GiB, seq write", "cpu_s_per_gib_seq_write", "{:.2f}", False),
    ("daemon CPU s per GiB, seq read", "cpu_s_per_gib_seq_read", "{:.2f}", False),
    ("daemon CPU us per I/O, rand read", "cpu_us_per_io_rand_read", "{:.1f}", False),
    ("daemon CPU us per I/O, rand rw", "cpu_us_per_io_rand_rw", "{:.1f}", False),
]
names = {"a": "a: loop/file", "b": "b: qemu luks", "c": "c: sos plain", "d": "d: sos xts"}
ratios = [("d/b", "b"), ("d/c", "c"), ("d/a", "a")]
hdr = ["job"] + [names[s] for s in stacks] + [r for r, x in ratios if x in res and "d" in res]
md = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
for label, key, fmt, higher in rows:
    cells = [label]
    for s in stacks:
        v = res[s].get(key)
        cells.append("-" if v is None else fmt.format(v))
    for r, x in ratios:
        if x in res and "d" in res:
            a, b = res["d"].get(key), res[x].get(key)
            cells.append("-" if not a or not b else f"{a / b:.2f}x")
    md.append("| " + " | ".join(cells) + " |")
md.append("")
md.append(f"XTS, one thread, 4 KiB sectors: storageos-fuse encrypt {xts['storageos_encrypt_mib_s']:.0f} MiB/s, "
          f"decrypt {xts['storageos_decrypt_mib_s']:.0f} MiB/s; OpenSSL aes-256-xts {xts['openssl_aes_256_xts_4096_mib_s']:.0f} MiB/s; "
          f"ratio {xts['encrypt_ratio_vs_openssl']:.2f}x / {xts['decrypt_ratio_vs_openssl']:.2f}x.")
md.append("")
md.append(f"Machine: {cpu}, {ncpu} cores, kernel {kernel}; load average before {load0}, after {load1}; "
          f"fio {runtime} s per job over {size}, loop direct-io={dio}, storageos-fuse --threads {threads} --backing-io {backing_io}; run {stamp}.")
md.append("")
md.append(f"Stack order {order}; each figure above is the mean of the stack's passes "
          f"(peak RSS: the largest). Per pass:")
md.append("")
cols = [(s, i) for s in stacks for i in range(len(per_pass[s]))]
md.append("| job | " + " | ".join(f"{s} pass {i + 1}" for s, i in cols) + " |")
md.append("|" + "---|" * (len(cols) + 1))
for label, key, fmt, higher in rows[:5]:
    vals = [per_pass[s][i].get(key) for s, i in cols]
    md.append(f"| {label} | " + " | ".join("-" if v is None else fmt.format(v) for v in vals) + " |")
md.append("")
for s in stacks:
    p = f"{out}/{s}.p1-perf.txt"
    if os.path.exists(p):
        md.append(f"Profile of the ({s}) daemon over all its jobs, first pass (perf record -g, top symbols):")
        md.append("")
        md.append("```")
        md.extend(l.rstrip() for l in open(p))
        md.append("```")
        md.append("")
text = "\n".join(md) + "\n"
print(text)
open(dest + ".md", "w").write(text)
json.dump({"stamp": stamp, "runtime_s": int(runtime), "size": size, "threads": int(threads), "backing_io": backing_io,
           "loop_direct_io": dio, "load_before": load0, "load_after": load1, "kernel": kernel,
           "cpu": cpu, "cpus": int(ncpu), "order": order, "stacks": res, "passes": per_pass, "xts": xts},
          open(dest + ".json", "w"), indent=2)
print(f"wrote {dest}.json and {dest}.md")
PY
