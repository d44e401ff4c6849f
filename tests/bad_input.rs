//! Bad input: every broken field-case Secret file is refused on its own (named, with what is
//! wrong) while the good keys beside it still load, and a table of misuse where each
//! command fails with one `error:` line, a non-zero exit, and the data and keys
//! directories byte-for-byte unchanged.

mod common;

use std::fs;
use std::path::Path;
use std::process::Output;

use base64::Engine as _;
use common::{Env, error_line, tree_state};

const ENC: &str = "storageos.com/encryption=true";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every base64 value in a manifest file (lines `  item: VALUE`), to prove none is echoed.
fn base64_values(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().split_once(": ").map(|(_, v)| v.trim().to_string()))
        .filter(|v| {
            v.len() >= 16
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
        })
        .collect()
}

#[test]
fn every_bad_field_case_is_refused_alone_and_good_keys_still_load() {
    let bad_dir = common::fixtures().join("cases/bad");
    let mut cases: Vec<_> = fs::read_dir(&bad_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 9,
        "field cases missing under {}",
        bad_dir.display()
    );
    for case in cases {
        let env = Env::new();
        let id = env.inspect_created("default/good", &["--size", "1Mi", "--label", ENC]);
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let placed = env.keys.join(&name);
        fs::copy(&case, &placed).unwrap();
        let data_before = tree_state(&env.data);
        let keys_before = tree_state(&env.keys);

        let o = env.run(&["keys", "status"]);
        let err = stderr(&o);
        assert!(o.status.success(), "{name}: keys status failed:\n{err}");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.lines()
                .any(|l| l.contains(&id) && l.trim_end().ends_with("available")),
            "{name}: the good vol-key beside it must still load:\n{out}"
        );
        let warning: Vec<&str> = err
            .lines()
            .filter(|l| l.contains(placed.to_str().unwrap()))
            .collect();
        assert_eq!(
            warning.len(),
            1,
            "{name}: one warning naming the file, stderr:\n{err}"
        );
        assert!(!err.contains("panicked"), "{name}: {err}");
        let what = warning[0]
            .split(placed.to_str().unwrap())
            .nth(1)
            .unwrap_or("");
        assert!(
            what.trim_start_matches(':').trim().len() > 5,
            "{name}: the warning must say what is wrong: {}",
            warning[0]
        );
        let text = String::from_utf8_lossy(&fs::read(&case).unwrap()).into_owned();
        for v in base64_values(&text) {
            assert!(
                !err.contains(&v),
                "{name}: a value from the file was echoed: {err}"
            );
        }

        let v = env.inspect(&id);
        assert_eq!(v["key_status"], "available", "{name}");
        // Mount still works with the bad file beside the good keys.
        assert_eq!(
            tree_state(&env.data),
            data_before,
            "{name}: data dir changed"
        );
        assert_eq!(
            tree_state(&env.keys),
            keys_before,
            "{name}: keys dir changed"
        );
        eprintln!("{name}: {}", warning[0]);
    }
}

/// One misuse: runs `args`, expects one `error:` line containing `expect` (lower-cased
/// comparison), a non-zero exit, and both trees unchanged.
fn refused(env: &Env, args: &[&str], expect: &str) -> String {
    let data_before = tree_state(&env.data);
    let keys_before = tree_state(&env.keys);
    let data_existed = env.data.exists();
    let o = env.run(args);
    assert!(!o.status.success(), "{args:?} unexpectedly succeeded");
    let line = error_line(&o);
    assert!(
        line.to_lowercase().contains(&expect.to_lowercase()),
        "{args:?}: error line should mention {expect:?}: {line}"
    );
    assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
    assert_eq!(
        tree_state(&env.data),
        data_before,
        "{args:?}: data dir changed"
    );
    assert_eq!(
        tree_state(&env.keys),
        keys_before,
        "{args:?}: keys dir changed"
    );
    assert_eq!(
        env.data.exists(),
        data_existed,
        "{args:?}: created the data dir"
    );
    line
}

