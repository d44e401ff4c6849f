//! Crash consistency: an fsync'd append workload on ext4 over a loop device over the FUSE
//! image of an encrypted volume; the server is SIGKILLed at a seeded random moment; the
//! product's own recovery path (`umount` of the dead mount, or `mount` onto the stale mount
//! point) brings the volume back; after `e2fsck -fy` every record whose fsync had returned
//! is present and intact. Also checks that `umount` of a dead mount works by VOLUME and by
//! PATH and says what it did, and that `mount` onto a stale mount point says so.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{Env, Loop, kill_server, sh};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 4] = b"SFRC";
const ROUNDS: u64 = 12;
const WORKER_ENV: &str = "STORAGEOS_FUSE_CRASH_WORKER";

fn check(seq: u64, payload: &[u8]) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update(seq.to_le_bytes());
    h.update(payload);
    h.finalize()[..8].try_into().unwrap()
}

/// One record: magic, sequence number, payload length, payload, checksum of seq+payload.
fn record(seq: u64, seed: u64) -> Vec<u8> {
    let len = 1
        + (common::pseudo_random(seed ^ seq.wrapping_mul(0x9e37_79b9), 2)[0] as usize * 13) % 6000;
    let payload = common::pseudo_random(seed.wrapping_add(seq), len);
    let mut r = Vec::with_capacity(len + 24);
    r.extend_from_slice(MAGIC);
    r.extend_from_slice(&seq.to_le_bytes());
    r.extend_from_slice(&(len as u32).to_le_bytes());
    r.extend_from_slice(&payload);
    r.extend_from_slice(&check(seq, &payload));
    r
}

/// Number of intact records at the start of `bytes`, in order from 0.
fn intact_records(bytes: &[u8]) -> u64 {
    let mut at = 0usize;
    let mut seq = 0u64;
    loop {
        let Some(h) = bytes.get(at..at + 16) else {
            return seq;
        };
        if &h[..4] != MAGIC || u64::from_le_bytes(h[4..12].try_into().unwrap()) != seq {
            return seq;
        }
        let len = u32::from_le_bytes(h[12..16].try_into().unwrap()) as usize;
        let Some(payload) = bytes.get(at + 16..at + 16 + len) else {
            return seq;
        };
        let Some(sum) = bytes.get(at + 16 + len..at + 24 + len) else {
            return seq;
        };
        if sum != check(seq, payload) {
            return seq;
        }
        at += 24 + len;
        seq += 1;
    }
}

/// The workload, run as a child process (this test binary re-executed into the crash test
/// with the worker variable set): appends records to the file named by the environment,
/// fsyncs each, then prints its sequence number. A printed number is an acknowledged record.
fn append_worker(spec: &str) {
    let (path, seed) = spec.split_once(':').unwrap();
    let seed: u64 = seed.parse().unwrap();
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    let mut out = std::io::stdout().lock();
    for seq in 0..200_000u64 {
        if f.write_all(&record(seq, seed)).is_err() || f.sync_all().is_err() {
            return;
        }
        if writeln!(out, "{seq}").and_then(|_| out.flush()).is_err() {
            return;
        }
    }
}

struct Round {
    file: String,
    acked: Option<u64>,
    seed: u64,
}

/// Runs the worker on `file` until `kill_after` records are acknowledged, waits a seeded
/// few hundred microseconds more, SIGKILLs the server of `img`, and collects the acks the
/// worker still printed. Returns the highest acknowledged sequence number.
fn run_until_killed(
    file: &Path,
    seed: u64,
    kill_after: u64,
    extra_us: u64,
    img: &Path,
) -> Option<u64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "fsynced_records_survive_sigkill_of_the_server",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(WORKER_ENV, format!("{}:{seed}", file.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = None;
    let mut killed = false;
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        let Ok(seq) = line.trim().parse::<u64>() else {
            continue;
        };
        acked = Some(seq);
        if seq + 1 >= kill_after {
            std::thread::sleep(std::time::Duration::from_micros(extra_us));
            kill_server(img);
            killed = true;
            break;
        }
    }
    assert!(
        killed,
        "the worker stopped before the kill (acked {acked:?})"
    );
    // Acks printed after the kill are still acks: their fsync returned.
    for line in lines {
        let Ok(line) = line else { break };
        if let Ok(seq) = line.trim().parse::<u64>() {
            acked = Some(seq);
        }
    }
    let _ = child.wait();
    acked
}

