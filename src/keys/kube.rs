//! Key source `kube`: the key Secrets as Kubernetes Secrets in the key namespace, through
//! kube-rs. A thin adapter: converting Secrets to and from `SecretManifest` and building a
//! `LoadReport` are plain functions; the API calls run on a small tokio runtime owned by the
//! store, so the rest of the program stays synchronous.
//!
//! Also owns the live watcher (`spawn_kube_watcher`): kube-runtime's watcher over the
//! Secrets of the key namespace (initial list, watch, relist after 410 Gone, reconnect with
//! backoff) feeding a `Keyring` with full snapshots.
//!
//! Does not decide what a Secret means (that is `record::classify` through `KeySet::insert`),
//! and does not know about volumes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use kube::{Api, Client, Config};
use zeroize::{Zeroize, Zeroizing};

use super::keyring::Keyring;
use super::keyset::{KeyIssue, LoadReport};
use super::manifest::SecretManifest;
use super::store::{CreateOutcome, KeyStore, KeysError, check_key_manifest};

/// How to reach the API server.
#[derive(Debug, Clone, Default)]
pub struct KubeConnect {
    /// The key namespace (where the Secrets live).
    pub namespace: String,
    /// An explicit kubeconfig file; `None` infers: KUBECONFIG / ~/.kube/config, then the
    /// in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
}

impl KubeConnect {
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            kubeconfig: None,
        }
    }

    async fn client(&self) -> Result<(Client, String), KeysError> {
        let config = match &self.kubeconfig {
            None => Config::infer().await.map_err(|e| {
                KeysError::Io(format!(
                    "cannot find a Kubernetes API server (no in-cluster config, KUBECONFIG or ~/.kube/config): {e}"
                ))
            })?,
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| {
                    KeysError::Io(format!("cannot read kubeconfig {}: {e}", path.display()))
                })?;
                Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| {
                        KeysError::Io(format!("kubeconfig {} is not usable: {e}", path.display()))
                    })?
            }
        };
        let url = config.cluster_url.to_string();
        let client = Client::try_from(config)
            .map_err(|e| KeysError::Io(format!("cannot build a Kubernetes client: {e}")))?;
        Ok((client, url))
    }
}

/// A Secret as the product keeps it. Key material moves into zeroizing buffers.
pub fn manifest_from_secret(mut s: Secret) -> Option<SecretManifest> {
    let name = s.metadata.name.take().filter(|n| !n.is_empty())?;
    let mut data = BTreeMap::new();
    for (k, v) in std::mem::take(&mut s.data).unwrap_or_default() {
        data.insert(k, Zeroizing::new(v.0));
    }
    // The API server merges stringData into data; a Secret read back never has it, but a
    // manifest might.
    for (k, mut v) in std::mem::take(&mut s.string_data).unwrap_or_default() {
        data.insert(k, Zeroizing::new(v.as_bytes().to_vec()));
        v.zeroize();
    }
    Some(SecretManifest {
        name,
        namespace: s.metadata.namespace.take(),
        labels: s.metadata.labels.take().unwrap_or_default(),
        secret_type: s.type_.take().unwrap_or_else(|| "Opaque".to_string()),
        data,
    })
}

/// The Secret to create for a manifest, in `namespace`: no server fields.
pub fn secret_from_manifest(m: &SecretManifest, namespace: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(m.name.clone()),
            namespace: Some(namespace.to_string()),
            labels: (!m.labels.is_empty()).then(|| m.labels.clone()),
            ..Default::default()
        },
        type_: Some(m.secret_type.clone()),
        data: Some(
            m.data
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// Wipes the key material a `Secret` value holds.
fn wipe(s: &mut Secret) {
    for v in s.data.iter_mut().flat_map(|d| d.values_mut()) {
        v.0.zeroize();
    }
    for v in s.string_data.iter_mut().flat_map(|d| d.values_mut()) {
        v.zeroize();
    }
}

/// A full snapshot from the Secrets of the key namespace: unrelated Secrets are ignored,
/// broken ns-key/vol-key Secrets become issues naming the Secret.
pub fn report_from_secrets(secrets: impl IntoIterator<Item = Secret>) -> LoadReport {
    let mut report = LoadReport::default();
    for s in secrets {
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        let Some(m) = manifest_from_secret(s) else {
            continue;
        };
        let source = format!("Secret {} in namespace {ns}", m.name);
        if let Err(message) = report.keys.insert(m) {
            report.issues.push(KeyIssue { source, message });
        }
    }
    report
}

/// One line for a failed API call: what failed, where, why, and for an unreachable server
/// the way out.
fn api_error(what: &str, server: &str, e: kube::Error) -> KeysError {
    match e {
        kube::Error::Api(status) => KeysError::Io(format!(
            "{what}: the API server at {server} answered {} {}: {}",
            status.code, status.reason, status.message
        )),
        e => KeysError::Io(format!(
            "{what}: cannot reach the API server at {server} ({e}); check KUBECONFIG or the in-cluster service account"
        )),
    }
}

/// Secrets in the key namespace of a Kubernetes cluster.
pub struct KubeStore {
    rt: tokio::runtime::Runtime,
    api: Api<Secret>,
    namespace: String,
    server: String,
}

impl KubeStore {
    pub fn connect(conn: &KubeConnect) -> Result<Self, KeysError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| KeysError::Io(format!("cannot start the Kubernetes client: {e}")))?;
        let (client, server) = rt.block_on(conn.client())?;
        Ok(Self {
            rt,
            api: Api::namespaced(client, &conn.namespace),
            namespace: conn.namespace.clone(),
            server,
        })
    }

    fn get(&self, name: &str) -> Result<Option<SecretManifest>, KeysError> {
        match self.rt.block_on(self.api.get_opt(name)) {
            Ok(s) => Ok(s.and_then(manifest_from_secret)),
            Err(e) => Err(api_error(
                &format!("cannot read Secret {name} in namespace {}", self.namespace),
                &self.server,
                e,
            )),
        }
    }
}

