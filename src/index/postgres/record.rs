//! `RUN/index/postgres.json`: the run's gallery lives in PostgreSQL. It replaces the
//! local index files (same swap of folders as [`crate::index::store::write`], so a
//! crash leaves the old or the new one) and names the server without a password.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::index::store::{IndexError, SourceRecord, io_err};

pub const RECORD_FILE: &str = "postgres.json";
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PgRecord {
    pub format: u32,
    /// `env:NAME`, or the URL without its password.
    pub url: String,
    /// The gallery's name (the view of the live version).
    pub table: String,
    /// The version that went live with this record.
    pub version: i32,
    pub dim: usize,
    pub count: usize,
    /// Fingerprint of the weights that embedded it.
    pub fingerprint: String,
    /// The checkpoint file (empty for an untrained model).
    pub checkpoint: String,
    pub backbone: String,
    pub image_size: u32,
    pub sources: Vec<SourceRecord>,
    pub m: usize,
    pub ef_construction: usize,
    /// Seconds since the Unix epoch.
    pub created: f64,
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(std::ffi::OsStr::to_os_string)
        .unwrap_or_default();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

/// The record in `dir` (or in `dir.old`, left by a crash between two renames), if
/// the run's gallery is in PostgreSQL.
pub fn read(dir: &Path) -> Result<Option<PgRecord>, IndexError> {
    let mut path = dir.join(RECORD_FILE);
    if !dir.join(crate::index::store::HEADER_FILE).is_file() && !path.is_file() {
        path = sibling(dir, "old").join(RECORD_FILE);
    }
    if !path.is_file() {
        return Ok(None);
    }
    let corrupt = |message: String| IndexError::Corrupt {
        path: path.clone(),
        message,
    };
    let text = fs::read_to_string(&path).map_err(|e| corrupt(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| corrupt(format!("unreadable record: {e}")))?;
    let format = value
        .get("format")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0) as u32;
    if format != FORMAT {
        return Err(IndexError::Format {
            path,
            found: format,
        });
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| corrupt(format!("unreadable record: {e}")))
}

/// Replaces whatever `dir` holds (a local index or an older record) by `record`.
/// The caller holds the index lock ([`crate::index::store::lock`]).
pub fn write(dir: &Path, record: &PgRecord) -> Result<(), IndexError> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let old = sibling(dir, "old");
    if !dir.exists() && old.exists() {
        fs::rename(&old, dir).map_err(io_err(dir))?;
    }
    crate::fsutil::remove_stale_temps(parent);
    let tmp = crate::fsutil::temp_path(dir);
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    let path = tmp.join(RECORD_FILE);
    let written = serde_json::to_vec_pretty(record)
        .map_err(io::Error::other)
        .and_then(|text| crate::fsutil::write_bytes_atomic(&path, &text));
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&tmp);
        return Err(io_err(&path)(e));
    }
    crate::index::store::swap_in(&tmp, dir, &old, parent)
}
