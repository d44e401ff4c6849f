//! A small Kubernetes API server for tests: real HTTP/1.1 on 127.0.0.1, following the real
//! API for what kube-rs and kubectl use on Secrets here, so the product and the real
//! `kubectl` binary can be driven against it.
//!
//! What it does like the real server:
//! - discovery: `/version`, `/api` (APIVersions), `/apis` (empty APIGroupList),
//!   `/api/v1` (APIResourceList with `secrets` and `namespaces`); aggregated discovery is
//!   not offered, so kubectl falls back to these legacy documents as it does for old servers;
//! - Secrets: list, get, create, delete, watch, per namespace (and list across namespaces),
//!   with a cluster-wide `resourceVersion` counter; `stringData` merged into `data` on
//!   create; server fields (`uid`, `resourceVersion`, `creationTimestamp`, `managedFields`)
//!   set on create; `as=Table` responses for `kubectl get` (columns NAME, TYPE, DATA, AGE);
//!   equality `labelSelector`s and `fieldSelector=metadata.name=...`;
//! - watch: `ADDED`/`DELETED` events after the given `resourceVersion` (synthetic `ADDED`
//!   for every object when it is empty or `0`), `BOOKMARK`s when asked for, the
//!   `k8s.io/initial-events-end` bookmark for `sendInitialEvents=true`, `timeoutSeconds`,
//!   and for a resourceVersion older than the kept history: HTTP 200 then one `ERROR`
//!   event with a `Status` 410 `Expired` ("too old resource version"), as the real server;
//! - errors as `Status` bodies: 404 NotFound, 409 AlreadyExists, 400 BadRequest for a
//!   create carrying `metadata.resourceVersion` ("resourceVersion should not be set on
//!   objects to be created"), for a namespace mismatch and for data that is not base64,
//!   422 Invalid for a missing name or one that is not a DNS-1123 subdomain;
//! - restart: `stop`/`start_again`/`restart` drop every connection (open watches included)
//!   and refuse connections while stopped; history can be kept or lost (compaction), in
//!   which case watches from an older resourceVersion get the 410 above.
//!
//! What it leaves out: authentication and authorization (no TLS, no tokens, no RBAC),
//! every resource but Secrets (and a stub Namespace read), update/patch/apply, `dryRun`,
//! `generateName`, pagination (`limit` is accepted and everything comes in one page),
//! `resourceVersionMatch` semantics on list (lists always serve the latest state),
//! protobuf and YAML request bodies (JSON only), HTTP/2, admission, field validation
//! beyond unknown top-level and metadata fields (`fieldValidation=Strict`), the 1 MiB size limit, Secret type-specific validation, and OpenAPI beyond the
//! one v3 operation kubectl's validation check reads (`/openapi/v2` is 404).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

struct WatchEvent {
    rv: u64,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// (namespace, name) -> the stored object, server fields included.
    secrets: BTreeMap<(String, String), Value>,
    history: Vec<WatchEvent>,
    /// Watches from a resourceVersion below this get 410 Gone.
    oldest: u64,
    /// Bumped on every stop: connections of an older epoch close.
    epoch: u64,
    running: bool,
    requests: Vec<String>,
    /// Creates of names with this prefix wait until `.1` of them are in flight, so racing
    /// clients really race.
    create_barrier: Option<(String, usize)>,
    creates_waiting: usize,
    conflicts: usize,
    gone_sent: usize,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    conns: Mutex<Vec<TcpStream>>,
    bookmark_every: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether a restart keeps the watch history (a restarted API server over the same etcd)
/// or loses it (etcd compacted: old resourceVersions answer 410 Gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    Keep,
    Lose,
}

