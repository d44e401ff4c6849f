//! Volume labels, and the one label with rules: `storageos.com/encryption` takes exactly
//! `true` or `false`, and only at creation.

use std::collections::BTreeMap;

pub const ENCRYPTION_LABEL: &str = "storageos.com/encryption";

pub type Labels = BTreeMap<String, String>;

/// Parses `KEY=VALUE`. Keys follow Kubernetes label keys loosely: non-empty, no spaces or `=`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("label {s:?} is not KEY=VALUE"))?;
    if k.is_empty()
        || k.len() > 253
        || !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    {
        return Err(format!("label key {k:?} is not a valid label key"));
    }
    if v.len() > 63
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "label value {v:?} of {k} is not a valid label value"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Parses the labels of `volume create`; returns them and whether the volume is encrypted.
pub fn parse_create_labels(args: &[String]) -> Result<(Labels, bool), String> {
    let mut labels = Labels::new();
    for a in args {
        let (k, v) = parse_label(a)?;
        if labels.insert(k.clone(), v).is_some() {
            return Err(format!("label {k} is given twice"));
        }
    }
    let encrypted = match labels.get(ENCRYPTION_LABEL).map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(format!(
                "label {ENCRYPTION_LABEL}={other} is not allowed: the value must be exactly \"true\" or \"false\""
            ));
        }
    };
    Ok((labels, encrypted))
}

/// Applies `volume update --label` changes. `KEY=` removes a label. The encryption label
/// cannot change or go away.
pub fn apply_update(current: &Labels, args: &[String]) -> Result<Labels, String> {
    let mut next = current.clone();
    for a in args {
        let (k, v) = match a.split_once('=') {
            Some((k, "")) => (k.to_string(), None),
            _ => {
                let (k, v) = parse_label(a)?;
                (k, Some(v))
            }
        };
        if k == ENCRYPTION_LABEL {
            let now = current
                .get(ENCRYPTION_LABEL)
                .map(String::as_str)
                .unwrap_or("false");
            if v.as_deref() != Some(now) {
                return Err(format!(
                    "label {ENCRYPTION_LABEL} is fixed at creation (it is {now:?}); create a new volume and copy the data instead"
                ));
            }
        }
        match v {
            Some(v) => {
                next.insert(k, v);
            }
            None => {
                next.remove(&k);
            }
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn encryption_label_is_strict() {
        assert!(
            parse_create_labels(&v(&["storageos.com/encryption=true"]))
                .unwrap()
                .1
        );
        assert!(
            !parse_create_labels(&v(&["storageos.com/encryption=false"]))
                .unwrap()
                .1
        );
        assert!(!parse_create_labels(&v(&[])).unwrap().1);
        for bad in ["True", "yes", "1", ""] {
            assert!(
                parse_create_labels(&v(&[&format!("storageos.com/encryption={bad}")])).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn encryption_label_is_fixed() {
        let (cur, _) = parse_create_labels(&v(&["storageos.com/encryption=true"])).unwrap();
        assert!(apply_update(&cur, &v(&["storageos.com/encryption=false"])).is_err());
        assert!(apply_update(&cur, &v(&["storageos.com/encryption="])).is_err());
        assert!(apply_update(&cur, &v(&["storageos.com/encryption=true", "tier=gold"])).is_ok());
        let plain = Labels::new();
        assert!(apply_update(&plain, &v(&["storageos.com/encryption=true"])).is_err());
    }
}