fn mount_ext4(dev: &str, dir: &Path) {
    common::mount_fs(dev, dir, "rw");
}

fn umount_ext4(dir: &Path) {
    let o = Command::new("umount").arg(dir).output().unwrap();
    if !o.status.success() {
        sh(&format!("umount -l {}", dir.display()));
    }
}

fn e2fsck(dev: &str) {
    let o = Command::new("e2fsck").args(["-fy", dev]).output().unwrap();
    let code = o.status.code().unwrap_or(8);
    assert!(
        code < 4,
        "e2fsck -fy {dev} left errors ({code}): {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn fsynced_records_survive_sigkill_of_the_server() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        append_worker(&spec);
        return;
    }
    if !common::require_real(&["mkfs.ext4", "e2fsck", "losetup"]) {
        return;
    }
    let env = Env::new();
    // 8 rounds on a 4096-byte-sector volume, 4 on a 512-byte-sector one (loop device
    // with 512-byte sectors too): 12 rounds.
    let (a1, b1) = crash_rounds(&env, "crash", "4096", 0..8);
    let (a2, b2) = crash_rounds(&env, "crash512", "512", 8..ROUNDS);
    eprintln!(
        "RESULT crash: {ROUNDS} rounds survived (8 with 4096-byte sectors, 4 with 512), {} acknowledged records, {} bytes in {ROUNDS} files verified after the last recovery of each volume (every file re-checked after every round), none lost",
        a1 + a2,
        b1 + b2
    );
}

