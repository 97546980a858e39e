//! The revision store: every configuration the daemon applied, kept as fsync'd files.
//!
//! One file per revision (`rev-000042.toml`): a first line `# lbd-revision {json}` with the
//! id, time and source, then the configuration text exactly as applied. A revision is
//! written to a temporary file, fsync'd, renamed into place and the directory fsync'd, so a
//! crash at any point leaves either the whole revision or none of it: the last committed
//! revision is always intact. Rolling back writes the old text as a new revision.

use std::{
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

const HEADER: &str = "# lbd-revision ";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("revision store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no revision {0} in the store (see `lbctl config history`)")]
    NoRevision(u64),
    #[error("no revision at or before {0}")]
    NoneBefore(String),
    #[error("the store is empty")]
    Empty,
    #[error("import file: {0}")]
    Import(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub id: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What made it: "file", "reload", "api: backend.set", "rollback to 3", "import".
    pub source: String,
    #[serde(default)]
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub meta: Meta,
    pub config: String,
}

pub struct Store {
    dir: PathBuf,
    /// Revisions kept; older ones are deleted after each commit.
    keep: usize,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Store {
    pub fn open(dir: &Path, keep: usize) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        // Leftovers of a write that crashed before its rename: never a revision.
        for e in fs::read_dir(dir).map_err(io(dir))?.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            keep: keep.max(1),
        })
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("rev-{id:06}.toml"))
    }

    fn ids(&self) -> Result<Vec<u64>, StoreError> {
        let mut ids: Vec<u64> = fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_prefix("rev-")?.strip_suffix(".toml")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    pub fn get(&self, id: u64) -> Result<Revision, StoreError> {
        let path = self.path(id);
        let text = fs::read_to_string(&path).map_err(|_| StoreError::NoRevision(id))?;
        let (first, config) = text.split_once('\n').unwrap_or((&text, ""));
        let meta: Meta = first
            .strip_prefix(HEADER)
            .and_then(|j| serde_json::from_str(j).ok())
            .ok_or(StoreError::NoRevision(id))?;
        Ok(Revision {
            meta,
            config: config.to_string(),
        })
    }

    /// Newest first.
    pub fn history(&self) -> Result<Vec<Meta>, StoreError> {
        let mut out: Vec<Meta> = self
            .ids()?
            .into_iter()
            .filter_map(|id| self.get(id).ok())
            .map(|r| r.meta)
            .collect();
        out.reverse();
        Ok(out)
    }

    pub fn latest(&self) -> Result<Option<Revision>, StoreError> {
        for id in self.ids()?.into_iter().rev() {
            if let Ok(r) = self.get(id) {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// The revision in force at `at_ms`: the newest made at or before it.
    pub fn at(&self, at_ms: u64) -> Result<Revision, StoreError> {
        for id in self.ids()?.into_iter().rev() {
            let r = self.get(id)?;
            if r.meta.at_ms <= at_ms {
                return Ok(r);
            }
        }
        Err(StoreError::NoneBefore(
            humantime::format_rfc3339_millis(UNIX_EPOCH + std::time::Duration::from_millis(at_ms))
                .to_string(),
        ))
    }

    /// Record `config` as the next revision (durably) and return its meta.
    pub fn commit(&self, config: &str, source: &str, comment: &str) -> Result<Meta, StoreError> {
        let id = self.ids()?.last().copied().unwrap_or(0) + 1;
        let meta = Meta {
            id,
            at_ms: now_ms(),
            source: source.to_string(),
            comment: comment.to_string(),
        };
        let header = serde_json::to_string(&meta).expect("meta serializes");
        let tmp = self.dir.join(format!(".tmp-{id}-{}", std::process::id()));
        {
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(format!("{HEADER}{header}\n{config}").as_bytes())
                .map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        let path = self.path(id);
        fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        let ids = self.ids()?;
        if ids.len() > self.keep {
            for old in &ids[..ids.len() - self.keep] {
                let _ = fs::remove_file(self.path(*old));
            }
        }
        Ok(meta)
    }

    /// Unified diff of two revisions' configurations.
    pub fn diff(&self, from: u64, to: u64) -> Result<String, StoreError> {
        let (a, b) = (self.get(from)?, self.get(to)?);
        Ok(similar::TextDiff::from_lines(&a.config, &b.config)
            .unified_diff()
            .header(&format!("revision {from}"), &format!("revision {to}"))
            .to_string())
    }

    /// Every revision, oldest first, as JSON (backup).
    pub fn export(&self) -> Result<String, StoreError> {
        let revs: Vec<Revision> = self
            .ids()?
            .into_iter()
            .filter_map(|id| self.get(id).ok())
            .collect();
        Ok(serde_json::to_string_pretty(&revs).expect("revisions serialize"))
    }

    /// Parse an export (restore validates and applies the newest one).
    pub fn parse_export(text: &str) -> Result<Vec<Revision>, StoreError> {
        let revs: Vec<Revision> =
            serde_json::from_str(text).map_err(|e| StoreError::Import(e.to_string()))?;
        if revs.is_empty() {
            return Err(StoreError::Import("no revisions in the file".into()));
        }
        Ok(revs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "lbd-store-test-{}-{}",
            std::process::id(),
            now_ms()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn commit_history_diff_at_and_retention() {
        let d = tmp();
        let s = Store::open(&d, 3).unwrap();
        assert!(s.latest().unwrap().is_none());
        let a = s.commit("x = 1\n", "file", "").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = s.commit("x = 2\n", "api: test", "raise x").unwrap();
        assert_eq!((a.id, b.id), (1, 2));
        assert_eq!(s.latest().unwrap().unwrap().config, "x = 2\n");
        assert!(s.diff(1, 2).unwrap().contains("-x = 1\n+x = 2"));
        assert_eq!(s.at(a.at_ms).unwrap().meta.id, 1);
        assert_eq!(s.at(b.at_ms + 10).unwrap().meta.id, 2);
        s.commit("x = 3\n", "file", "").unwrap();
        s.commit("x = 4\n", "file", "").unwrap();
        let h = s.history().unwrap();
        assert_eq!(h.iter().map(|m| m.id).collect::<Vec<_>>(), vec![4, 3, 2]);
        let revs = Store::parse_export(&s.export().unwrap()).unwrap();
        assert_eq!(revs.len(), 3);
        // A crashed write leaves a temp file, never a revision.
        fs::write(d.join(".tmp-9-1"), "partial").unwrap();
        let s = Store::open(&d, 3).unwrap();
        assert_eq!(s.latest().unwrap().unwrap().meta.id, 4);
        assert!(!d.join(".tmp-9-1").exists());
        fs::remove_dir_all(&d).unwrap();
    }
}