#[test]
fn misuse_on_a_fresh_node_touches_nothing() {
    let env = Env::new();
    let long = "a".repeat(300);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["volume", "create", ".."], ".."),
        (vec!["volume", "create", "a..b"], "a..b"),
        (vec!["volume", "create", "default/../x"], "default/../x"),
        (vec!["volume", "create", "a/b/c"], "a/b/c"),
        (vec!["volume", "create", "/abs"], "/abs"),
        (vec!["volume", "create", "Data"], "Data"),
        (vec!["volume", "create", "Prod/data"], "Prod"),
        (vec!["volume", "create", &long], "253"),
        (vec!["volume", "create", "v", "--size", "0"], "size"),
        (vec!["volume", "create", "v", "--size", "lots"], "lots"),
        (vec!["volume", "create", "v", "--size", "-1Gi"], "-1Gi"),
        (vec!["volume", "create", "v", "--size", "1Ei"], "size"),
        (
            vec!["volume", "create", "v", "--sector-size", "1024"],
            "1024",
        ),
        (
            vec![
                "volume",
                "create",
                "v",
                "--label",
                "storageos.com/encryption=True",
            ],
            "storageos.com/encryption",
        ),
        (
            vec![
                "volume",
                "create",
                "v",
                "--label",
                "storageos.com/encryption=yes",
            ],
            "storageos.com/encryption",
        ),
        (
            vec![
                "volume",
                "create",
                "v",
                "--label",
                "storageos.com/encryption=1",
            ],
            "storageos.com/encryption",
        ),
        (
            vec!["volume", "create", "v", "--label", "noequals"],
            "noequals",
        ),
        (vec!["volume", "inspect", "nope"], "nope"),
        (vec!["volume", "delete", "nope"], "nope"),
        (vec!["volume", "update", "nope", "--label", "a=b"], "nope"),
        (vec!["mount", "nope", "--background"], "nope"),
        (
            vec!["mount", "nope", "--backing-io", "sideways"],
            "--backing-io",
        ),
        (vec!["umount", "nope"], "nope"),
    ];
    for (args, expect) in &cases {
        refused(&env, args, expect);
    }
    assert!(
        !env.data.exists() && !env.keys.exists(),
        "a refused command created a directory"
    );
}

#[test]
fn size_larger_than_the_backing_file_system_allows_leaves_nothing() {
    if !common::require_real(&["mkfs.ext4"]) {
        return;
    }
    // ext4 with 4 KiB blocks caps files at 16 TiB: a sparse 100Ti volume cannot exist.
    let env = Env::new();
    let fs_img = env.path("small.ext4");
    common::sh(&format!(
        "truncate -s 64M {0} && mkfs.ext4 -q -F {0}",
        fs_img.display()
    ));
    fs::create_dir_all(&env.data).unwrap();
    common::sh(&format!(
        "mount -o loop {} {}",
        fs_img.display(),
        env.data.display()
    ));
    let lost_found = tree_state(&env.data);
    let line = refused(
        &env,
        &["volume", "create", "big", "--size", "100Ti", "--label", ENC],
        "100",
    );
    assert!(line.contains("file system"), "names the cause: {line}");
    assert_eq!(tree_state(&env.data), lost_found);
    assert!(
        !env.data.join("volumes").exists(),
        "a refused create left volumes/ behind"
    );
    assert!(!env.keys.exists(), "a refused create made keys");
}

#[test]
fn misuse_of_existing_volumes_touches_nothing() {
    let env = Env::new();
    let enc = env.inspect_created("enc", &["--size", "1Mi", "--label", ENC]);
    env.ok(&[
        "volume",
        "create",
        "plain",
        "--size",
        "1Mi",
        "--label",
        "tier=gold",
    ]);
    refused(
        &env,
        &["volume", "create", "enc", "--label", ENC],
        "already exists",
    );
    refused(
        &env,
        &["volume", "create", "default/plain"],
        "already exists",
    );
    refused(
        &env,
        &[
            "volume",
            "update",
            "enc",
            "--label",
            "storageos.com/encryption=false",
        ],
        "storageos.com/encryption",
    );
    refused(
        &env,
        &[
            "volume",
            "update",
            "enc",
            "--label",
            "storageos.com/encryption=",
        ],
        "storageos.com/encryption",
    );
    refused(
        &env,
        &[
            "volume",
            "update",
            "plain",
            "--label",
            "storageos.com/encryption=true",
        ],
        "storageos.com/encryption",
    );
    refused(
        &env,
        &["volume", "update", "enc", "--label", "Bad Key=x"],
        "bad key",
    );
    refused(&env, &["volume", "update", "enc"], "--label");
    refused(
        &env,
        &[
            "volume",
            "inspect",
            // The id with its first digit changed: well-formed, but no such volume.
            &format!(
                "{}{}",
                if enc.starts_with('0') { '1' } else { '0' },
                &enc[1..]
            ),
        ],
        "not found",
    );
    refused(&env, &["umount", "enc"], "not mounted");
    refused(
        &env,
        &["umount", env.path("nowhere.img").to_str().unwrap()],
        "not mounted",
    );
}

