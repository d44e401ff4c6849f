//! Discard: `blkdiscard` on the loop device reaches the image as fallocate(PUNCH_HOLE); the
//! range reads back as zeros and the backing file's allocated blocks go down.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;

use common::{Env, Loop, pseudo_random, require_real, sh};

fn allocated(p: &std::path::Path) -> u64 {
    fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn blkdiscard_zeroes_and_frees_backing_blocks() {
    if !require_real(&["losetup", "blkdiscard"]) {
        return;
    }
    for sector in ["4096", "512"] {
        let env = Env::new();
        let v: serde_json::Value = serde_json::from_str(&env.ok(&[
            "volume",
            "create",
            "trim",
            "--size",
            "64Mi",
            "--sector-size",
            sector,
            "--label",
            "storageos.com/encryption=true",
        ]))
        .unwrap();
        let data = env.volume_dir(v["id"].as_str().unwrap()).join("data");
        let img = env.mount_bg("trim", "trim");
        let lo = Loop::attach(&img, &[]);
        // Fill 32 MiB with data through the loop device.
        fs::write(env.path("fill"), pseudo_random(3, 32 << 20)).unwrap();
        sh(&format!(
            "dd if={} of={} bs=1M oflag=direct status=none",
            env.path("fill").display(),
            lo.dev
        ));
        let before = allocated(&data);
        assert!(before >= 32 << 20, "written data is allocated: {before}");

        // Discard 16 MiB in the middle, with an unaligned-to-4096 start to exercise the
        // partial-sector path on the 512-byte loop device.
        sh(&format!("blkdiscard -o 4194816 -l 16777216 {}", lo.dev));
        let after = allocated(&data);
        assert!(
            after + (15 << 20) <= before,
            "backing blocks freed: before {before}, after {after}"
        );

        let mut dev = fs::File::open(&lo.dev).unwrap();
        let mut all = Vec::new();
        dev.read_to_end(&mut all).unwrap();
        let fill = pseudo_random(3, 32 << 20);
        let (start, end) = (4194816usize, 4194816usize + 16777216);
        assert!(
            all[start..end].iter().all(|&b| b == 0),
            "discarded range reads as zeros"
        );
        assert_eq!(
            &all[..start],
            &fill[..start],
            "data before the range intact"
        );
        assert_eq!(
            &all[end..32 << 20],
            &fill[end..],
            "data after the range intact"
        );
        drop(dev);
        lo.detach();
        env.ok(&["umount", "trim"]);
    }
}
