//! `mount --backing-io buffered|direct`: the same plaintext either way, and in direct mode
//! no second copy of the volume (its ciphertext) piles up in the backing file's page cache.
//! Switching modes between mounts of one volume never serves stale cached data.

mod common;

use std::fs;
use std::path::Path;

use common::{Env, Loop, pseudo_random, require_real, sh, sha256_file};

const MIB: usize = 1 << 20;
/// Bytes written through the loop device in each mode.
const WRITTEN: usize = 32 * MIB;

/// Bytes of `file` resident in the page cache (util-linux `fincore`).
fn cached_bytes(file: &Path) -> u64 {
    sh(&format!(
        "fincore --bytes --noheadings --output RES {}",
        file.display()
    ))
    .trim()
    .parse()
    .expect("fincore prints a byte count")
}

/// Mounts `vol` in `mode`, writes `src` to the start of its loop device with direct I/O,
/// reads it back; returns the loop device's view of those bytes (sha256).
fn write_and_read_back(env: &Env, vol: &str, mode: &str, src: &Path) -> String {
    let img = env.path(&format!("{mode}.img"));
    env.ok(&[
        "mount",
        vol,
        "--at",
        img.to_str().unwrap(),
        "--background",
        "--backing-io",
        mode,
    ]);
    let lo = Loop::attach(&img, &["--direct-io=on"]);
    sh(&format!(
        "dd if={} of={} bs=1M oflag=direct conv=fsync status=none",
        src.display(),
        lo.dev
    ));
    let back = env.path(&format!("back-{mode}"));
    sh(&format!(
        "dd if={} of={} bs=1M count={} iflag=direct status=none",
        lo.dev,
        back.display(),
        WRITTEN / MIB
    ));
    lo.detach();
    env.ok(&["umount", vol]);
    sha256_file(&back)
}

#[test]
fn direct_mode_keeps_no_ciphertext_cache_and_modes_agree() {
    if !require_real(&["losetup", "fincore", "dd"]) {
        return;
    }
    let env = Env::new();
    let id = env.inspect_created(
        "default/cache",
        &["--size", "64Mi", "--label", "storageos.com/encryption=true"],
    );
    let data = env.volume_dir(&id).join("data");

    // Buffered: what the daemon wrote is cached ciphertext, as much as was written.
    let first = env.path("first");
    fs::write(&first, pseudo_random(1, WRITTEN)).unwrap();
    assert_eq!(
        write_and_read_back(&env, "default/cache", "buffered", &first),
        sha256_file(&first)
    );
    let buffered_cache = cached_bytes(&data);
    assert!(
        buffered_cache >= WRITTEN as u64,
        "buffered mode caches what it wrote: {buffered_cache} bytes cached"
    );

    // Direct, over the same range: the cached pages of the buffered mount are dropped as
    // the new data goes past them, and none are added. Pages the buffered mount's
    // readahead brought in beyond the written range stay: direct mode does not touch them.
    let second = env.path("second");
    fs::write(&second, pseudo_random(2, WRITTEN)).unwrap();
    assert_eq!(
        write_and_read_back(&env, "default/cache", "direct", &second),
        sha256_file(&second)
    );
    let direct_cache = cached_bytes(&data);
    assert!(
        buffered_cache.saturating_sub(direct_cache) >= (WRITTEN - 4 * MIB) as u64,
        "direct mode leaves the written range uncached: {direct_cache} bytes cached \
         after it, {buffered_cache} after buffered mode, {WRITTEN} written"
    );

    eprintln!(
        "RESULT backing page cache after writing {} MiB: buffered {} MiB, direct {} MiB",
        WRITTEN / MIB,
        buffered_cache / MIB as u64,
        direct_cache / MIB as u64
    );
    // Back to buffered (the default): the second data, not stale pages from the first mount.
    let img = env.path("check.img");
    env.ok(&[
        "mount",
        "default/cache",
        "--at",
        img.to_str().unwrap(),
        "--background",
    ]);
    let head = env.path("head");
    sh(&format!(
        "dd if={} of={} bs=1M count={} status=none",
        img.display(),
        head.display(),
        WRITTEN / MIB
    ));
    env.ok(&["umount", "default/cache"]);
    assert_eq!(sha256_file(&head), sha256_file(&second));
    // And the backing file holds ciphertext, never the plaintext written.
    let raw = fs::read(&data).unwrap();
    let plain = fs::read(&second).unwrap();
    assert_ne!(
        &raw[..MIB],
        &plain[..MIB],
        "backing file holds the plaintext"
    );
}