pub struct KubeApi {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl KubeApi {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test API server");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1000,
                oldest: 1,
                ..Default::default()
            }),
            changed: Condvar::new(),
            conns: Mutex::new(Vec::new()),
            bookmark_every: Duration::from_millis(500),
        });
        let mut api = Self {
            port,
            shared,
            accept: None,
        };
        api.listen(listener);
        api
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn listen(&mut self, listener: TcpListener) {
        let epoch = {
            let mut st = self.shared.lock();
            st.running = true;
            st.epoch
        };
        let shared = self.shared.clone();
        self.accept = Some(std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if shared.lock().epoch != epoch {
                    break;
                }
                if let Ok(c) = conn.try_clone() {
                    shared.conns.lock().unwrap().push(c);
                }
                let shared = shared.clone();
                std::thread::spawn(move || serve_conn(&shared, conn, epoch));
            }
        }));
    }

    /// Goes away like a crashed API server: every connection (watches included) is cut,
    /// new ones are refused until `start_again`.
    pub fn stop(&mut self) {
        {
            let mut st = self.shared.lock();
            if !st.running {
                return;
            }
            st.running = false;
            st.epoch += 1;
        }
        self.shared.changed.notify_all();
        // Wake the accept loop so it sees the new epoch and drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Comes back on the same port. With `History::Lose` every resourceVersion seen before
    /// is too old: watches resuming from one get 410 Gone and must relist.
    pub fn start_again(&mut self, history: History) {
        {
            let mut st = self.shared.lock();
            if history == History::Lose {
                st.rv += 1;
                st.oldest = st.rv;
                st.history.clear();
            }
        }
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("cannot rebind test API server port {}: {e}", self.port),
            }
        };
        self.listen(listener);
    }

    pub fn restart(&mut self, history: History) {
        self.stop();
        self.start_again(history);
    }

    /// Writes a kubeconfig pointing at this server (plain HTTP, no auth).
    pub fn write_kubeconfig(&self, path: &Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\n\
             current-context: test\nusers:\n- name: test\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }

    /// Requests served so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// A stored Secret (server fields included), for assertions.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .lock()
            .secrets
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    pub fn secret_names(&self, namespace: &str) -> Vec<String> {
        self.shared
            .lock()
            .secrets
            .keys()
            .filter(|(ns, _)| ns == namespace)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// Holds every create of a Secret whose name starts with `prefix` until `n` such creates
    /// are in flight (at most 30 s), then lets them all through in arrival order.
    pub fn hold_creates(&self, prefix: &str, n: usize) {
        let mut st = self.shared.lock();
        st.create_barrier = Some((prefix.to_string(), n));
        st.creates_waiting = 0;
    }

    /// How many creates were answered 409 AlreadyExists.
    pub fn conflicts(&self) -> usize {
        self.shared.lock().conflicts
    }

    /// How many watches were answered with 410 Gone (Expired).
    pub fn gone_sent(&self) -> usize {
        self.shared.lock().gone_sent
    }

    /// Creates a Secret as a client would (same checks); returns the HTTP status.
    pub fn create_secret(&self, namespace: &str, body: Value) -> u16 {
        create(&self.shared, namespace, &body).0
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(h, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut body = Vec::new();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = headers.get("content-length").and_then(|v| v.parse().ok()) {
        body.resize(n, 0);
        r.read_exact(&mut body).ok()?;
    }
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect();
    Some(Request {
        method,
        path: path.to_string(),
        query,
        headers,
        body,
    })
}

fn serve_conn(shared: &Shared, conn: TcpStream, epoch: u64) {
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = conn;
    while let Some(req) = read_request(&mut reader) {
        {
            let mut st = shared.lock();
            if st.epoch != epoch {
                return;
            }
            let q: Vec<String> = req.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            st.requests
                .push(format!("{} {}?{}", req.method, req.path, q.join("&")));
        }
        if !handle(shared, &req, &mut out, epoch) {
            let _ = out.shutdown(Shutdown::Both);
            return;
        }
    }
}

fn reason_text(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        422 => "Unprocessable Entity",
        _ => "Error",
    }
}

fn respond(out: &mut TcpStream, code: u16, body: &Value) -> bool {
    let text = serde_json::to_vec(body).unwrap();
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-cache, private\r\n\r\n",
        reason_text(code),
        text.len()
    );
    out.write_all(head.as_bytes()).is_ok() && out.write_all(&text).is_ok() && out.flush().is_ok()
}

