//! Secret manifests as YAML: what `kubectl get secret -o yaml` writes (single objects,
//! `kind: List`, several documents) in, and what `kubectl create -f` accepts out.
//!
//! Values are held decoded and zeroized on drop. Errors name the document and the field,
//! never a value: a manifest holds key material.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use zeroize::Zeroizing;

/// A Secret reduced to what the product keeps: no server fields (`resourceVersion`, `uid`,
/// `creationTimestamp`, `managedFields`), so it can always be created again.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretManifest {
    pub name: String,
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub secret_type: String,
    pub data: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for SecretManifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretManifest")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("data_keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Why a document (or a whole file) was refused. Never carries a value from `data`.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ManifestError {
    #[error("is empty: no Secret in it")]
    Empty,
    #[error("is not text (not UTF-8): not a YAML manifest")]
    NotText,
    #[error("is not valid YAML: {0}")]
    Yaml(String),
    #[error("{what} is a {kind}, not a Secret")]
    NotASecret { what: String, kind: String },
    #[error("{what} has no metadata.name (truncated file?)")]
    NoName { what: String },
    #[error("Secret {name}: data.{field} is not valid base64")]
    NotBase64 { name: String, field: String },
}

#[derive(Deserialize)]
struct RawDoc {
    kind: Option<String>,
    metadata: Option<RawMeta>,
    #[serde(rename = "type")]
    secret_type: Option<String>,
    data: Option<BTreeMap<String, RawValue>>,
    #[serde(rename = "stringData")]
    string_data: Option<BTreeMap<String, RawValue>>,
    items: Option<Vec<RawDoc>>,
}

#[derive(Deserialize)]
struct RawMeta {
    name: Option<String>,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
}

/// A string value from `data`/`stringData`, zeroized when dropped.
struct RawValue(Zeroizing<String>);

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(RawValue(Zeroizing::new(String::deserialize(d)?)))
    }
}

/// One document's outcome within a file.
pub type DocResult = Result<SecretManifest, ManifestError>;

/// Parses a file's bytes into Secrets. The outer error refuses the whole file (not text,
/// not YAML, empty); inner errors refuse one document while the others still load.
pub fn parse_manifests(bytes: &[u8]) -> Result<Vec<DocResult>, ManifestError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ManifestError::NotText)?;
    if text.contains('\0') {
        return Err(ManifestError::NotText);
    }
    let options = serde_saphyr::options! { with_snippet: false };
    let docs: Vec<RawDoc> = serde_saphyr::from_multiple_with_options(text, options)
        .map_err(|e| ManifestError::Yaml(one_line(&e)))?;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let what = format!("document {}", i + 1);
        flatten(doc, &what, &mut out);
    }
    if out.is_empty() {
        return Err(ManifestError::Empty);
    }
    Ok(out)
}

/// An item name as it may appear in a message. Kubernetes item names are short words
/// (`[-._a-zA-Z0-9]+`); anything else may be a value that lost its line break (a key
/// pasted where its name belongs), so it is withheld.
fn printable_item_name(field: &str) -> String {
    let plain = !field.is_empty()
        && field.len() <= 32
        && field
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if plain {
        field.to_string()
    } else {
        "<an item whose name is not a valid key name: withheld, it may be a value>".to_string()
    }
}

fn one_line(e: &serde_saphyr::Error) -> String {
    let rendered = e.without_snippet().to_string();
    let first = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("syntax error")
        .trim();
    match e.location() {
        Some(loc) if !first.contains("line") => {
            format!("{first} (line {}, column {})", loc.line(), loc.column())
        }
        _ => first.to_string(),
    }
}

fn flatten(doc: RawDoc, what: &str, out: &mut Vec<DocResult>) {
    match doc.kind.as_deref() {
        Some("List") | Some("SecretList") => {
            for (j, item) in doc.items.unwrap_or_default().into_iter().enumerate() {
                flatten(item, &format!("{what} item {}", j + 1), out);
            }
        }
        Some("Secret") => out.push(to_manifest(doc, what)),
        other => {
            let name = doc.metadata.as_ref().and_then(|m| m.name.clone());
            let what = match name {
                Some(n) => format!("{what} ({n})"),
                None => what.to_string(),
            };
            out.push(Err(ManifestError::NotASecret {
                what,
                kind: other.unwrap_or("document without kind").to_string(),
            }))
        }
    }
}