impl KeyStore for KubeStore {
    fn location(&self) -> String {
        format!("namespace {}", self.namespace)
    }

    fn key_namespace(&self) -> &str {
        &self.namespace
    }

    fn load(&self) -> Result<LoadReport, KeysError> {
        let list = self
            .rt
            .block_on(self.api.list(&ListParams::default()))
            .map_err(|e| {
                api_error(
                    &format!("cannot list Secrets in namespace {}", self.namespace),
                    &self.server,
                    e,
                )
            })?;
        Ok(report_from_secrets(list.items))
    }

    fn create(&self, m: &SecretManifest) -> Result<CreateOutcome, KeysError> {
        check_key_manifest(m)?;
        let mut secret = secret_from_manifest(m, &self.namespace);
        let res = self
            .rt
            .block_on(self.api.create(&PostParams::default(), &secret));
        wipe(&mut secret);
        match res {
            Ok(mut created) => {
                wipe(&mut created);
                Ok(CreateOutcome::Created)
            }
            Err(kube::Error::Api(status)) if status.is_already_exists() => {
                Ok(CreateOutcome::AlreadyExists)
            }
            Err(e) => Err(api_error(
                &format!(
                    "cannot create Secret {} in namespace {}",
                    m.name, self.namespace
                ),
                &self.server,
                e,
            )),
        }
    }

    fn delete(&self, name: &str) -> Result<(), KeysError> {
        match self
            .rt
            .block_on(self.api.delete(name, &DeleteParams::default()))
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(e) => Err(api_error(
                &format!(
                    "cannot delete Secret {name} in namespace {}",
                    self.namespace
                ),
                &self.server,
                e,
            )),
        }
    }

    fn restore_hint(&self, secret: &str) -> String {
        format!(
            "restore it from your backup with `kubectl create -f {secret}.yaml` or `storageos-fuse keys restore FILE`"
        )
    }

    fn existing(&self, name: &str) -> Result<Option<SecretManifest>, KeysError> {
        self.get(name)
    }
}