/// Crash rounds `rounds` on a new encrypted volume `vol`; returns the acknowledged records
/// and the bytes of all round files at the last check.
fn crash_rounds(
    env: &Env,
    vol: &str,
    sector: &str,
    rounds_range: std::ops::Range<u64>,
) -> (u64, u64) {
    env.inspect_created(
        vol,
        &[
            "--size",
            "96Mi",
            "--sector-size",
            sector,
            "--label",
            "storageos.com/encryption=true",
        ],
    );
    let img = env.mount_bg(vol, vol);
    let fsdir = env.path(&format!("fs-{vol}"));
    let loop_args: &[&str] = if sector == "512" {
        &["--sector-size", "512"]
    } else {
        &[]
    };
    let mut lo = Loop::attach(&img, loop_args);
    sh(&format!("mkfs.ext4 -q -F {}", lo.dev));
    mount_ext4(&lo.dev, &fsdir);

    let mut rounds: Vec<Round> = Vec::new();
    let mut bytes_checked = 0u64;
    let last = rounds_range.end - 1;
    for r in rounds_range.clone() {
        let seed = 0x5eed_0000 + r;
        let rnd = common::pseudo_random(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 16);
        let kill_after = 3 + (u16::from_le_bytes([rnd[0], rnd[1]]) as u64 % 200);
        let extra_us = (u16::from_le_bytes([rnd[2], rnd[3]]) as u64) % 4000;
        let file = format!("round-{r}.log");
        let acked = run_until_killed(&fsdir.join(&file), seed, kill_after, extra_us, &img);
        rounds.push(Round { file, acked, seed });

        // Recovery, as an operator would do it: file system off, loop device off, dead
        // FUSE mount cleared by the product, served again, checked, mounted.
        umount_ext4(&fsdir);
        lo.detach();
        assert!(
            is_dead(&img),
            "round {r}: the mount should be dead after SIGKILL"
        );
        let how = r % 3;
        match how {
            0 => {
                let out = env.ok(&["umount", img.to_str().unwrap()]);
                assert!(
                    out.contains("dead mount") && out.contains(img.to_str().unwrap()),
                    "umount PATH says what it did: {out}"
                );
                env.mount_bg(vol, vol);
            }
            1 => {
                let out = env.ok(&["umount", vol]);
                assert!(
                    out.contains("dead mount"),
                    "umount VOLUME says what it did: {out}"
                );
                env.mount_bg(vol, vol);
            }
            _ => {
                let o = env
                    .cmd()
                    .args(["mount", vol, "--at", img.to_str().unwrap(), "--background"])
                    .output()
                    .unwrap();
                assert!(
                    o.status.success(),
                    "mount onto a stale mount point: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                let err = String::from_utf8_lossy(&o.stderr);
                assert!(
                    err.contains("dead mount") && err.contains(img.to_str().unwrap()),
                    "mount says it recovered: {err}"
                );
                assert_eq!(
                    String::from_utf8_lossy(&o.stdout).trim(),
                    img.to_str().unwrap()
                );
            }
        }
        assert_eq!(
            common::mounts_at(&img),
            1,
            "round {r}: exactly one mount on the image path"
        );
        lo = Loop::attach(&img, loop_args);
        e2fsck(&lo.dev);
        mount_ext4(&lo.dev, &fsdir);

        for (past_seed, past) in rounds.iter().map(|p| (p.seed, p)) {
            let bytes = fs::read(fsdir.join(&past.file)).unwrap_or_default();
            let intact = intact_records(&bytes);
            let need = past.acked.map_or(0, |a| a + 1);
            assert!(
                intact >= need,
                "round {r}: {} lost acknowledged records: {intact} intact, {need} acknowledged (seed {:#x})",
                past.file,
                past_seed
            );
            if r == last {
                bytes_checked += bytes.len() as u64;
            }
        }
        eprintln!(
            "round {r} ({sector}-byte sectors): seed {seed:#x}, killed after {} acked records (+{extra_us} us), recovered via {}, all acknowledged records intact",
            rounds.last().unwrap().acked.map_or(0, |a| a + 1),
            [
                "umount PATH",
                "umount VOLUME",
                "mount onto stale mount point"
            ][how as usize]
        );
    }
    let total: u64 = rounds.iter().map(|r| r.acked.map_or(0, |a| a + 1)).sum();
    umount_ext4(&fsdir);
    lo.detach();
    env.ok(&["umount", vol]);
    (total, bytes_checked)
}

/// A dead FUSE mount answers ENOTCONN (statfs always reaches the server; stat may be cached).
fn is_dead(p: &Path) -> bool {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: valid NUL-terminated path, writable statfs buffer.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTCONN)
}

/// `umount` on a path that is not a storageos-fuse mount, and on a live one, still behave.
#[test]
fn umount_of_a_dead_mount_by_volume_and_by_path() {
    if !common::require_real(&[]) {
        return;
    }
    let env = Env::new();
    env.inspect_created(
        "d",
        &["--size", "1Mi", "--label", "storageos.com/encryption=true"],
    );
    for by_path in [true, false] {
        let img = env.mount_bg("d", "d");
        let f = OpenOptions::new().write(true).open(&img).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"hello", 0).unwrap();
        drop(f);
        kill_server(&img);
        assert!(is_dead(&img));
        // Nothing else can be done with the volume until the dead mount is cleared.
        let target = if by_path {
            img.to_str().unwrap().to_string()
        } else {
            "d".to_string()
        };
        let out = env.ok(&["umount", &target]);
        assert!(out.contains("dead mount"), "{out}");
        assert!(!is_dead(&img) && common::mounts_at(&img) == 0, "cleared");
        // A second umount finds nothing to do and says so as an error.
        let line = env.fails(&["umount", &target]);
        assert!(line.contains("not mounted"), "{line}");
        // The data written before the kill is there (write-through: no daemon cache).
        let img = env.mount_bg("d", "d");
        let mut buf = [0u8; 5];
        fs::File::open(&img).unwrap().read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        env.ok(&["umount", "d"]);
    }
}

