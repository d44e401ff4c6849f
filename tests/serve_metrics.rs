//! `serve --listen ADDR`: /healthz, /readyz and /metrics scraped from a real `serve` while
//! real I/O goes through its FUSE tree; the exposition format is parsed strictly.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::kube_api::{History, KubeApi};
use common::serve::{Serve, wait_until};
use common::{Env, pseudo_random};

const ENC: &str = "storageos.com/encryption=true";
const MIB: usize = 1 << 20;

fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// One GET; returns (status code, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to --listen address");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP head and body");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .unwrap();
    assert_eq!(body.len(), len, "Content-Length matches the body");
    (code, body.to_string())
}

type Samples = BTreeMap<String, f64>;

/// Parses the text exposition format strictly: every line is `# HELP name text`,
/// `# TYPE name kind` or a sample `name{k="v",...} value` / `name value`, each sample of a
/// family declared by HELP and TYPE before it. Keys are `name{labels}` as printed.
fn parse(text: &str) -> Samples {
    let mut help = HashSet::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Samples::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').expect("HELP has text");
            assert!(valid_name(name) && !doc.is_empty(), "{line}");
            help.insert(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(help.contains(name), "TYPE after HELP: {line}");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect("labels close");
                // k="v" pairs, values with \\, \" and \n escapes only.
                let mut rest = labels;
                while !rest.is_empty() {
                    let (k, after) = rest.split_once("=\"").expect("label k=\"v\"");
                    assert!(valid_name(k), "label name in {line}");
                    let mut chars = after.char_indices();
                    let end = loop {
                        match chars.next().expect("label value closes") {
                            (_, '\\') => {
                                let (_, e) = chars.next().unwrap();
                                assert!(matches!(e, '\\' | '"' | 'n'), "escape in {line}");
                            }
                            (i, '"') => break i,
                            _ => {}
                        }
                    };
                    rest = &after[end + 1..];
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
                name
            }
            None => series,
        };
        assert!(valid_name(name), "{line}");
        let family = types
            .keys()
            .find(|f| {
                name == f.as_str()
                    || (types[*f] == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name == format!("{f}{s}")))
            })
            .unwrap_or_else(|| panic!("sample without HELP/TYPE: {line}"));
        assert!(name.starts_with("storageos_fuse_"), "{family}");
        assert!(
            out.insert(series.to_string(), value).is_none(),
            "duplicate {series}"
        );
    }
    out
}

fn scrape(addr: &str) -> Samples {
    let (code, body) = get(addr, "/metrics");
    assert_eq!(code, 200);
    parse(&body)
}

fn val(m: &Samples, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("{key} missing from /metrics"))
}

fn vol(metric: &str, volume: &str) -> String {
    format!("{metric}{{volume=\"{volume}\"}}")
}