fn status(code: u16, reason: &str, message: &str, name: Option<&str>) -> Value {
    let mut s = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    if let Some(n) = name {
        s["details"] = json!({ "name": n, "kind": "secrets" });
    }
    s
}

fn wants_table(req: &Request) -> bool {
    req.headers
        .get("accept")
        .is_some_and(|a| a.contains("as=Table"))
}

fn handle(shared: &Shared, req: &Request, out: &mut TcpStream, epoch: u64) -> bool {
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let m = req.method.as_str();
    match (m, segs.as_slice()) {
        ("GET", ["version"]) => respond(
            out,
            200,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-storageos-fuse-test",
                    "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                    "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
                    "platform": "linux/amd64"}),
        ),
        ("GET", ["api"]) => respond(
            out,
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
        ),
        ("GET", ["apis"]) => respond(
            out,
            200,
            &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
        ),
        ("GET", ["api", "v1"]) => respond(
            out,
            200,
            &json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace",
                 "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["ns"]},
                {"name": "secrets", "singularName": "secret", "namespaced": true, "kind": "Secret",
                 "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                 "storageVersionHash": "S6u1pOWzb84="}
            ]}),
        ),
        // OpenAPI v3, only as far as kubectl's field-validation check reads it: a PATCH on
        // Secrets offering `fieldValidation`, so kubectl leaves validation to the server.
        ("GET", ["openapi", "v3"]) => respond(
            out,
            200,
            &json!({"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=5EC12E75"}}}),
        ),
        ("GET", ["openapi", "v3", "api", "v1"]) => {
            let gvk = json!({"group": "", "version": "v1", "kind": "Secret"});
            let field_validation = json!({"name": "fieldValidation", "in": "query",
                "description": "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields.",
                "schema": {"type": "string", "uniqueItems": true}});
            let op = |id: &str| {
                json!({"operationId": id, "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk, "parameters": [field_validation],
                "responses": {"200": {"description": "OK"}}})
            };
            respond(
                out,
                200,
                &json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.33.0"},
                        "paths": {"/api/v1/namespaces/{namespace}/secrets/{name}": {"patch": op("patchCoreV1NamespacedSecret")}},
                        "components": {"schemas": {}}}),
            )
        }
        ("GET", ["api", "v1", "namespaces", ns]) => respond(
            out,
            200,
            &json!({"kind": "Namespace", "apiVersion": "v1",
                    "metadata": {"name": ns, "resourceVersion": "1"},
                    "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
        ),
        ("GET", ["api", "v1", "secrets"]) => list_or_watch(shared, req, out, None, epoch),
        ("GET", ["api", "v1", "namespaces", ns, "secrets"]) => {
            list_or_watch(shared, req, out, Some(ns), epoch)
        }
        ("POST", ["api", "v1", "namespaces", ns, "secrets"]) => {
            let body: Value = match serde_json::from_slice(&req.body) {
                Ok(v) => v,
                Err(e) => {
                    return respond(
                        out,
                        400,
                        &status(
                            400,
                            "BadRequest",
                            &format!("the object provided is unrecognized (not JSON): {e}"),
                            None,
                        ),
                    );
                }
            };
            if req
                .query
                .get("fieldValidation")
                .is_some_and(|v| v == "Strict")
                && let Some(field) = unknown_field(&body)
            {
                return respond(
                    out,
                    400,
                    &status(
                        400,
                        "BadRequest",
                        &format!("strict decoding error: unknown field \"{field}\""),
                        None,
                    ),
                );
            }
            let (code, body) = create(shared, ns, &body);
            respond(out, code, &body)
        }
        ("GET", ["api", "v1", "namespaces", ns, "secrets", name]) => {
            let st = shared.lock();
            match st.secrets.get(&(ns.to_string(), name.to_string())) {
                Some(s) if wants_table(req) => {
                    let t = table(std::slice::from_ref(s), st.rv);
                    drop(st);
                    respond(out, 200, &t)
                }
                Some(s) => {
                    let s = s.clone();
                    drop(st);
                    respond(out, 200, &s)
                }
                None => {
                    drop(st);
                    respond(
                        out,
                        404,
                        &status(
                            404,
                            "NotFound",
                            &format!("secrets \"{name}\" not found"),
                            Some(name),
                        ),
                    )
                }
            }
        }
        ("DELETE", ["api", "v1", "namespaces", ns, "secrets", name]) => {
            let mut st = shared.lock();
            match st.secrets.remove(&(ns.to_string(), name.to_string())) {
                Some(mut obj) => {
                    st.rv += 1;
                    let rv = st.rv;
                    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
                    let uid = obj["metadata"]["uid"].clone();
                    st.history.push(WatchEvent {
                        rv,
                        namespace: ns.to_string(),
                        kind: "DELETED",
                        object: obj,
                    });
                    drop(st);
                    shared.changed.notify_all();
                    respond(
                        out,
                        200,
                        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                "details": {"name": name, "kind": "secrets", "uid": uid}}),
                    )
                }
                None => {
                    drop(st);
                    respond(
                        out,
                        404,
                        &status(
                            404,
                            "NotFound",
                            &format!("secrets \"{name}\" not found"),
                            Some(name),
                        ),
                    )
                }
            }
        }
        ("GET", _) => respond(
            out,
            404,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
                None,
            ),
        ),
        _ => respond(
            out,
            405,
            &status(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
                None,
            ),
        ),
    }
}