fn to_manifest(doc: RawDoc, what: &str) -> DocResult {
    let meta = doc.metadata.ok_or_else(|| ManifestError::NoName {
        what: what.to_string(),
    })?;
    let name = meta
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ManifestError::NoName {
            what: what.to_string(),
        })?;
    let mut data = BTreeMap::new();
    for (field, value) in doc.data.unwrap_or_default() {
        let compact: Zeroizing<String> = Zeroizing::new(
            value
                .0
                .chars()
                .filter(|c| !c.is_ascii_whitespace())
                .collect(),
        );
        let decoded = B64
            .decode(compact.as_bytes())
            .map_err(|_| ManifestError::NotBase64 {
                name: name.clone(),
                field: printable_item_name(&field),
            })?;
        data.insert(field, Zeroizing::new(decoded));
    }
    // Kubernetes merges stringData over data on write; do the same.
    for (field, value) in doc.string_data.unwrap_or_default() {
        data.insert(field, Zeroizing::new(value.0.as_bytes().to_vec()));
    }
    Ok(SecretManifest {
        name,
        namespace: meta.namespace,
        labels: meta.labels.unwrap_or_default(),
        secret_type: doc.secret_type.unwrap_or_else(|| "Opaque".to_string()),
        data,
    })
}

/// A YAML scalar for `s`: plain when it is unambiguous (names, labels, base64), else
/// double-quoted (JSON string syntax is a subset of YAML's).
fn quoted(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c))
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("strings serialize")
    }
}

impl SecretManifest {
    /// The manifest as `kubectl create -f` accepts it: no server fields. The returned text
    /// holds key material in base64 and zeroizes on drop.
    pub fn to_yaml(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(512));
        let _ = writeln!(
            s,
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {}",
            quoted(&self.name)
        );
        if let Some(ns) = &self.namespace {
            let _ = writeln!(s, "  namespace: {}", quoted(ns));
        }
        if !self.labels.is_empty() {
            s.push_str("  labels:\n");
            for (k, v) in &self.labels {
                let _ = writeln!(s, "    {}: {}", quoted(k), quoted(v));
            }
        }
        let _ = writeln!(s, "type: {}", quoted(&self.secret_type));
        s.push_str("data:\n");
        for (k, v) in &self.data {
            let enc = Zeroizing::new(B64.encode(&v[..]));
            let _ = writeln!(s, "  {}: {}", quoted(k), enc.as_str());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_yaml() {
        let mut data = BTreeMap::new();
        data.insert("key".to_string(), Zeroizing::new(vec![1u8, 2, 3, 250]));
        let mut labels = BTreeMap::new();
        labels.insert("a/b".to_string(), "x: y".to_string());
        let m = SecretManifest {
            name: "ns-key.default".into(),
            namespace: Some("storageos".into()),
            labels,
            secret_type: "Opaque".into(),
            data,
        };
        let text = m.to_yaml();
        let back = parse_manifests(text.as_bytes()).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].as_ref().unwrap(), &m);
    }

    #[test]
    fn string_data_overrides_data() {
        let y = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ndata:\n  a: YQ==\nstringData:\n  a: b\n";
        let docs = parse_manifests(y.as_bytes()).unwrap();
        assert_eq!(&docs[0].as_ref().unwrap().data["a"][..], b"b");
    }

    #[test]
    fn refuses_binary_and_empty() {
        assert_eq!(parse_manifests(b"").unwrap_err(), ManifestError::Empty);
        assert_eq!(parse_manifests(b"---\n").unwrap_err(), ManifestError::Empty);
        assert_eq!(
            parse_manifests(&[0xff, 0xfe, 0x00]).unwrap_err(),
            ManifestError::NotText
        );
    }
}
