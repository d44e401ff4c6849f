//! Volume names as Kubernetes spells them: namespace = DNS-1123 label, name = DNS-1123
//! subdomain, id = lowercase UUID. Validation runs before anything touches disk, so no
//! name can become a path outside the data directory.

use std::fmt;

pub const DEFAULT_NAMESPACE: &str = "default";

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn validate_namespace(ns: &str) -> Result<(), String> {
    if ns.len() > 63 {
        return Err(format!(
            "namespace is {} characters long, at most 63 are allowed",
            ns.len()
        ));
    }
    if !is_label(ns) {
        return Err(format!(
            "namespace {ns:?} is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// DNS-1123 subdomain: labels joined by `.`, at most 253 characters.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err(format!(
            "volume name is {} characters long, at most 253 are allowed",
            name.len()
        ));
    }
    if !name.split('.').all(is_label) {
        return Err(format!(
            "volume name {name:?} is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// Lowercase `8-4-4-4-12` hex.
pub fn validate_volume_id(id: &str) -> Result<(), String> {
    let groups: Vec<&str> = id.split('-').collect();
    let ok = groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| {
            g.len() == n
                && g.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a volume id (lowercase 8-4-4-4-12 hex)"
        ))
    }
}

pub fn new_volume_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// A VOLUME argument: `NAMESPACE/NAME`, `NAME` (namespace `default`) or an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeRef {
    Name {
        namespace: String,
        name: String,
    },
    /// A bare argument that is a valid id; it may also be a name in `default`.
    IdOrName(String),
}

impl VolumeRef {
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::parse_inner(s).map_err(|e| {
            if s.contains('/') {
                // Name the whole argument: the part that failed may be empty or a fragment.
                format!("volume {s:?}: {e}; a VOLUME is NAMESPACE/NAME, NAME or an id")
            } else {
                e
            }
        })
    }

    fn parse_inner(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name)) => {
                validate_namespace(ns)?;
                validate_name(name)?;
                Ok(Self::Name {
                    namespace: ns.into(),
                    name: name.into(),
                })
            }
            None => {
                if validate_volume_id(s).is_ok() {
                    return Ok(Self::IdOrName(s.into()));
                }
                validate_name(s)?;
                Ok(Self::Name {
                    namespace: DEFAULT_NAMESPACE.into(),
                    name: s.into(),
                })
            }
        }
    }

    /// The namespace and name this reference would create.
    pub fn namespace_and_name(&self) -> (&str, &str) {
        match self {
            Self::Name { namespace, name } => (namespace, name),
            Self::IdOrName(s) => (DEFAULT_NAMESPACE, s),
        }
    }
}

impl fmt::Display for VolumeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name { namespace, name } => write!(f, "{namespace}/{name}"),
            Self::IdOrName(s) => f.write_str(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_kubernetes_names() {
        assert!(validate_name("pvc-1c68f013-40dd-4d7c-9c5a-2d6d9e4b8f10").is_ok());
        assert!(validate_name("a.b-c").is_ok());
        assert!(validate_namespace("kube-system").is_ok());
    }

    #[test]
    fn refuses_path_like_and_odd_names() {
        for bad in [
            "..",
            ".",
            "a/b",
            "A",
            "",
            "-a",
            "a-",
            "a..b",
            "a b",
            &"x".repeat(254),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_namespace("a.b").is_err());
        assert!(validate_namespace(&"x".repeat(64)).is_err());
        assert!(VolumeRef::parse("a/b/c").is_err());
        assert!(VolumeRef::parse("../x").is_err());
    }

    #[test]
    fn parses_references() {
        assert_eq!(
            VolumeRef::parse("pvc0002").unwrap(),
            VolumeRef::Name {
                namespace: "default".into(),
                name: "pvc0002".into()
            }
        );
        let id = new_volume_id();
        assert_eq!(
            VolumeRef::parse(&id).unwrap(),
            VolumeRef::IdOrName(id.clone())
        );
        assert!(validate_volume_id(&id).is_ok());
        assert!(validate_volume_id("../../etc/passwd").is_err());
        assert!(validate_volume_id(&id.to_uppercase()).is_err());
    }
}