fn is_dns_subdomain(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    name.len() <= 253
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name.chars().all(|c| alnum(c) || c == '-' || c == '.')
}

/// The first field a Secret does not have (what `fieldValidation=Strict` refuses).
fn unknown_field(body: &Value) -> Option<String> {
    const TOP: &[&str] = &[
        "apiVersion",
        "kind",
        "metadata",
        "data",
        "stringData",
        "type",
        "immutable",
    ];
    const META: &[&str] = &[
        "name",
        "generateName",
        "namespace",
        "labels",
        "annotations",
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "managedFields",
        "finalizers",
        "ownerReferences",
        "generation",
        "selfLink",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ];
    let obj = body.as_object()?;
    if let Some(k) = obj.keys().find(|k| !TOP.contains(&k.as_str())) {
        return Some(k.clone());
    }
    let meta = obj.get("metadata")?.as_object()?;
    meta.keys()
        .find(|k| !META.contains(&k.as_str()))
        .map(|k| format!("metadata.{k}"))
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap()
        .to_string()
}

/// Validates and stores a new Secret the way the real server does; (HTTP code, body).
fn create(shared: &Shared, ns: &str, body: &Value) -> (u16, Value) {
    let bad = |msg: &str| (400, status(400, "BadRequest", msg, None));
    if body
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k != "Secret")
    {
        return bad("the kind of the provided object does not match the resource (secrets)");
    }
    let meta = body.get("metadata").cloned().unwrap_or(json!({}));
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if meta
        .get("resourceVersion")
        .and_then(Value::as_str)
        .is_some_and(|rv| !rv.is_empty())
    {
        return bad("resourceVersion should not be set on objects to be created");
    }
    if meta
        .get("namespace")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty() && n != ns)
    {
        return bad(
            "the namespace of the provided object does not match the namespace sent on the request",
        );
    }
    if name.is_empty() {
        return (
            422,
            status(
                422,
                "Invalid",
                "Secret \"\" is invalid: metadata.name: Required value: name or generateName is required",
                None,
            ),
        );
    }
    if !is_dns_subdomain(&name) {
        return (
            422,
            status(
                422,
                "Invalid",
                &format!(
                    "Secret \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                ),
                Some(&name),
            ),
        );
    }
    let mut data = serde_json::Map::new();
    if let Some(d) = body.get("data").and_then(Value::as_object) {
        for (k, v) in d {
            let ok = v
                .as_str()
                .is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok());
            if !ok {
                return bad(&format!(
                    "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data in data.{k}"
                ));
            }
            data.insert(k.clone(), v.clone());
        }
    }
    if let Some(d) = body.get("stringData").and_then(Value::as_object) {
        for (k, v) in d {
            let s = v.as_str().unwrap_or("");
            data.insert(
                k.clone(),
                json!(base64::engine::general_purpose::STANDARD.encode(s.as_bytes())),
            );
        }
    }
    let mut st = shared.lock();
    if let Some((prefix, n)) = st.create_barrier.clone()
        && name.starts_with(&prefix)
    {
        st.creates_waiting += 1;
        shared.changed.notify_all();
        let (g, _) = shared
            .changed
            .wait_timeout_while(st, Duration::from_secs(30), |s| s.creates_waiting < n)
            .unwrap_or_else(|p| p.into_inner());
        st = g;
    }
    let key = (ns.to_string(), name.clone());
    if st.secrets.contains_key(&key) {
        st.conflicts += 1;
        return (
            409,
            status(
                409,
                "AlreadyExists",
                &format!("secrets \"{name}\" already exists"),
                Some(&name),
            ),
        );
    }
    st.rv += 1;
    let rv = st.rv;
    let now = now_rfc3339();
    let mut new_meta = serde_json::Map::new();
    new_meta.insert("name".into(), json!(name));
    new_meta.insert("namespace".into(), json!(ns));
    if let Some(l) = meta.get("labels") {
        new_meta.insert("labels".into(), l.clone());
    }
    if let Some(a) = meta.get("annotations") {
        new_meta.insert("annotations".into(), a.clone());
    }
    new_meta.insert(
        "uid".into(),
        json!(format!("5e1f0000-0000-4000-8000-{rv:012x}")),
    );
    new_meta.insert("resourceVersion".into(), json!(rv.to_string()));
    new_meta.insert("creationTimestamp".into(), json!(now));
    new_meta.insert(
        "managedFields".into(),
        json!([{"manager": "storageos-fuse-test", "operation": "Update", "apiVersion": "v1",
                "time": now, "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {}, "f:type": {}}}]),
    );
    let obj = json!({
        "kind": "Secret", "apiVersion": "v1",
        "metadata": Value::Object(new_meta),
        "data": Value::Object(data),
        "type": body.get("type").and_then(Value::as_str).filter(|t| !t.is_empty()).unwrap_or("Opaque"),
    });
    st.secrets.insert(key, obj.clone());
    st.history.push(WatchEvent {
        rv,
        namespace: ns.to_string(),
        kind: "ADDED",
        object: obj.clone(),
    });
    drop(st);
    shared.changed.notify_all();
    (201, obj)
}

fn matches_selectors(req: &Request, obj: &Value) -> bool {
    if let Some(sel) = req.query.get("labelSelector").filter(|s| !s.is_empty()) {
        let labels = &obj["metadata"]["labels"];
        for term in sel.split(',') {
            let ok = match term.split_once("!=") {
                Some((k, v)) => labels[k.trim()].as_str() != Some(v.trim()),
                None => match term.split_once('=') {
                    Some((k, v)) => {
                        labels[k.trim()].as_str() == Some(v.trim_start_matches('=').trim())
                    }
                    None => !labels[term.trim()].is_null(),
                },
            };
            if !ok {
                return false;
            }
        }
    }
    if let Some(sel) = req.query.get("fieldSelector").filter(|s| !s.is_empty()) {
        for term in sel.split(',') {
            if let Some(("metadata.name", v)) = term
                .split_once('=')
                .map(|(k, v)| (k, v.trim_start_matches('=')))
                && obj["metadata"]["name"].as_str() != Some(v)
            {
                return false;
            }
        }
    }
    true
}

fn age(created: &str) -> String {
    let secs = created
        .parse::<jiff::Timestamp>()
        .map(|t| (jiff::Timestamp::now().as_second() - t.as_second()).max(0))
        .unwrap_or(0);
    if secs < 120 {
        format!("{secs}s")
    } else if secs < 7200 {
        format!("{}m", secs / 60)
    } else {
        format!("{}h", secs / 3600)
    }
}

/// `meta.k8s.io/v1` Table for Secrets, as the real server prints them.
fn table(items: &[Value], rv: u64) -> Value {
    let rows: Vec<Value> = items
        .iter()
        .map(|s| {
            let n = s["data"].as_object().map(|d| d.len()).unwrap_or(0);
            let mut meta = s["metadata"].clone();
            if let Some(m) = meta.as_object_mut() {
                m.remove("managedFields");
            }
            json!({
                "cells": [s["metadata"]["name"], s["type"], n, age(s["metadata"]["creationTimestamp"].as_str().unwrap_or(""))],
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta},
            })
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": [
            {"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0},
            {"name": "Type", "type": "string", "format": "", "description": "Used to facilitate programmatic handling of secret data.", "priority": 0},
            {"name": "Data", "type": "string", "format": "", "description": "The number of entries in data.", "priority": 0},
            {"name": "Age", "type": "string", "format": "", "description": "CreationTimestamp is a timestamp representing the server time when this object was created.", "priority": 0}
        ],
        "rows": rows,
    })
}

fn list_or_watch(
    shared: &Shared,
    req: &Request,
    out: &mut TcpStream,
    ns: Option<&str>,
    epoch: u64,
) -> bool {
    let watch = req
        .query
        .get("watch")
        .is_some_and(|v| v == "true" || v == "1");
    if watch {
        return watch_stream(shared, req, out, ns, epoch);
    }
    let st = shared.lock();
    let items: Vec<Value> = st
        .secrets
        .iter()
        .filter(|((n, _), _)| ns.is_none_or(|ns| ns == n))
        .map(|(_, v)| v)
        .filter(|v| matches_selectors(req, v))
        .cloned()
        .collect();
    let rv = st.rv;
    drop(st);
    if wants_table(req) {
        return respond(out, 200, &table(&items, rv));
    }
    let items: Vec<Value> = items
        .into_iter()
        .map(|mut v| {
            if let Some(o) = v.as_object_mut() {
                o.remove("kind");
                o.remove("apiVersion");
            }
            v
        })
        .collect();
    respond(
        out,
        200,
        &json!({"kind": "SecretList", "apiVersion": "v1",
                "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    )
}

fn write_chunk(out: &mut TcpStream, v: &Value) -> bool {
    let mut line = serde_json::to_vec(v).unwrap();
    line.push(b'\n');
    out.write_all(format!("{:x}\r\n", line.len()).as_bytes())
        .is_ok()
        && out.write_all(&line).is_ok()
        && out.write_all(b"\r\n").is_ok()
        && out.flush().is_ok()
}

fn bookmark(rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"type": "BOOKMARK", "object": {"kind": "Secret", "apiVersion": "v1", "metadata": meta}})
}

fn watch_stream(
    shared: &Shared,
    req: &Request,
    out: &mut TcpStream,
    ns: Option<&str>,
    epoch: u64,
) -> bool {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nCache-Control: no-cache, private\r\n\r\n";
    if out.write_all(head.as_bytes()).is_err() {
        return false;
    }
    let bookmarks = req
        .query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let initial_events = req
        .query
        .get("sendInitialEvents")
        .is_some_and(|v| v == "true");
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let deadline = Instant::now() + timeout;
    let from = req
        .query
        .get("resourceVersion")
        .cloned()
        .unwrap_or_default();
    let in_ns = |n: &str| ns.is_none_or(|ns| ns == n);
    let mut last;
    {
        let mut st = shared.lock();
        if from.is_empty() || from == "0" || initial_events {
            // Synthetic ADDED events for the current state, then live events.
            let objs: Vec<Value> = st
                .secrets
                .iter()
                .filter(|((n, _), v)| in_ns(n) && matches_selectors(req, v))
                .map(|(_, v)| v.clone())
                .collect();
            last = st.rv;
            drop(st);
            for o in objs {
                if !write_chunk(out, &json!({"type": "ADDED", "object": o})) {
                    return false;
                }
            }
            if initial_events && !write_chunk(out, &bookmark(last, true)) {
                return false;
            }
        } else {
            let Ok(rv) = from.parse::<u64>() else {
                drop(st);
                let _ = write_chunk(
                    out,
                    &json!({"type": "ERROR", "object": status(400, "BadRequest", &format!("invalid resource version \"{from}\""), None)}),
                );
                let _ = out.write_all(b"0\r\n\r\n");
                return false;
            };
            if rv < st.oldest {
                let oldest = st.oldest;
                st.gone_sent += 1;
                drop(st);
                let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "message": format!("too old resource version: {rv} ({oldest})"),
                                  "reason": "Expired", "code": 410});
                let _ = write_chunk(out, &json!({"type": "ERROR", "object": gone}));
                let _ = out.write_all(b"0\r\n\r\n");
                return false;
            }
            last = rv;
        }
    }
    let mut last_sent = Instant::now();
    loop {
        let st = shared.lock();
        if st.epoch != epoch {
            return false;
        }
        let events: Vec<Value> = st
            .history
            .iter()
            .filter(|e| e.rv > last && in_ns(&e.namespace) && matches_selectors(req, &e.object))
            .map(|e| json!({"type": e.kind, "object": e.object}))
            .collect();
        let now_rv = st.rv;
        if events.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                drop(st);
                if bookmarks && !write_chunk(out, &bookmark(now_rv, false)) {
                    return false;
                }
                return out.write_all(b"0\r\n\r\n").is_ok() && out.flush().is_ok();
            }
            if bookmarks && now.duration_since(last_sent) >= shared.bookmark_every {
                drop(st);
                last = now_rv;
                if !write_chunk(out, &bookmark(now_rv, false)) {
                    return false;
                }
                last_sent = Instant::now();
                continue;
            }
            drop(
                shared
                    .changed
                    .wait_timeout(st, Duration::from_millis(100))
                    .unwrap_or_else(|p| p.into_inner()),
            );
            continue;
        }
        drop(st);
        for e in events {
            if !write_chunk(out, &e) {
                return false;
            }
        }
        last = now_rv;
        last_sent = Instant::now();
    }
}

