//! `volume.json`, format 1, exactly the fields DESIGN.md names.

use serde::{Deserialize, Serialize};

use super::labels::{ENCRYPTION_LABEL, Labels};

pub const FORMAT: u32 = 1;
pub const CIPHER: &str = "aes-xts-plain64";
pub const KEY_BITS: u32 = 512;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EncryptionMeta {
    pub cipher: String,
    pub key_bits: u32,
    /// base64 of HMAC-SHA256(VK, "storageos-fuse key digest v1").
    pub key_digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeMeta {
    pub format: u32,
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub size_bytes: u64,
    pub sector_size: u32,
    pub created_at: String,
    pub encryption: Option<EncryptionMeta>,
}

impl VolumeMeta {
    pub fn encrypted(&self) -> bool {
        self.encryption.is_some()
    }

    /// `namespace/name`.
    pub fn display_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Checks what the rest of the product relies on; a file that fails is not served.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "format {} is not supported (expected {FORMAT})",
                self.format
            ));
        }
        super::names::validate_volume_id(&self.id)?;
        super::names::validate_namespace(&self.namespace)?;
        super::names::validate_name(&self.name)?;
        if self.sector_size != 512 && self.sector_size != 4096 {
            return Err(format!(
                "sector_size {} is not 512 or 4096",
                self.sector_size
            ));
        }
        if self.size_bytes == 0 || !self.size_bytes.is_multiple_of(self.sector_size as u64) {
            return Err(format!(
                "size_bytes {} is not a whole number of sectors",
                self.size_bytes
            ));
        }
        let label = self.labels.get(ENCRYPTION_LABEL).map(String::as_str);
        match (&self.encryption, label) {
            (Some(e), Some("true")) => {
                if e.cipher != CIPHER || e.key_bits != KEY_BITS {
                    return Err(format!(
                        "encryption {}/{} is not supported",
                        e.cipher, e.key_bits
                    ));
                }
            }
            (None, None | Some("false")) => {}
            _ => {
                return Err(format!(
                    "label {ENCRYPTION_LABEL} disagrees with the encryption field"
                ));
            }
        }
        Ok(())
    }

    /// The decoded key digest of an encrypted volume.
    pub fn key_digest(&self) -> Option<[u8; 32]> {
        use base64::Engine as _;
        let e = self.encryption.as_ref()?;
        let v = base64::engine::general_purpose::STANDARD
            .decode(&e.key_digest)
            .ok()?;
        v.try_into().ok()
    }
}
