//! The last fleet revision this node applied, on local disk: a node that restarts while
//! etcd is unreachable starts from it instead of from nothing.
//!
//! One JSON file in the state directory, replaced atomically (temporary file, fsync,
//! rename, fsync of the directory): a crash leaves the old revision or the new one whole.
//! A file that names another fleet, or does not read back, is refused by name.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::etcd::FleetRevision;

const FILE: &str = "fleet-cache.json";

#[derive(Serialize, Deserialize)]
struct Cached {
    fleet: String,
    #[serde(flatten)]
    revision: FleetRevision,
}

pub struct Cache {
    path: PathBuf,
    fleet: String,
}

impl Cache {
    pub fn new(state_dir: &Path, fleet: &str) -> Cache {
        Cache {
            path: state_dir.join(FILE),
            fleet: fleet.to_string(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cached revision; `Ok(None)` when there is none.
    pub fn load(&self) -> Result<Option<FleetRevision>, String> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", self.path.display())),
        };
        let c: Cached = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{} does not read back ({e}); remove it to start without a cached revision",
                self.path.display()
            )
        })?;
        if c.fleet != self.fleet {
            return Err(format!(
                "{} holds fleet {:?}'s revision, not {:?}'s: remove it",
                self.path.display(),
                c.fleet,
                self.fleet
            ));
        }
        Ok(Some(c.revision))
    }

    pub fn store(&self, revision: &FleetRevision) -> std::io::Result<()> {
        let c = Cached {
            fleet: self.fleet.clone(),
            revision: revision.clone(),
        };
        let text = serde_json::to_string(&c).expect("a cached revision serializes");
        crate::handler::write_atomically(&self.path, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Meta;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lbd-cache-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn rev(id: u64) -> FleetRevision {
        FleetRevision {
            meta: Meta {
                id,
                at_ms: 1,
                source: "lb1: api: config.apply".into(),
                comment: String::new(),
            },
            config: "[[vip]]\nname = \"web\"\n".into(),
            history_only: false,
        }
    }

    #[test]
    fn the_cache_keeps_the_last_revision_and_refuses_what_is_not_its_own() {
        let d = dir("roundtrip");
        let c = Cache::new(&d, "edge");
        assert_eq!(c.load(), Ok(None));
        c.store(&rev(3)).unwrap();
        c.store(&rev(4)).unwrap();
        assert_eq!(c.load(), Ok(Some(rev(4))));
        // Another fleet's cache is not taken for this one's.
        let e = Cache::new(&d, "core").load().unwrap_err();
        assert!(e.contains("\"edge\"") && e.contains("remove it"), "{e}");
        // A file cut short is refused by name, not passed over.
        let text = std::fs::read_to_string(c.path()).unwrap();
        std::fs::write(c.path(), &text[..text.len() / 2]).unwrap();
        let e = c.load().unwrap_err();
        assert!(
            e.contains("fleet-cache.json") && e.contains("does not read back"),
            "{e}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