/// A dead mount still held by a loop device (the operator has not detached it yet):
/// `umount VOLUME` detaches it lazily and says so; the volume can be served again at once
/// and the stale loop device can still be detached afterwards.
#[test]
fn umount_of_a_dead_mount_still_held_by_a_loop_device() {
    if !common::require_real(&["losetup"]) {
        return;
    }
    let env = Env::new();
    env.inspect_created(
        "held",
        &["--size", "4Mi", "--label", "storageos.com/encryption=true"],
    );
    let img = env.mount_bg("held", "held");
    let lo = Loop::attach(&img, &[]);
    let f = OpenOptions::new().write(true).open(&lo.dev).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xabu8; 8192], 4096).unwrap();
    f.sync_all().unwrap();
    drop(f);
    kill_server(&img);
    assert!(is_dead(&img));
    let out = env.ok(&["umount", "held"]);
    assert!(out.contains("dead mount"), "{out}");
    let img = env.mount_bg("held", "held");
    let mut buf = vec![0u8; 8192];
    std::os::unix::fs::FileExt::read_exact_at(&fs::File::open(&img).unwrap(), &mut buf, 4096)
        .unwrap();
    assert!(
        buf.iter().all(|&b| b == 0xab),
        "data synced through the loop device survived"
    );
    lo.detach();
    env.ok(&["umount", "held"]);
}

/// The record checker itself: a flipped byte, a lost tail or a reordered record end the
/// intact prefix there (so a lost acknowledged record cannot go unnoticed).
#[test]
fn record_checker_finds_damage() {
    let mut log = Vec::new();
    for seq in 0..20 {
        log.extend_from_slice(&record(seq, 7));
    }
    assert_eq!(intact_records(&log), 20);
    let third: usize = (0..2).map(|s| record(s, 7).len()).sum();
    let mut flipped = log.clone();
    flipped[third + 30] ^= 1;
    assert_eq!(intact_records(&flipped), 2);
    assert_eq!(intact_records(&log[..log.len() - 1]), 19);
    let mut swapped = record(1, 7);
    swapped.extend_from_slice(&record(0, 7));
    assert_eq!(intact_records(&swapped), 0);
    let mut zeroed = log.clone();
    zeroed[third..third + 4096.min(log.len() - third)].fill(0);
    assert_eq!(intact_records(&zeroed), 2);
}

/// A foreground `mount` onto a stale mount point recovers it and says so on stderr, then
/// serves the data that was there.
#[test]
fn foreground_mount_onto_a_stale_mount_point() {
    if !common::require_real(&[]) {
        return;
    }
    let env = Env::new();
    env.inspect_created("fg", &["--size", "1Mi"]);
    let img = env.mount_bg("fg", "fg");
    let f = OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"before the kill", 100).unwrap();
    f.sync_all().unwrap();
    drop(f);
    kill_server(&img);
    assert!(is_dead(&img));
    let mut child = env
        .cmd()
        .args(["mount", "fg", "--at", img.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), img.to_str().unwrap(), "serving again");
    let mut buf = [0u8; 15];
    std::os::unix::fs::FileExt::read_exact_at(&fs::File::open(&img).unwrap(), &mut buf, 100)
        .unwrap();
    assert_eq!(&buf, b"before the kill");
    env.ok(&["umount", "fg"]);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        err.contains("dead mount") && err.contains(img.to_str().unwrap()),
        "the foreground mount says it recovered the stale mount point: {err}"
    );
    assert_eq!(common::mounts_at(&img), 0);
}
