//! Load with verification. fio (`verify=crc32c`, `verify_fatal=1`) through a loop device on
//! the FUSE image of encrypted volumes with both sector sizes: random 4 KiB writes from 4
//! jobs, 512-byte writes from 8 jobs that share every 4 KiB sector (read-modify-write on
//! a 4096-sector volume), and trims mixed with writes. Then several threads straight on
//! the FUSE image file with unaligned offsets and lengths, writes and punches, on disjoint
//! byte ranges that share sectors, checked against an in-memory model of the image.

mod common;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use common::{Env, Loop};

const ENC: &str = "storageos.com/encryption=true";

#[derive(Default, Debug)]
struct FioTotals {
    written: u64,
    read_verified: u64,
    trimmed: u64,
}

/// Runs fio on `dev`; fails the test on any job error or verify failure.
fn fio(dev: &str, name: &str, args: &[&str]) -> FioTotals {
    let o = Command::new("fio")
        .args([
            &format!("--name={name}"),
            &format!("--filename={dev}"),
            "--direct=1",
            "--ioengine=psync",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
            "--output-format=json",
            // No verify state files left in the working directory.
            "--verify_state_save=0",
        ])
        .args(args)
        .output()
        .expect("run fio");
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "fio {name} {args:?} failed ({}):\n{err}\n{out}",
        o.status
    );
    assert!(
        !err.to_lowercase().contains("verify"),
        "fio {name}: verify errors:\n{err}"
    );
    let json_start = out.find('{').expect("fio JSON output");
    let v: serde_json::Value = serde_json::from_str(&out[json_start..]).expect("fio JSON");
    let mut t = FioTotals::default();
    for job in v["jobs"].as_array().expect("jobs") {
        assert_eq!(job["error"], 0, "fio {name}: job error: {job}");
        t.written += job["write"]["io_bytes"].as_u64().unwrap_or(0);
        t.read_verified += job["read"]["io_bytes"].as_u64().unwrap_or(0);
        t.trimmed += job["trim"]["io_bytes"].as_u64().unwrap_or(0);
    }
    for job in v["jobs"].as_array().unwrap() {
        let w = job["write"]["io_bytes"].as_u64().unwrap_or(0);
        let r = job["read"]["io_bytes"].as_u64().unwrap_or(0);
        assert!(
            w > 0 && r >= w,
            "fio {name}: a job did not write and verify everything: {job}"
        );
    }
    eprintln!("fio {name}: {t:?}");
    t
}

fn fio_on_volume(sector_size: &str, loop_sector: &str) -> FioTotals {
    let env = Env::new();
    let vol = format!("fio-{sector_size}-{loop_sector}");
    env.inspect_created(
        &vol,
        &[
            "--size",
            "128Mi",
            "--sector-size",
            sector_size,
            "--label",
            ENC,
        ],
    );
    let img = env.mount_bg(&vol, &vol);
    let lo = Loop::attach(&img, &["--sector-size", loop_sector]);
    let mut total = FioTotals::default();
    let mut add = |t: FioTotals| {
        total.written += t.written;
        total.read_verified += t.read_verified;
        total.trimmed += t.trimmed;
    };
    // Random 4 KiB writes, 4 jobs, each in its own 16 MiB region.
    add(fio(
        &lo.dev,
        "randwrite-4k",
        &[
            "--rw=randwrite",
            "--bs=4k",
            "--numjobs=4",
            "--size=8M",
            "--offset_increment=16M",
        ],
    ));
    if loop_sector == "512" {
        // 512-byte writes from 8 jobs: job k owns bytes [k*512, k*512+512) of every 4 KiB,
        // so all jobs write into the same sectors at once.
        add(fio(
            &lo.dev,
            "rmw-512",
            &[
                "--rw=write",
                "--bs=512",
                "--numjobs=8",
                "--size=1M",
                "--offset=64M",
                "--offset_increment=512",
                "--zonemode=strided",
                "--zonerange=4096",
                "--zonesize=512",
            ],
        ));
        // 512-byte trims then writes from 4 jobs; regions start 512 bytes off a 4 KiB
        // boundary, so partial-sector trims zero bytes beside another job's. (fio 3.33's
        // randtrimwrite writes nothing in a job with a non-zero offset: trimwrite here.)
        add(fio(
            &lo.dev,
            "trimwrite-512",
            &[
                "--rw=trimwrite",
                "--bs=512",
                "--numjobs=4",
                "--size=1M",
                "--offset=80M",
                "--offset_increment=1049088",
            ],
        ));
    }
    // 4 KiB trims mixed with writes: random from one job at offset 0, then 4 jobs.
    add(fio(
        &lo.dev,
        "randtrimwrite-4k",
        &["--rw=randtrimwrite", "--bs=4k", "--size=8M"],
    ));
    add(fio(
        &lo.dev,
        "trimwrite-4k",
        &[
            "--rw=trimwrite",
            "--bs=4k",
            "--numjobs=4",
            "--size=4M",
            "--offset=96M",
            "--offset_increment=4M",
        ],
    ));
    drop(lo);
    env.ok(&["umount", &vol]);
    total
}