/// A running Secrets watcher; stops when dropped (or with `stop`).
pub struct KubeWatcher {
    stop: Arc<AtomicBool>,
    wake: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KubeWatcher {
    /// Stops the watcher and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.wake.take() {
            let _ = w.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for KubeWatcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The watcher's plain state: Secrets by name, turned into a full snapshot after each
/// change once the initial list is complete.
#[derive(Default)]
pub struct SecretCache {
    live: BTreeMap<String, Secret>,
    /// Objects of a (re)list in progress; swapped in at `InitDone`.
    listing: Option<BTreeMap<String, Secret>>,
    synced: bool,
}

impl SecretCache {
    /// Applies one watcher event; returns the snapshot to install, if it changed.
    pub fn apply(&mut self, ev: watcher::Event<Secret>) -> Option<LoadReport> {
        let name_of = |s: &Secret| s.metadata.name.clone().unwrap_or_default();
        match ev {
            watcher::Event::Init => {
                self.listing = Some(BTreeMap::new());
                None
            }
            watcher::Event::InitApply(s) => {
                self.listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name_of(&s), s);
                None
            }
            watcher::Event::InitDone => {
                let fresh = self.listing.take().unwrap_or_default();
                for (_, mut old) in std::mem::replace(&mut self.live, fresh) {
                    wipe(&mut old);
                }
                self.synced = true;
                Some(self.report())
            }
            watcher::Event::Apply(s) => {
                if let Some(mut old) = self.live.insert(name_of(&s), s) {
                    wipe(&mut old);
                }
                self.synced.then(|| self.report())
            }
            watcher::Event::Delete(s) => {
                if let Some(mut old) = self.live.remove(&name_of(&s)) {
                    wipe(&mut old);
                }
                self.synced.then(|| self.report())
            }
        }
    }

    fn report(&self) -> LoadReport {
        report_from_secrets(self.live.values().cloned())
    }
}

impl Drop for SecretCache {
    fn drop(&mut self) {
        for s in self.live.values_mut() {
            wipe(s);
        }
        for s in self.listing.iter_mut().flat_map(|l| l.values_mut()) {
            wipe(s);
        }
    }
}

/// Starts watching the Secrets of `conn.namespace` on a thread of its own, feeding
/// `keyring` a full snapshot after the initial list and after every change. Connection
/// loss, server restarts and 410 Gone are handled inside (relist, reconnect with backoff);
/// errors are logged, never fatal. Fails only when no client can be built.
///
/// For a daemon (`serve`): build one `Keyring`, start the watcher with the global
/// `--key-namespace`, wait for `keyring.is_synced()` (or `wait_change`), then react to
/// `keyring.wait_change(generation, ..)`; keep the returned handle alive while serving:
///
/// ```text
/// let keyring = Keyring::new();
/// let _watcher = spawn_kube_watcher(&KubeConnect::new(&g.key_namespace), keyring.clone())?;
/// ```
pub fn spawn_kube_watcher(
    conn: &KubeConnect,
    keyring: Arc<Keyring>,
) -> Result<KubeWatcher, KeysError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| KeysError::Io(format!("cannot start the Kubernetes watcher: {e}")))?;
    let (client, _) = rt.block_on(conn.client())?;
    let api: Api<Secret> = Api::namespaced(client, &conn.namespace);
    let stop = Arc::new(AtomicBool::new(false));
    let (wake, woken) = tokio::sync::oneshot::channel::<()>();
    let stop2 = stop.clone();
    let namespace = conn.namespace.clone();
    let thread = std::thread::Builder::new()
        .name("kube-watcher".into())
        .spawn(move || {
            rt.block_on(async move {
                let stream = watcher(api, watcher::Config::default()).default_backoff();
                futures::pin_mut!(stream);
                let mut cache = SecretCache::default();
                let run = async {
                    while let Some(ev) = stream.next().await {
                        if stop2.load(Ordering::SeqCst) {
                            break;
                        }
                        match ev {
                            Ok(ev) => {
                                if let Some(report) = cache.apply(ev) {
                                    keyring.replace(report);
                                }
                            }
                            Err(e) => {
                                // The backoff stream restarts the watch after an error.
                                keyring.note_restart();
                                tracing::warn!(
                                    "watching Secrets in namespace {namespace}: {e}; retrying"
                                )
                            }
                        }
                    }
                };
                tokio::select! {
                    _ = run => {}
                    _ = woken => {}
                }
            })
        })
        .map_err(|e| KeysError::Io(format!("cannot start the Kubernetes watcher: {e}")))?;
    Ok(KubeWatcher {
        stop,
        wake: Some(wake),
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypt::NamespaceKey;
    use crate::keys::record::ns_key_manifest;

    fn ns_secret(ns: &str) -> Secret {
        let m = ns_key_manifest(ns, &NamespaceKey::generate(), "storageos");
        secret_from_manifest(&m, "storageos")
    }

    #[test]
    fn secret_round_trips_through_manifest() {
        let s = ns_secret("default");
        let m = manifest_from_secret(s.clone()).unwrap();
        assert_eq!(m.name, "ns-key.default");
        assert_eq!(m.namespace.as_deref(), Some("storageos"));
        assert_eq!(secret_from_manifest(&m, "storageos"), s);
    }

    #[test]
    fn cache_snapshots_only_after_the_initial_list_and_swaps_on_relist() {
        let mut c = SecretCache::default();
        assert!(c.apply(watcher::Event::Init).is_none());
        assert!(c.apply(watcher::Event::InitApply(ns_secret("a"))).is_none());
        let r = c.apply(watcher::Event::InitDone).unwrap();
        assert!(r.keys.ns_key("a").is_some());
        let r = c.apply(watcher::Event::Apply(ns_secret("b"))).unwrap();
        assert!(r.keys.ns_key("a").is_some() && r.keys.ns_key("b").is_some());
        let r = c.apply(watcher::Event::Delete(ns_secret("a"))).unwrap();
        assert!(r.keys.ns_key("a").is_none());
        // A relist (after 410 Gone) replaces everything at its end, not before.
        assert!(c.apply(watcher::Event::Init).is_none());
        assert!(c.apply(watcher::Event::InitApply(ns_secret("c"))).is_none());
        let r = c.apply(watcher::Event::InitDone).unwrap();
        assert!(r.keys.ns_key("b").is_none() && r.keys.ns_key("c").is_some());
    }

    #[test]
    fn unrelated_secrets_are_ignored_and_broken_ones_named() {
        let mut broken = ns_secret("x");
        broken
            .data
            .as_mut()
            .unwrap()
            .insert("key".into(), ByteString(vec![1; 16]));
        let unrelated = Secret {
            metadata: ObjectMeta {
                name: Some("registry".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let r = report_from_secrets([ns_secret("ok"), broken, unrelated]);
        assert!(r.keys.ns_key("ok").is_some());
        assert_eq!(r.keys.manifests.len(), 1);
        assert_eq!(r.issues.len(), 1);
        assert!(r.issues[0].source.contains("ns-key.x"), "{:?}", r.issues);
    }
}
