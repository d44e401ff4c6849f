//! `serve --listen ADDR`: a small HTTP/1.1 responder on a thread of its own for probes and
//! scrapes: `/healthz` (the process and its FUSE session are alive), `/readyz` (keys synced
//! and the tree mounted; 503 with the reason otherwise) and `/metrics` (Prometheus text
//! exposition format, names prefixed `storageos_fuse_`).
//!
//! Hand-rolled over `std::net::TcpListener` on purpose: three GET endpoints, one request
//! per connection (`Connection: close`), no TLS; a web framework would bring an async
//! runtime into the FUSE process for nothing. Requests are answered one at a time, each
//! bounded by a short socket timeout, so a stuck client cannot hold the endpoint long.
//!
//! Owns the endpoint and the gauges computed at scrape time; the I/O counters are
//! `fuse::metrics`', kept on the request path.

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::mounts;
use crate::error::{Error, Result};
use crate::fuse::VolumeTable;
use crate::fuse::metrics::{self, family, label_value};
use crate::keys::Keyring;
use crate::manager::KeyStatus;
use crate::volume::VolumeStore;

/// Per-connection read/write timeout.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the accept loop looks at the stop flag.
const POLL: Duration = Duration::from_millis(100);
/// Largest request head read.
const MAX_HEAD: usize = 8192;

/// What the endpoint reports on.
pub struct Status {
    pub store: VolumeStore,
    pub keyring: Arc<Keyring>,
    pub table: Arc<VolumeTable>,
    pub mountpoint: PathBuf,
    /// True from the mount until the FUSE session ends.
    pub session_alive: Arc<AtomicBool>,
    /// True once the first scan is done and requests are being served.
    pub serving: Arc<AtomicBool>,
}

/// Binds `--listen ADDR` (before anything is mounted, so a bad address changes nothing).
pub fn bind(addr: &str) -> Result<TcpListener> {
    let sa: SocketAddr = addr.parse().map_err(|_| {
        Error::Usage(format!(
            "--listen {addr} is not an address: use IP:PORT, e.g. 0.0.0.0:9402 or 127.0.0.1:9402"
        ))
    })?;
    TcpListener::bind(sa).map_err(|e| {
        let hint = if e.kind() == ErrorKind::AddrInUse {
            " (another process listens there: stop it or choose another --listen port)"
        } else {
            ""
        };
        Error::Io(format!("cannot listen on {sa}: {e}{hint}"))
    })
}

/// The running endpoint; stops (and joins its thread) on drop.
pub struct HttpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves the endpoints on `listener` until the returned handle is dropped.
pub fn spawn(listener: TcpListener, status: Status) -> Result<HttpServer> {
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Io(format!("cannot set up the --listen socket: {e}")))?;
    if let Ok(a) = listener.local_addr() {
        tracing::info!("health and metrics on http://{a}/ (/healthz, /readyz, /metrics)");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            while !stop2.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = handle(stream, &status) {
                            tracing::debug!("http client: {e}");
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
                    Err(e) => {
                        tracing::warn!("http accept: {e}");
                        std::thread::sleep(POLL);
                    }
                }
            }
        })
        .map_err(|e| Error::Io(format!("cannot start the http thread: {e}")))?;
    Ok(HttpServer {
        stop,
        thread: Some(thread),
    })
}

fn handle(mut stream: TcpStream, status: &Status) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return respond(
                &mut stream,
                431,
                "text/plain",
                "request head too large\n",
                false,
            );
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(&mut stream, 405, "text/plain", "only GET\n", false);
    }
    let path = target.split('?').next().unwrap_or("");
    let (code, ctype, body) = route(path, status);
    respond(&mut stream, code, ctype, &body, head_only)
}

fn respond(
    stream: &mut TcpStream,
    code: u16,
    ctype: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(body);
    }
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

/// Answers one path: status code, content type, body.
pub fn route(path: &str, s: &Status) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        "/healthz" => {
            if s.session_alive.load(Ordering::Acquire) {
                (200, TEXT, "ok\n".into())
            } else {
                (503, TEXT, "FUSE session not running\n".into())
            }
        }
        "/readyz" => match not_ready(s) {
            None => (200, TEXT, "ready\n".into()),
            Some(why) => (503, TEXT, format!("not ready: {why}\n")),
        },
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            render_metrics(s),
        ),
        _ => (
            404,
            TEXT,
            "not found: try /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

fn not_ready(s: &Status) -> Option<String> {
    if !s.keyring.is_synced() {
        return Some("keys not synced yet from the key source".into());
    }
    if !s.session_alive.load(Ordering::Acquire) {
        return Some("FUSE session not running".into());
    }
    if !s.serving.load(Ordering::Acquire) {
        return Some("first scan of the volumes not done yet".into());
    }
    match mounts::mount_at(&s.mountpoint) {
        Ok(Some(m)) if m.fstype.starts_with("fuse") => None,
        Ok(_) => Some(format!("{} is not mounted", s.mountpoint.display())),
        Err(e) => Some(format!("cannot read the mount table: {e}")),
    }
}

/// The whole `/metrics` page.
pub fn render_metrics(s: &Status) -> String {
    let mut out = String::with_capacity(8192);
    let mut served = s.table.volumes();
    served.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let labelled: Vec<(String, &metrics::VolumeStats)> = served
        .iter()
        .map(|v| (format!("{}/{}", v.namespace, v.name), &v.stats))
        .collect();
    metrics::render_volumes(&mut out, &labelled);
    metrics::render_latency(&mut out, &s.table.metrics);

    let name = "storageos_fuse_served_volumes";
    family(&mut out, name, "gauge", "Volumes served in the FUSE tree.");
    let _ = writeln!(out, "{name} {}", served.len());

    let name = "storageos_fuse_volume_key_status";
    family(
        &mut out,
        name,
        "gauge",
        "Key status of each volume on the node (1 for its current status).",
    );
    if let Ok((vols, _)) = s.store.list() {
        let keys = s.keyring.snapshot();
        for meta in &vols {
            let now = KeyStatus::of(meta, &keys);
            let vol = label_value(&format!("{}/{}", meta.namespace, meta.name));
            for st in [
                KeyStatus::Available,
                KeyStatus::Missing,
                KeyStatus::Mismatch,
                KeyStatus::NotEncrypted,
            ] {
                let _ = writeln!(
                    out,
                    "{name}{{volume=\"{vol}\",status=\"{}\"}} {}",
                    st.as_str(),
                    u8::from(st == now)
                );
            }
        }
    }

    let name = "storageos_fuse_keys_synced";
    family(
        &mut out,
        name,
        "gauge",
        "1 once the key source delivered its keys, else 0.",
    );
    let _ = writeln!(out, "{name} {}", u8::from(s.keyring.is_synced()));

    let name = "storageos_fuse_key_watch_restarts_total";
    family(
        &mut out,
        name,
        "counter",
        "Times the key source's watch failed and was restarted.",
    );
    let _ = writeln!(out, "{name} {}", s.keyring.restarts());
    out
}