#[test]
fn served_volumes_cannot_be_deleted_or_served_twice() {
    if !common::require_real(&[]) {
        return;
    }
    let env = Env::new();
    env.inspect_created("enc", &["--size", "1Mi", "--label", ENC]);
    let img = env.mount_bg("enc", "enc");
    let line = refused(&env, &["volume", "delete", "enc"], "served");
    assert!(line.contains("umount"), "says the way out: {line}");
    let second = env.path("second.img");
    let line = refused(
        &env,
        &[
            "mount",
            "enc",
            "--at",
            second.to_str().unwrap(),
            "--background",
        ],
        "already served",
    );
    assert!(line.contains("umount"), "{line}");
    // Foreground too: the flock is what refuses, not the background parent's checks.
    refused(
        &env,
        &["mount", "enc", "--at", second.to_str().unwrap()],
        "already served",
    );
    assert!(fs::metadata(&img).is_ok(), "the first server still serves");
    env.ok(&["umount", "enc"]);
    env.ok(&["volume", "delete", "enc"]);
}

fn vol_key_path(env: &Env, id: &str) -> std::path::PathBuf {
    env.keys.join(format!("vol-key.{id}.yaml"))
}

/// Replaces item `field` of a vol-key manifest file with `value` (base64).
fn set_item(path: &Path, field: &str, value: &str) {
    let text = fs::read_to_string(path).unwrap();
    let prefix = format!("  {field}: ");
    let mut found = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with(&prefix) {
                found = true;
                format!("{prefix}{value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(found, "no {field} in {}", path.display());
    fs::write(path, out.join("\n") + "\n").unwrap();
}

fn item(path: &Path, field: &str) -> Vec<u8> {
    let text = fs::read_to_string(path).unwrap();
    let prefix = format!("  {field}: ");
    let v = text.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .unwrap()
}

fn flip(b: &[u8], i: usize) -> Vec<u8> {
    let mut v = b.to_vec();
    v[i] ^= 0x01;
    v
}

#[test]
fn vol_keys_that_do_not_match_are_refused() {
    let env = Env::new();
    for (case, field, expect) in [
        ("digest", "digest", "digest"),
        ("vuk", "vuk", "wrapped key"),
        ("nsk", "nsk", "wrapped key"),
    ] {
        let name = format!("v-{case}");
        let id = env.inspect_created(&name, &["--size", "1Mi", "--label", ENC]);
        let p = vol_key_path(&env, &id);
        set_item(&p, field, &b64(&flip(&item(&p, field), 3)));
        assert_eq!(env.inspect(&id)["key_status"], "mismatch", "{case}");
        let line = refused(
            &env,
            &[
                "mount",
                &name,
                "--at",
                env.path(&format!("{name}.img")).to_str().unwrap(),
            ],
            &format!("vol-key.{id}"),
        );
        assert!(line.to_lowercase().contains(expect), "{case}: {line}");
        assert!(line.contains("restore"), "{case}: says the way out: {line}");
        refused(
            &env,
            &[
                "mount",
                &name,
                "--background",
                "--at",
                env.path(&format!("{name}.img")).to_str().unwrap(),
            ],
            expect,
        );
    }
}

/// A vol-key whose VUK is a valid RFC 3394 wrap (made with the product's own hierarchy
/// through the public crates) of a volume key with equal XTS halves.
#[test]
fn equal_xts_key_halves_are_refused() {
    use hkdf::Hkdf;
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::Sha256;
    let env = Env::new();
    let id = env.inspect_created("eq", &["--size", "1Mi", "--label", ENC]);
    let p = vol_key_path(&env, &id);
    let nsk = item(&p, "nsk");
    let iv = item(&p, "iv");
    let hk = Hkdf::<Sha256>::new(Some(&iv), &nsk);
    let mut kek = [0u8; 32];
    hk.expand(format!("storageos-fuse vuk v1 {id}").as_bytes(), &mut kek)
        .unwrap();
    let vk = [0x5au8; 64];
    let kw = <aes_kw::KwAes256 as hmac::KeyInit>::new((&kek).into());
    let mut vuk = [0u8; 72];
    kw.wrap_key(&vk, &mut vuk).unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&vk).unwrap();
    mac.update(b"storageos-fuse key digest v1");
    let digest: [u8; 32] = mac.finalize().into_bytes().into();
    set_item(&p, "vuk", &b64(&vuk));
    set_item(&p, "digest", &b64(&digest));
    // The volume's own record agrees, so only the equal-halves rule can refuse it.
    let meta_path = env.volume_dir(&id).join("volume.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&fs::read(&meta_path).unwrap()).unwrap();
    meta["encryption"]["key_digest"] = b64(&digest).into();
    fs::write(&meta_path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();

    assert_eq!(env.inspect(&id)["key_status"], "mismatch");
    let line = refused(
        &env,
        &["mount", "eq", "--at", env.path("eq.img").to_str().unwrap()],
        &format!("vol-key.{id}"),
    );
    assert!(line.contains("equal"), "names the reason: {line}");
    assert!(
        !line.contains(&b64(&vuk)) && !line.contains(&hex::encode(vk)),
        "{line}"
    );
    assert!(
        !env.path("eq.img").exists(),
        "no mount point made for a refused key"
    );
}
