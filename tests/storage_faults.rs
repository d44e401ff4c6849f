//! Backing storage faults: the file system holding the data directory runs out of space
//! (a small loop-mounted ext4), and a backing file is truncated behind the server's back.
//! Clients get ENOSPC or EIO, the server stays up and keeps serving the rest, earlier data
//! stays intact, and writes work again once space is freed. Never a panic.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{Env, server_pid, sh};

const ENC: &str = "storageos.com/encryption=true";
const MIB: u64 = 1 << 20;

fn open_rw(p: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

/// Reads `len` bytes at `off` through a fresh descriptor (the FUSE page cache is dropped
/// on open, so this reaches the server).
fn read_fresh(p: &Path, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let f = File::open(p)?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, off)?;
    Ok(buf)
}

fn log_of(env: &Env, id: &str) -> String {
    fs::read_to_string(env.data.join("logs").join(format!("{id}.log"))).unwrap_or_default()
}

#[test]
fn enospc_on_the_data_file_system_fails_writes_and_recovers() {
    if !common::require_real(&["mkfs.ext4"]) {
        return;
    }
    let env = Env::new();
    let small = env.path("small.ext4");
    sh(&format!(
        "truncate -s 48M {0} && mkfs.ext4 -q -F -m 0 {0}",
        small.display()
    ));
    fs::create_dir_all(&env.data).unwrap();
    sh(&format!(
        "mount -o loop {} {}",
        small.display(),
        env.data.display()
    ));

    // A sparse volume larger than the file system under it.
    let id = env.inspect_created("full", &["--size", "256Mi", "--label", ENC]);
    let img = env.mount_bg("full", "full");
    let pid = server_pid(&img).expect("server");
    let early = common::pseudo_random(1, (4 * MIB) as usize);
    let f = open_rw(&img);
    f.write_all_at(&early, 0).unwrap();
    f.sync_all().unwrap();

    // Fill the rest of the file system.
    let filler = env.data.join("filler");
    let mut fill = File::create(&filler).unwrap();
    let chunk = vec![0x55u8; MIB as usize];
    loop {
        match fill.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    drop(fill);

    // Writes into unallocated parts of the volume now fail, with ENOSPC or EIO.
    let mut failures = 0;
    for i in 0..16u64 {
        let r = f
            .write_all_at(
                &common::pseudo_random(100 + i, MIB as usize),
                (16 + i * 8) * MIB,
            )
            .and_then(|_| f.sync_data());
        if let Err(e) = r {
            assert!(
                matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EIO)),
                "write on a full file system must fail with ENOSPC or EIO, got {e}"
            );
            failures += 1;
        }
    }
    assert!(failures > 0, "no write failed on a full file system");
    assert!(server_pid(&img) == Some(pid), "the server stayed up");
    assert_eq!(
        read_fresh(&img, 0, early.len()).unwrap(),
        early,
        "earlier data intact"
    );

    // Free space: writes work again and read back.
    fs::remove_file(&filler).unwrap();
    let later = common::pseudo_random(2, (2 * MIB) as usize);
    f.write_all_at(&later, 32 * MIB).unwrap();
    f.sync_all().unwrap();
    assert_eq!(read_fresh(&img, 32 * MIB, later.len()).unwrap(), later);
    assert_eq!(read_fresh(&img, 0, early.len()).unwrap(), early);
    drop(f);
    env.ok(&["umount", "full"]);
    assert!(!log_of(&env, &id).contains("panicked"));
}

#[test]
fn truncated_backing_file_gives_io_errors_never_a_panic() {
    if !common::require_real(&[]) {
        return;
    }
    let env = Env::new();
    for sector in ["4096", "512"] {
        let vol = format!("trunc-{sector}");
        let id = env.inspect_created(
            &vol,
            &["--size", "8Mi", "--sector-size", sector, "--label", ENC],
        );
        let img = env.mount_bg(&vol, &vol);
        let pid = server_pid(&img).expect("server");
        let data = common::pseudo_random(3, (8 * MIB) as usize);
        let f = open_rw(&img);
        f.write_all_at(&data, 0).unwrap();
        f.sync_all().unwrap();
        drop(f);

        // Behind the server's back: the backing file loses its second half.
        let backing = env.volume_dir(&id).join("data");
        OpenOptions::new()
            .write(true)
            .open(&backing)
            .unwrap()
            .set_len(4 * MIB)
            .unwrap();

        let e = read_fresh(&img, 6 * MIB, 4096).unwrap_err();
        assert!(
            e.raw_os_error() == Some(libc::EIO) || e.kind() == ErrorKind::UnexpectedEof,
            "read of a vanished range: {e}"
        );
        // A partial-sector write needs the old sector: it cannot be read, so EIO.
        let f = open_rw(&img);
        let e = f.write_all_at(b"xyz", 6 * MIB + 100).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EIO),
            "partial write over a vanished range: {e}"
        );
        drop(f);
        // The server is alive and serves the rest.
        assert_eq!(server_pid(&img), Some(pid), "the server stayed up");
        assert_eq!(
            read_fresh(&img, 0, (2 * MIB) as usize).unwrap(),
            &data[..(2 * MIB) as usize]
        );
        let f = open_rw(&img);
        f.write_all_at(b"still writable", 1000).unwrap();
        f.sync_all().unwrap();
        assert_eq!(read_fresh(&img, 1000, 14).unwrap(), b"still writable");
        drop(f);
        env.ok(&["umount", &vol]);
        let log = log_of(&env, &id);
        assert!(!log.contains("panicked"), "{log}");
        assert!(
            log.contains("failed"),
            "the server logged the I/O errors: {log}"
        );
        // Serving it again is refused with a clear error: the size no longer matches.
        let line = env.fails(&[
            "mount",
            &vol,
            "--at",
            env.path(&format!("{vol}-2.img")).to_str().unwrap(),
        ]);
        assert!(line.contains("bytes"), "{line}");
    }
}