#[test]
fn fio_verify_through_loop_on_both_sector_sizes() {
    if !common::require_real(&["fio", "losetup"]) {
        return;
    }
    let mut verified = 0;
    let mut written = 0;
    let mut trimmed = 0;
    for (vs, ls) in [("4096", "512"), ("512", "512"), ("4096", "4096")] {
        let t = fio_on_volume(vs, ls);
        verified += t.read_verified;
        written += t.written;
        trimmed += t.trimmed;
    }
    eprintln!(
        "RESULT fio: {written} bytes written, {trimmed} bytes trimmed, {verified} bytes verified (crc32c), 0 verify errors"
    );
}

/// Disjoint byte ranges that share sectors: the image is cut into chunks of `CHUNK`
/// bytes (not a divisor of any sector size), chunk `c` belongs to thread `c % THREADS`.
const CHUNK: u64 = 1000;
const THREADS: u64 = 4;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn punch(f: &File, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: fallocate on a valid open descriptor with in-range offsets.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One thread's work: random unaligned writes, punches and read-backs inside its own
/// chunks. Returns its model (its bytes of the image; other bytes left as `None`).
fn worker(img: &Path, size: u64, t: u64, seed: u64, ops: usize) -> (Vec<Option<u8>>, u64) {
    let f = OpenOptions::new().read(true).write(true).open(img).unwrap();
    let mut model: Vec<Option<u8>> = vec![None; size as usize];
    let chunks = size / CHUNK;
    for c in (t..chunks).step_by(THREADS as usize) {
        for b in &mut model[(c * CHUNK) as usize..((c + 1) * CHUNK) as usize] {
            *b = Some(0);
        }
    }
    let mut rng = Rng(seed | 1);
    let mut checked = 0u64;
    for _ in 0..ops {
        let c = t + THREADS * rng.below((chunks - t).div_ceil(THREADS));
        let a = rng.below(CHUNK);
        let len = 1 + rng.below(CHUNK - a);
        let off = c * CHUNK + a;
        match rng.below(10) {
            0..=5 => {
                let data = common::pseudo_random(rng.next(), len as usize);
                f.write_all_at(&data, off).unwrap();
                for (i, b) in data.iter().enumerate() {
                    model[off as usize + i] = Some(*b);
                }
            }
            6 => {
                punch(&f, off, len).unwrap();
                for b in &mut model[off as usize..(off + len) as usize] {
                    *b = Some(0);
                }
            }
            _ => {
                let mut buf = vec![0u8; len as usize];
                f.read_exact_at(&mut buf, off).unwrap();
                for (i, b) in buf.iter().enumerate() {
                    assert_eq!(
                        Some(*b),
                        model[off as usize + i],
                        "thread {t}: byte {} differs (seed {seed:#x})",
                        off as usize + i
                    );
                }
                checked += len;
            }
        }
    }
    (model, checked)
}

fn model_check(sector_size: &str, seed: u64) -> u64 {
    let env = Env::new();
    let size: u64 = 4 << 20;
    let vol = format!("model-{sector_size}");
    env.inspect_created(
        &vol,
        &[
            "--size",
            "4Mi",
            "--sector-size",
            sector_size,
            "--label",
            ENC,
        ],
    );
    let img = env.mount_bg(&vol, &vol);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let img = img.clone();
            std::thread::spawn(move || {
                worker(&img, size, t, seed.wrapping_mul(31).wrapping_add(t), 3000)
            })
        })
        .collect();
    let mut model = vec![0u8; size as usize];
    let mut checked = 0;
    for h in handles {
        let (m, c) = h.join().expect("worker thread");
        checked += c;
        for (i, b) in m.into_iter().enumerate() {
            if let Some(b) = b {
                model[i] = b;
            }
        }
    }
    // Unowned tail bytes (past the last whole chunk) were never written: zeros.
    let whole = std::fs::read(&img).unwrap();
    assert_eq!(whole.len() as u64, size);
    assert!(
        whole == model,
        "image differs from the model (sector size {sector_size}, seed {seed:#x}) at byte {:?}",
        whole.iter().zip(&model).position(|(a, b)| a != b)
    );
    // And again from the backing file, through a new server.
    env.ok(&["umount", &vol]);
    let img = env.mount_bg(&vol, &vol);
    assert!(
        std::fs::read(&img).unwrap() == model,
        "after remount the image differs from the model"
    );
    env.ok(&["umount", &vol]);
    checked + 2 * size
}