/// A scratch node whose key source is this API server: `sf` runs storageos-fuse with
/// `--key-source kube`, `kubectl` runs the real kubectl, both through a kubeconfig written
/// for this test.
pub struct KubeEnv {
    pub env: super::Env,
    pub api: KubeApi,
    pub kubeconfig: std::path::PathBuf,
}

impl KubeEnv {
    pub fn new() -> Self {
        let env = super::Env::new();
        let api = KubeApi::start();
        let kubeconfig = env.path("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        Self {
            env,
            api,
            kubeconfig,
        }
    }

    pub fn sf_cmd(&self) -> std::process::Command {
        let mut c = self.env.cmd();
        c.arg("--key-source")
            .arg("kube")
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST");
        c
    }

    pub fn sf_run(&self, args: &[&str]) -> std::process::Output {
        self.sf_cmd()
            .args(args)
            .output()
            .expect("run storageos-fuse")
    }

    /// storageos-fuse --key-source kube ARGS; expects success, returns stdout.
    pub fn sf(&self, args: &[&str]) -> String {
        super::expect_success(self.sf_run(args), args)
    }

    /// Expects failure with one `error:` line; returns it.
    pub fn sf_fails(&self, args: &[&str]) -> String {
        super::expect_failure(self.sf_run(args), args)
    }

    /// The environment a shell command needs to run both tools against this server.
    pub fn shell(&self, script: &str) -> std::process::Output {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(self.env.root.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.env.path("kube-cache"))
            .env("STORAGEOS_FUSE_DATA_DIR", &self.env.data)
            .env("STORAGEOS_FUSE_KEYS_DIR", &self.env.keys)
            .env("STORAGEOS_FUSE_KEY_SOURCE", "kube")
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    super::bin().parent().unwrap().display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env_remove("POD_NAMESPACE")
            .output()
            .expect("run sh")
    }

    /// Runs a shell line (kubectl, storageos-fuse on PATH); expects success, returns stdout.
    pub fn sh_ok(&self, script: &str) -> String {
        let o = self.shell(script);
        assert!(
            o.status.success(),
            "`{script}` failed: {}\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs a shell line that must fail; returns its stderr.
    pub fn sh_fails(&self, script: &str) -> String {
        let o = self.shell(script);
        assert!(
            !o.status.success(),
            "`{script}` unexpectedly succeeded: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }
}
