//! The revision store: every configuration the daemon applied, kept as fsync'd files.
//!
//! One file per revision (`rev-000042.toml`): a first line `# lbd-revision {json}` with the
//! id, time, source, comment and the text's length in bytes, then the configuration text
//! exactly as applied. A revision is written to a temporary file, fsync'd, renamed into
//! place and the directory fsync'd, so a crash at any point leaves either the whole
//! revision or none of it: the last committed revision is always intact. Rolling back
//! writes the old text as a new revision.
//!
//! The store does not trust its directory. A file it cannot read back whole (cut short,
//! not written by lbd, a header that names another id) and a name lbd never writes are
//! *problems*: logged once, listed by [`Store::problems`] (status shows them) until the
//! file is gone or readable again, and never passed over silently: an unreadable newest
//! revision makes [`Store::latest`] an error instead of the revision before it. Ids only
//! grow: the next id is one past the highest file name, readable or not, and a name at
//! `u64::MAX` stops every commit with an error that names the file, instead of wrapping.
//!
//! A `Store` is a handle: clones share the problems found and may be used from other
//! threads (the daemon answers reads from tokio's blocking pool). Writing is the control
//! loop's alone.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::warn;

const HEADER: &str = "# lbd-revision ";

/// The largest configuration text a change (API or SIGHUP) may make a revision of.
pub const MAX_REVISION_BYTES: usize = 4 << 20;
/// The longest comment a revision may carry.
pub const MAX_COMMENT_BYTES: usize = 4096;
/// The most revisions one `config.import` may carry.
pub const MAX_IMPORT_REVISIONS: usize = 1000;
/// How long a diff searches for the smallest edit script before it settles for a coarser
/// one (still exact: applying it gives the other text).
pub const DIFF_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("revision store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no revision {0} in the store (see `lbctl config history`)")]
    NoRevision(u64),
    #[error(
        "revision {id} ({path}) is unreadable: {why}; lbd does not pass the revision before it for it (restore the file, or remove it)"
    )]
    Unreadable { id: u64, path: PathBuf, why: String },
    #[error(
        "revision store: no revision id follows {path}, the last one there can be; lbd never writes that name: remove the file, and the ids go on from the revisions before it"
    )]
    IdsExhausted { path: PathBuf },
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

/// A revision file's first line: its meta and the length of the text that follows, so
/// that a file cut short is told from a whole one (files from before the length was
/// written have none, and are taken as they are).
#[derive(Serialize, Deserialize)]
struct Header {
    #[serde(flatten)]
    meta: Meta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub meta: Meta,
    pub config: String,
}