#[test]
fn unaligned_concurrent_io_on_the_fuse_image_matches_a_model() {
    if !common::require_real(&[]) {
        return;
    }
    let mut verified = 0;
    for (ss, seed) in [("4096", 0xa11ce_u64), ("512", 0xb0b_u64)] {
        verified += model_check(ss, seed);
    }
    eprintln!(
        "RESULT model: {THREADS} threads x 3000 ops per sector size, {verified} bytes verified against the model, 0 differences"
    );
}

/// The check can fail: one flipped ciphertext bit in the backing file (XTS does not
/// authenticate, so the sector decrypts to garbage) is caught by fio's verify pass.
#[test]
fn fio_verify_catches_a_corrupted_backing_sector() {
    if !common::require_real(&["fio", "losetup"]) {
        return;
    }
    let env = Env::new();
    let id = env.inspect_created("corrupt", &["--size", "16Mi", "--label", ENC]);
    let job = |dev: &str, extra: &[&str]| {
        Command::new("fio")
            .args([
                "--name=c",
                &format!("--filename={dev}"),
                "--direct=1",
                "--ioengine=psync",
                "--rw=write",
                "--bs=4k",
                "--size=4M",
                "--verify=crc32c",
                "--verify_fatal=1",
                "--verify_state_save=0",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let img = env.mount_bg("corrupt", "corrupt");
    let lo = Loop::attach(&img, &[]);
    let o = job(&lo.dev, &["--do_verify=0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        job(&lo.dev, &["--verify_only"]).status.success(),
        "clean data verifies"
    );
    drop(lo);
    env.ok(&["umount", "corrupt"]);

    // Flip one bit in the middle of the written range, then serve again (no caches).
    let backing = env.volume_dir(&id).join("data");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&backing)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, (2 << 20) + 1234).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], (2 << 20) + 1234).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let img = env.mount_bg("corrupt", "corrupt");
    let lo = Loop::attach(&img, &[]);
    let o = job(&lo.dev, &["--verify_only"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !o.status.success(),
        "fio verify missed a corrupted sector:\n{text}"
    );
    assert!(text.contains("verify") || text.contains("bad"), "{text}");
    drop(lo);
    env.ok(&["umount", "corrupt"]);
}