#[test]
fn metrics_count_real_io_per_volume_while_probes_answer() {
    if !common::require_real(&[]) {
        return;
    }
    let env = Env::new();
    env.ok(&["volume", "create", "apps/idle", "--size", "16Mi"]);
    env.ok(&[
        "volume",
        "create",
        "secure/vault",
        "--size",
        "16Mi",
        "--label",
        ENC,
    ]);
    let addr = free_addr();
    let serve = Serve::start_args(&env, &[], &["--listen", &addr]);

    assert_eq!(get(&addr, "/healthz"), (200, "ok\n".to_string()));
    assert!(
        wait_until(Duration::from_secs(10), || get(&addr, "/readyz").0 == 200),
        "/readyz once keys synced and the tree is mounted: {:?}",
        get(&addr, "/readyz")
    );
    assert_eq!(get(&addr, "/nope").0, 404);

    let before = scrape(&addr);
    assert_eq!(val(&before, "storageos_fuse_served_volumes"), 2.0);
    for (v, status) in [
        ("secure/vault", "available"),
        ("apps/idle", "not-encrypted"),
    ] {
        let key = format!("storageos_fuse_volume_key_status{{volume=\"{v}\",status=\"{status}\"}}");
        assert_eq!(val(&before, &key), 1.0, "{key}");
        let missing =
            format!("storageos_fuse_volume_key_status{{volume=\"{v}\",status=\"missing\"}}");
        assert_eq!(val(&before, &missing), 0.0, "{missing}");
    }
    assert_eq!(val(&before, "storageos_fuse_key_watch_restarts_total"), 0.0);

    // Write 16 MiB in 1 MiB writes on a thread while scraping: every scrape parses and
    // the counters never go back.
    let image = serve.path("secure/vault");
    let writer = {
        let image = image.clone();
        std::thread::spawn(move || {
            let f = fs::OpenOptions::new().write(true).open(&image).unwrap();
            for i in 0..16 {
                f.write_all_at(&pseudo_random(i, MIB), (i as usize * MIB) as u64)
                    .unwrap();
            }
            f.sync_all().unwrap();
        })
    };
    let wb = vol("storageos_fuse_write_bytes_total", "secure/vault");
    let mut last = val(&before, &wb);
    let mut scrapes = 0;
    while !writer.is_finished() {
        let m = scrape(&addr);
        assert!(val(&m, &wb) >= last, "counter went back");
        last = val(&m, &wb);
        scrapes += 1;
    }
    writer.join().unwrap();
    assert!(scrapes >= 1);

    let mut back = vec![0u8; 4 * MIB];
    fs::File::open(&image)
        .unwrap()
        .read_exact_at(&mut back, 0)
        .unwrap();
    assert!(back[..MIB] == pseudo_random(0, MIB)[..]);

    let after = scrape(&addr);
    let delta = |k: &str| val(&after, k) - val(&before, k);
    let v = "secure/vault";
    assert!(
        delta(&vol("storageos_fuse_write_bytes_total", v)) >= (16 * MIB) as f64,
        "write bytes: {}",
        delta(&vol("storageos_fuse_write_bytes_total", v))
    );
    assert!(
        delta(&vol("storageos_fuse_read_bytes_total", v)) >= (4 * MIB) as f64,
        "read bytes: {}",
        delta(&vol("storageos_fuse_read_bytes_total", v))
    );
    let wops = delta(&vol("storageos_fuse_write_ops_total", v));
    let rops = delta(&vol("storageos_fuse_read_ops_total", v));
    assert!(wops >= 16.0, "write ops {wops}");
    assert!(rops >= 4.0, "read ops {rops}");
    assert_eq!(delta(&vol("storageos_fuse_errors_total", v)), 0.0);
    // The idle volume saw none of it.
    for m in [
        "storageos_fuse_write_bytes_total",
        "storageos_fuse_read_bytes_total",
        "storageos_fuse_write_ops_total",
    ] {
        assert_eq!(delta(&vol(m, "apps/idle")), 0.0, "{m} of apps/idle");
    }
    // Histogram: every write request observed; buckets cumulative, +Inf equals count.
    let h = "storageos_fuse_request_duration_seconds";
    let count = |op: &str| format!("{h}_count{{op=\"{op}\"}}");
    assert!(delta(&count("write")) >= wops, "write latency count");
    assert!(delta(&count("read")) >= rops, "read latency count");
    assert!(delta(&count("fsync")) >= 1.0, "fsync latency count");
    assert!(val(&after, &format!("{h}_sum{{op=\"write\"}}")) > 0.0);
    assert_eq!(
        val(&after, &format!("{h}_bucket{{op=\"write\",le=\"+Inf\"}}")),
        val(&after, &count("write"))
    );
    let buckets: Vec<f64> = after
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{h}_bucket{{op=\"write\"")))
        .map(|(_, v)| *v)
        .collect();
    assert!(buckets.len() >= 10);
    let le_small = val(&after, &format!("{h}_bucket{{op=\"write\",le=\"0.001\"}}"));
    let le_big = val(&after, &format!("{h}_bucket{{op=\"write\",le=\"1\"}}"));
    assert!(le_small <= le_big, "cumulative buckets");

    drop(serve);
}

#[test]
fn bad_listen_address_is_refused_before_mounting() {
    if !common::require_real(&[]) {
        return;
    }
    let env = Env::new();
    let dir = env.path("served");
    let err = env.fails(&[
        "serve",
        "--mountpoint",
        dir.to_str().unwrap(),
        "--listen",
        "localhost-9402",
    ]);
    assert!(err.contains("--listen localhost-9402"), "{err}");
    assert!(
        err.contains("0.0.0.0:9402"),
        "says what an address looks like: {err}"
    );
    assert!(!dir.exists(), "nothing created");

    // A port already taken: refused, naming the address.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = env.fails(&[
        "serve",
        "--mountpoint",
        dir.to_str().unwrap(),
        "--listen",
        &addr,
    ]);
    assert!(err.contains(&addr) && err.contains("--listen"), "{err}");
    assert!(!dir.exists(), "nothing created");
}

#[test]
fn readyz_waits_for_the_kube_key_source_and_restarts_are_counted() {
    if !common::require_real(&[]) {
        return;
    }
    let env = Env::new();
    let mut api = KubeApi::start();
    let kubeconfig = env.path("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    // The API server is down when serve starts: the watch keeps failing and restarting.
    api.stop();
    let addr = free_addr();
    let vars: [(&str, &Path); 2] = [
        ("STORAGEOS_FUSE_KEY_SOURCE", Path::new("kube")),
        ("KUBECONFIG", &kubeconfig),
    ];
    let serve = Serve::start_args(&env, &vars, &["--listen", &addr]);

    assert_eq!(get(&addr, "/healthz").0, 200, "alive without keys");
    let (code, body) = get(&addr, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("keys not synced"), "{body}");
    let m = scrape(&addr);
    assert_eq!(val(&m, "storageos_fuse_keys_synced"), 0.0);
    assert!(
        val(&m, "storageos_fuse_key_watch_restarts_total") >= 1.0,
        "failed watches are counted"
    );

    api.start_again(History::Keep);
    assert!(
        wait_until(Duration::from_secs(60), || get(&addr, "/readyz").0 == 200),
        "ready once the keys arrive: {:?}\n{}",
        get(&addr, "/readyz"),
        serve.log_text()
    );
    assert_eq!(val(&scrape(&addr), "storageos_fuse_keys_synced"), 1.0);
    drop(serve);
}