#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    /// Revisions kept; older ones are deleted after each commit.
    keep: usize,
    /// What is wrong in the directory, by file name (a name may hold two: unreadable, and
    /// the last id): the message for each.
    problems: Arc<Mutex<BTreeMap<(String, Problem), String>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Problem {
    /// Not a name lbd writes.
    Name,
    /// Unreadable, or not the revision its name says.
    Content,
    /// The highest id there is: no id follows.
    LastId,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Unified diff of two texts. The search for the smallest diff stops at `timeout`; past
/// it, what is left is given as removed and added lines: coarser, still exact. Without
/// the bound a diff is quadratic in the lines changed (23 s for a 160k-line revision).
pub fn diff_texts(a: &str, b: &str, from: &str, to: &str, timeout: Duration) -> String {
    similar::TextDiff::configure()
        .timeout(timeout)
        .diff_lines(a, b)
        .unified_diff()
        .header(from, to)
        .to_string()
}

impl Store {
    /// Open (creating it if need be) and read every revision once, so that what is wrong
    /// is reported at start.
    pub fn open(dir: &Path, keep: usize) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        // Leftovers of a write that crashed before its rename: never a revision.
        for e in fs::read_dir(dir).map_err(io(dir))?.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_file(e.path());
            }
        }
        let s = Store {
            dir: dir.to_path_buf(),
            keep: keep.max(1),
            problems: Arc::default(),
        };
        for id in s.ids()? {
            let _ = s.get(id);
        }
        Ok(s)
    }

    fn name(id: u64) -> String {
        format!("rev-{id:06}.toml")
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(Store::name(id))
    }

    /// Record a problem (logged the first time it is seen, or when it changes).
    fn report(&self, name: &str, kind: Problem, message: String) {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        let key = (name.to_string(), kind);
        if p.get(&key) != Some(&message) {
            warn!("revision store: {message}");
            p.insert(key, message);
        }
    }

    fn clear(&self, name: &str, kind: Problem) {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        p.remove(&(name.to_string(), kind));
    }

    /// What is wrong in the store's directory now (as far as the store has looked: every
    /// file at open, and each one it reads since), one message each.
    pub fn problems(&self) -> Vec<String> {
        let _ = self.ids(); // forget the files that are gone
        let p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        p.values().cloned().collect()
    }

    /// The revision ids there are files for, readable or not, in order. Names that lbd
    /// does not write are reported and left out.
    fn ids(&self) -> Result<Vec<u64>, StoreError> {
        let mut ids = Vec::new();
        let mut seen = BTreeSet::new();
        for e in fs::read_dir(&self.dir).map_err(io(&self.dir))?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let Some(digits) = n.strip_prefix("rev-").and_then(|r| r.strip_suffix(".toml")) else {
                continue;
            };
            match digits.parse::<u64>() {
                Ok(id) if Store::name(id) == n => ids.push(id),
                _ => self.report(
                    &n,
                    Problem::Name,
                    format!(
                        "{} is not a revision file name lbd writes (rev-NNNNNN.toml, the id in at least six digits): ignored; remove it",
                        e.path().display()
                    ),
                ),
            }
            seen.insert(n);
        }
        ids.sort_unstable();
        {
            let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
            p.retain(|(name, kind), _| {
                seen.contains(name) && (*kind != Problem::LastId || ids.last() == Some(&u64::MAX))
            });
        }
        if ids.last() == Some(&u64::MAX) {
            let path = self.path(u64::MAX);
            self.report(
                &Store::name(u64::MAX),
                Problem::LastId,
                StoreError::IdsExhausted { path }.to_string(),
            );
        }
        Ok(ids)
    }

    /// The current revision's id: the highest there is a file for, readable or not (0 when
    /// there is none). An unreadable one is among [`Store::problems`].
    pub fn current(&self) -> Result<u64, StoreError> {
        Ok(self.ids()?.last().copied().unwrap_or(0))
    }

    /// The id the next commit takes: one past the highest file, readable or not, so that
    /// no id is used twice or goes backwards; an error naming the file if there is none.
    pub fn next_id(&self) -> Result<u64, StoreError> {
        self.room(1)
    }

    /// The next id, if `count` revisions fit after it without the ids running out.
    pub fn room(&self, count: u64) -> Result<u64, StoreError> {
        let last = self.ids()?.last().copied().unwrap_or(0);
        match last.checked_add(count.max(1)) {
            Some(_) => Ok(last + 1),
            None => Err(StoreError::IdsExhausted {
                path: self.path(last),
            }),
        }
    }

    /// Revision `id`: `NoRevision` if there is no file, `Unreadable` (and reported) if the
    /// file is not a whole revision with that id.
    pub fn get(&self, id: u64) -> Result<Revision, StoreError> {
        let path = self.path(id);
        let name = Store::name(id);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.clear(&name, Problem::Content);
                return Err(StoreError::NoRevision(id));
            }
            Err(e) => return Err(self.unreadable(id, path, e.to_string())),
        };
        let (first, config) = text.split_once('\n').unwrap_or((&text, ""));
        let Some(header) = first
            .strip_prefix(HEADER)
            .and_then(|j| serde_json::from_str::<Header>(j).ok())
        else {
            return Err(self.unreadable(
                id,
                path,
                format!(
                    "its first line is not a whole `{}{{...}}` header (cut short, or not written by lbd)",
                    HEADER.trim_end()
                ),
            ));
        };
        if header.meta.id != id {
            return Err(self.unreadable(
                id,
                path,
                format!("its header says it is revision {}", header.meta.id),
            ));
        }
        if let Some(bytes) = header.bytes
            && bytes != config.len() as u64
        {
            return Err(self.unreadable(
                id,
                path,
                format!(
                    "cut short: {} bytes of configuration where its header says {bytes}",
                    config.len()
                ),
            ));
        }
        self.clear(&name, Problem::Content);
        Ok(Revision {
            meta: header.meta,
            config: config.to_string(),
        })
    }

    fn unreadable(&self, id: u64, path: PathBuf, why: String) -> StoreError {
        let e = StoreError::Unreadable { id, path, why };
        self.report(&Store::name(id), Problem::Content, e.to_string());
        e
    }

    /// Newest first; unreadable revisions are left out (they are among the problems).
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

    /// The current revision: the newest, if it reads back whole. If it does not, an error
    /// (and a problem), never the one before it: that one is not what was applied last.
    pub fn latest(&self) -> Result<Option<Revision>, StoreError> {
        match self.ids()?.last() {
            None => Ok(None),
            Some(&id) => self.get(id).map(Some),
        }
    }

    /// The revision in force at `at_ms`: the newest made at or before it. An unreadable
    /// revision on the way is an error: it may be the one that was in force.
    pub fn at(&self, at_ms: u64) -> Result<Revision, StoreError> {
        for id in self.ids()?.into_iter().rev() {
            let r = match self.get(id) {
                Ok(r) => r,
                // Deleted by retention since the listing.
                Err(StoreError::NoRevision(_)) => continue,
                Err(e) => return Err(e),
            };
            if r.meta.at_ms <= at_ms {
                return Ok(r);
            }
        }
        Err(StoreError::NoneBefore(
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(at_ms)).to_string(),
        ))
    }

    /// Record `config` as the next revision (durably) and return its meta.
    pub fn commit(&self, config: &str, source: &str, comment: &str) -> Result<Meta, StoreError> {
        let id = self.next_id()?;
        let meta = Meta {
            id,
            at_ms: now_ms(),
            source: source.to_string(),
            comment: comment.to_string(),
        };
        let header = serde_json::to_string(&Header {
            meta: meta.clone(),
            bytes: Some(config.len() as u64),
        })
        .expect("meta serializes");
        let tmp = self.dir.join(format!(".tmp-{id}-{}", std::process::id()));
        let path = self.path(id);
        let written = (|| {
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(format!("{HEADER}{header}\n{config}").as_bytes())
                .map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
            fs::rename(&tmp, &path).map_err(io(&path))
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
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

    /// Unified diff of two revisions' configurations, bounded by [`DIFF_TIMEOUT`].
    pub fn diff(&self, from: u64, to: u64) -> Result<String, StoreError> {
        let (a, b) = (self.get(from)?, self.get(to)?);
        Ok(diff_texts(
            &a.config,
            &b.config,
            &format!("revision {from}"),
            &format!("revision {to}"),
            DIFF_TIMEOUT,
        ))
    }

    /// Every readable revision, oldest first, as JSON (backup). Unreadable ones are left
    /// out (they are among the problems).
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

    /// A fresh directory per test (they run in parallel).
    fn tmp() -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "lbd-store-test-{}-{}-{}",
            std::process::id(),
            now_ms(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
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

    fn names(problems: &[String]) -> String {
        problems.join("\n")
    }

    #[test]
    fn ids_never_wrap() {
        let d = tmp();
        let s = Store::open(&d, 3).unwrap();
        s.commit("x = 1\n", "file", "").unwrap();
        // A stray file at the last id: the next one would wrap to 0.
        let stray = d.join(format!("rev-{}.toml", u64::MAX));
        fs::write(&stray, fs::read(d.join("rev-000001.toml")).unwrap()).unwrap();
        let e = s
            .commit("x = 2\n", "api: test", "")
            .expect_err("a revision id past u64::MAX");
        assert!(
            e.to_string().contains(&stray.display().to_string()),
            "the error does not name the file to remove: {e}"
        );
        assert!(s.next_id().is_err());
        assert!(stray.exists(), "retention deleted the stray file");
        assert!(!d.join("rev-000000.toml").exists(), "an id wrapped to 0");
        assert!(
            names(&s.problems()).contains("rev-18446744073709551615.toml"),
            "{:?}",
            s.problems()
        );
        // Removed, as the error says: the ids go on from the real revisions.
        fs::remove_file(&stray).unwrap();
        assert_eq!(s.commit("x = 2\n", "api: test", "").unwrap().id, 2);
        assert_eq!(s.problems(), Vec::<String>::new());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_unreadable_newest_revision_is_reported_never_replaced_by_the_previous() {
        let d = tmp();
        let s = Store::open(&d, 10).unwrap();
        s.commit("x = 1\n", "file", "").unwrap();
        s.commit("x = 2\ny = \"a longer text\"\n", "file", "")
            .unwrap();
        let p2 = d.join("rev-000002.toml");
        let whole = fs::read(&p2).unwrap();
        // Cut in its text (the header is whole).
        fs::write(&p2, &whole[..whole.len() - 5]).unwrap();
        assert!(
            s.latest().is_err(),
            "revision 1 passed for the current one: {:?}",
            s.latest()
        );
        assert_eq!(s.current().unwrap(), 2);
        assert!(names(&s.problems()).contains("rev-000002.toml"));
        // Cut in its header, and found at open before anything asks for it.
        fs::write(&p2, &whole[..10]).unwrap();
        let s = Store::open(&d, 10).unwrap();
        let problems = names(&s.problems());
        assert!(problems.contains("rev-000002.toml"), "{problems}");
        assert!(s.latest().is_err());
        assert!(s.get(2).is_err());
        // The next revision never takes an unreadable one's id, and is current.
        assert_eq!(s.commit("x = 3\n", "file", "").unwrap().id, 3);
        assert_eq!(s.latest().unwrap().unwrap().config, "x = 3\n");
        let h: Vec<u64> = s.history().unwrap().iter().map(|m| m.id).collect();
        assert_eq!(h, vec![3, 1]);
        // Still reported until someone removes (or restores) it.
        assert!(names(&s.problems()).contains("rev-000002.toml"));
        fs::write(&p2, &whole).unwrap();
        assert_eq!(s.get(2).unwrap().meta.id, 2);
        assert_eq!(s.problems(), Vec::<String>::new());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn names_lbd_never_writes_are_reported_and_ignored() {
        let d = tmp();
        let s = Store::open(&d, 10).unwrap();
        s.commit("x = 1\n", "file", "").unwrap();
        let one = fs::read(d.join("rev-000001.toml")).unwrap();
        for n in [
            "rev-42.toml",
            "rev-x.toml",
            "rev-99999999999999999999999.toml",
        ] {
            fs::write(d.join(n), &one).unwrap();
        }
        assert_eq!(s.commit("x = 2\n", "file", "").unwrap().id, 2);
        let problems = names(&s.problems());
        for n in [
            "rev-42.toml",
            "rev-x.toml",
            "rev-99999999999999999999999.toml",
        ] {
            assert!(problems.contains(n), "{n} not reported: {problems}");
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_diff_gives_up_at_its_deadline() {
        let a: String = (0..2000).map(|i| format!("line {i}\n")).collect();
        let b = a
            .replace("line 100\n", "changed 100\n")
            .replace("line 1900\n", "changed 1900\n");
        let exact = diff_texts(&a, &b, "a", "b", std::time::Duration::from_secs(600));
        assert!(!exact.contains("-line 1000\n"), "{exact}");
        // Past its deadline, the search stops: the lines between the two changes are
        // given as removed and added, a coarser diff but a true one.
        let coarse = diff_texts(&a, &b, "a", "b", std::time::Duration::ZERO);
        assert!(
            coarse.contains("-line 1000\n") && coarse.contains("+line 1000\n"),
            "the diff ran past its deadline"
        );
    }
}
