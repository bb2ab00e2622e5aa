//! Configuration files: TOML into a struct, and errors that say where.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML for this schema (unknown key, wrong type); the message
    /// names the key and the line.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value parsed but cannot work.
    #[error("{path}: key `{key}`: {reason}")]
    Invalid {
        /// The file (or where the value came from).
        path: PathBuf,
        /// Dotted key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl ConfigError {
    /// An invalid value of `key` in `path`.
    pub fn invalid(path: &Path, key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads and parses `path` (no validation: the caller's `validate` follows).
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let bytes = read_bounded(path, MAX_CONFIG_BYTES).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: format!("not UTF-8: {e}"),
    })?;
    parse(&text, path)
}

/// Parses TOML text; `path` only names it in errors.
pub fn parse<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: e.to_string(),
    })
}

/// Reads at most `max` bytes of `path`: a secret or certificate file is small,
/// and a configuration pointing at `/dev/zero` must fail, not hang.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(out)
}

/// The first of `values` (a key and its value) that is zero, as a problem
/// to report: the key, and "must be positive".
pub fn first_zero(values: &[(&'static str, u64)]) -> Option<(&'static str, String)> {
    values
        .iter()
        .find(|(_, v)| *v == 0)
        .map(|(key, _)| (*key, "must be positive".to_string()))
}

/// `key`'s `value` as a problem to report unless it is a fraction (0 to 1).
pub fn not_a_fraction(key: &'static str, value: f64) -> Option<(&'static str, String)> {
    (!(0.0..=1.0).contains(&value)).then(|| (key, format!("must be 0 to 1, not {value}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded() {
        let dir = std::env::temp_dir().join(format!("hostpulse-common-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, [0u8; 100]).unwrap();
        assert_eq!(read_bounded(&file, 100).unwrap().len(), 100);
        let e = read_bounded(&file, 99).unwrap_err();
        assert!(e.to_string().contains("larger than 99 bytes"));
        assert!(read_bounded(Path::new("/dev/zero"), 1024).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
