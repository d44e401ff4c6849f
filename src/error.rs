//! The product-level error: every failure a command can end with, each rendered as the
//! one line that follows `error: ` on stderr. Never carries key material.

use crate::image::ImageError;
use crate::keys::KeysError;
use crate::volume::VolumeError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(
        "volume {volume} cannot be decrypted: its key Secret {secret} is missing from {location}; {hint}"
    )]
    MissingKey {
        volume: String,
        secret: String,
        location: String,
        hint: String,
    },
    #[error(
        "volume {volume} cannot be decrypted: Secret {secret} in {location} is refused: {why}; {hint}"
    )]
    BadKey {
        volume: String,
        secret: String,
        location: String,
        why: String,
        hint: String,
    },
    #[error("{0}")]
    Mount(String),
    #[error("{0}")]
    Io(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
