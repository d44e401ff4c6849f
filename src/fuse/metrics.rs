//! I/O metrics of a FUSE view: per-volume byte, operation and error counters and a
//! latency histogram per operation kind, all plain atomics updated with relaxed ordering
//! on the request path (no locks, no allocation).
//!
//! Owns the counters and their Prometheus text rendering; does not own the HTTP endpoint
//! (`daemon::http`) nor which volumes exist (`VolumeTable`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters of one served volume.
#[derive(Default)]
pub struct VolumeStats {
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub read_ops: AtomicU64,
    pub write_ops: AtomicU64,
    pub errors: AtomicU64,
}

impl VolumeStats {
    pub fn read(&self, bytes: usize) {
        self.read_ops.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn write(&self, bytes: usize) {
        self.write_ops.fetch_add(1, Ordering::Relaxed);
        self.write_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// The request kinds timed by the latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Fsync,
    Fallocate,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Read, Op::Write, Op::Fsync, Op::Fallocate];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Fsync => "fsync",
            Op::Fallocate => "fallocate",
        }
    }
}

/// Upper bounds of the latency buckets, in seconds (`+Inf` is implicit).
pub const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A fixed-bucket histogram: one counter per bucket (non-cumulative; summed when
/// rendered), the count and the sum in nanoseconds.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Latency histograms of one filesystem view, by operation.
#[derive(Default)]
pub struct IoMetrics {
    latency: [Histogram; 4],
}

impl IoMetrics {
    pub fn latency(&self, op: Op) -> &Histogram {
        &self.latency[op as usize]
    }
}

/// Escapes a label value for the text exposition format.
pub fn label_value(s: &str) -> String {
    s.replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

/// Writes `# HELP` and `# TYPE` of one metric family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders the per-volume counters of `(label, stats)` pairs.
pub fn render_volumes(out: &mut String, vols: &[(String, &VolumeStats)]) {
    type Get = fn(&VolumeStats) -> &AtomicU64;
    let families: [(&str, &str, Get); 5] = [
        (
            "storageos_fuse_read_bytes_total",
            "Bytes read from the volume image.",
            |s| &s.read_bytes,
        ),
        (
            "storageos_fuse_write_bytes_total",
            "Bytes written to the volume image.",
            |s| &s.write_bytes,
        ),
        (
            "storageos_fuse_read_ops_total",
            "Read requests served on the volume image.",
            |s| &s.read_ops,
        ),
        (
            "storageos_fuse_write_ops_total",
            "Write requests served on the volume image.",
            |s| &s.write_ops,
        ),
        (
            "storageos_fuse_errors_total",
            "Requests on the volume image answered with an error.",
            |s| &s.errors,
        ),
    ];
    for (name, help, get) in families {
        family(out, name, "counter", help);
        for (label, stats) in vols {
            let v = get(stats).load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{volume=\"{}\"}} {v}", label_value(label));
        }
    }
}

/// Renders the latency histogram family.
pub fn render_latency(out: &mut String, m: &IoMetrics) {
    let name = "storageos_fuse_request_duration_seconds";
    family(
        out,
        name,
        "histogram",
        "Time to serve a FUSE request on a volume image, by operation.",
    );
    for op in Op::ALL {
        let h = m.latency(op);
        let op = op.as_str();
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += h.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{op=\"{op}\",le=\"{b}\"}} {cumulative}");
        }
        cumulative += h.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        // Count and buckets are separate atomics: report the bucket total as the count so
        // a scrape racing a request stays consistent.
        let _ = writeln!(out, "{name}_bucket{{op=\"{op}\",le=\"+Inf\"}} {cumulative}");
        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{op=\"{op}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{op=\"{op}\"}} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_matches() {
        let m = IoMetrics::default();
        m.latency(Op::Read).observe(Duration::from_micros(50));
        m.latency(Op::Read).observe(Duration::from_millis(3));
        m.latency(Op::Read).observe(Duration::from_secs(10));
        let mut s = String::new();
        render_latency(&mut s, &m);
        assert!(s.contains("_bucket{op=\"read\",le=\"0.0001\"} 1\n"), "{s}");
        assert!(s.contains("_bucket{op=\"read\",le=\"0.005\"} 2\n"), "{s}");
        assert!(s.contains("_bucket{op=\"read\",le=\"2.5\"} 2\n"), "{s}");
        assert!(s.contains("_bucket{op=\"read\",le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("_count{op=\"read\"} 3\n"), "{s}");
        assert!(s.contains("_count{op=\"write\"} 0\n"), "{s}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }
}
