//! The `log` table of the redb engine, kept as files beside the redb file
//! (`log/`, one file per record) rather than as values in it.
//!
//! A flush's record holds the new rows of most series (tens of MB at
//! 10,000 hosts): as a redb value it was zero-filled, copied into fresh
//! pages, checksummed and written through the B-tree at every flush, half
//! the store's CPU (BENCHMARKS.md, "The log as files"). As a file it is one
//! `write` and one `fdatasync`.
//!
//! [`super::engine::Redb::apply`] keeps a flush whole: the record is
//! written and synced before the transaction, and removed again if the
//! transaction fails; records deleted by a transaction are removed after it
//! commits. A crash between the two leaves a record whose rows the tables
//! may hold already: the log's replay skips rows a series' tables hold
//! ([`super::recent::replay`]), so a record replayed twice changes nothing.
//!
//! A file is `u32 length | u32 crc32 | record` (little endian), written as
//! `<key>.tmp`, synced, then renamed to `<key>.log` (the key in hex), the
//! directory synced: a `.log` file is whole or absent. A file that does
//! not check (damage from outside) is skipped with a warning and kept.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::StoreError;

/// The directory of log records.
#[derive(Debug)]
pub struct LogFiles {
    dir: PathBuf,
    /// Bytes of the record files.
    bytes: AtomicU64,
}

const SUFFIX: &str = ".log";
const TMP_SUFFIX: &str = ".tmp";
const HEADER: usize = 8;

impl LogFiles {
    /// Opens (or creates) `dir`; removes records a crash left half written.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let mut bytes = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(TMP_SUFFIX) {
                std::fs::remove_file(entry.path())?;
            } else if name.ends_with(SUFFIX) {
                bytes += entry.metadata()?.len();
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            bytes: AtomicU64::new(bytes),
        })
    }

    fn path(&self, key: &[u8], suffix: &str) -> PathBuf {
        self.dir.join(format!("{}{suffix}", hex::encode(key)))
    }

    /// Writes record `key` durably.
    pub fn put(&self, key: &[u8], record: &[u8]) -> Result<(), StoreError> {
        let len = u32::try_from(record.len())
            .map_err(|_| StoreError::Engine("a log record over 4 GiB".into()))?;
        let tmp = self.path(key, TMP_SUFFIX);
        let path = self.path(key, SUFFIX);
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..].copy_from_slice(&crc32fast::hash(record).to_le_bytes());
        let mut file = File::create(&tmp)?;
        file.write_all(&header)?;
        file.write_all(record)?;
        file.sync_data()?;
        drop(file);
        let old = std::fs::metadata(&path).map_or(0, |m| m.len());
        std::fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        self.bytes
            .fetch_add((HEADER + record.len()) as u64, Ordering::Relaxed);
        self.bytes.fetch_sub(old, Ordering::Relaxed);
        Ok(())
    }

    /// Removes record `key` (absent is fine). Not synced: a removal a
    /// crash undoes leaves a record the replay skips.
    pub fn delete(&self, key: &[u8]) -> Result<(), StoreError> {
        let path = self.path(key, SUFFIX);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {
                self.bytes.fetch_sub(len, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Visits the records with `from <= key < to` in key order until
    /// `visit` returns false.
    pub fn scan(
        &self,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let mut keys = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            let Some(key) = name.strip_suffix(SUFFIX).and_then(|k| hex::decode(k).ok()) else {
                continue;
            };
            if key.as_slice() >= from && key.as_slice() < to {
                keys.push(key);
            }
        }
        keys.sort();
        let mut buf = Vec::new();
        for key in keys {
            let path = self.path(&key, SUFFIX);
            buf.clear();
            match File::open(&path) {
                Ok(mut f) => f.read_to_end(&mut buf)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            match check(&buf) {
                Some(record) => {
                    if !visit(&key, record) {
                        break;
                    }
                }
                None => tracing::warn!(
                    file = %path.display(),
                    "store: a log record does not check (length or CRC); skipped"
                ),
            }
        }
        Ok(())
    }

    /// Bytes of the record files.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The record in a file's bytes, if its length and CRC check.
fn check(file: &[u8]) -> Option<&[u8]> {
    let header = file.get(..HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    let record = &file[HEADER..];
    (record.len() == len && crc32fast::hash(record) == crc).then_some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_in_key_order_and_damage_is_skipped() {
        let dir = crate::store::tests::temp_dir("logfiles");
        let log = LogFiles::open(&dir).unwrap();
        log.put(&2u64.to_be_bytes(), b"two").unwrap();
        log.put(&1u64.to_be_bytes(), b"one").unwrap();
        log.put(&3u64.to_be_bytes(), b"three").unwrap();
        assert_eq!(log.bytes(), 3 * 8 + 11);
        let all = |log: &LogFiles| {
            let mut seen = Vec::new();
            log.scan(&[], &[0xff; 9], &mut |k, v| {
                seen.push((k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
            seen
        };
        let seen = all(&log);
        assert_eq!(
            seen.iter().map(|(_, v)| v.as_slice()).collect::<Vec<_>>(),
            [&b"one"[..], b"two", b"three"]
        );
        assert_eq!(seen[0].0, 1u64.to_be_bytes());

        // A flipped byte: that record is skipped, the others are read.
        let path = log.path(&2u64.to_be_bytes(), SUFFIX);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(all(&log).len(), 2);

        log.delete(&1u64.to_be_bytes()).unwrap();
        log.delete(&1u64.to_be_bytes()).unwrap();
        assert_eq!(all(&log).len(), 1);

        // A record a crash left half written is removed at the next open.
        std::fs::write(dir.join("0000000000000009.tmp"), b"half").unwrap();
        let log = LogFiles::open(&dir).unwrap();
        assert!(!dir.join("0000000000000009.tmp").exists());
        assert_eq!(log.bytes(), 2 * 8 + 8);
    }
}
