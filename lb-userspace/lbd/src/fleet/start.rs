//! Starting in fleet mode: which revision the node runs first.
//!
//! With etcd reachable, the fleet's current revision (or none, for a new fleet); without,
//! the revision cached on disk by the last run, so that a node restarted while etcd is
//! down still serves. A current revision this node cannot run is refused (and reported)
//! and the cached one runs instead. With neither etcd nor a cache the node does not start:
//! it has nothing it knows to be the fleet's.

use std::{net::SocketAddr, path::Path};

use anyhow::{Result, bail};
use lb_api::Refusal;
use lb_control::{Config, FleetConfig, check_node_text, compose};
use tracing::{error, info, warn};

use super::{Cache, Etcd, FleetRevision, check_here};

pub struct Started {
    /// The configuration to run first: the fleet's revision, then the node's file.
    pub text: String,
    pub cfg: Config,
    pub running: Option<FleetRevision>,
    pub etcd: Option<Etcd>,
    pub refused: Option<Refusal>,
    pub cache: Cache,
    /// Why etcd could not be reached at start, if it could not.
    pub etcd_error: Option<String>,
}

/// Where peers reach this node's `/fleet`: `advertise`, or the metrics listener when it
/// is an address others can reach.
pub fn advertise(f: &FleetConfig, metrics: SocketAddr) -> Option<SocketAddr> {
    f.advertise.or_else(|| {
        let ip = metrics.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(metrics)
    })
}

pub async fn start(node_text: &str, node: &Config, path: &Path) -> Result<Started> {
    let f = node.daemon.fleet.as_ref().expect("fleet mode");
    check_node_text(node_text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let cache = Cache::new(&node.daemon.state_dir, &f.name);
    let cached = cache.load();
    let cached_id = match &cached {
        Ok(Some(r)) => r.meta.id,
        _ => 0,
    };
    let etcd = Etcd::connect(
        f,
        node.daemon.revisions_kept,
        cached_id,
        super::first_member(f),
    )
    .await
    .map(|(e, _)| e);
    let mut refused = None;
    let mut current = None;
    // Why the fleet's current revision could not be read, though etcd answered.
    let mut unread: Option<String> = None;
    let etcd_error = etcd.as_ref().err().map(ToString::to_string);
    let etcd = match etcd {
        Ok(etcd) => {
            // The fleet's current revision; a failure to read it (etcd lost meanwhile, a
            // revision key removed by hand) leaves the cache to start from.
            let head = async {
                let head = etcd.head(cached_id).await?;
                match head {
                    0 => Ok(None),
                    id => etcd.get(id, cached_id).await.map(Some),
                }
            };
            match head.await {
                Ok(Some(rev)) => {
                    let id = rev.meta.id;
                    match check_here(&rev.config, node_text, id) {
                        Ok(_) => current = Some(rev),
                        Err(e) => {
                            error!(revision = id, error = %e.message, "the fleet's current revision is refused on this node");
                            refused = Some(Refusal {
                                revision: id,
                                error: e.message,
                            });
                        }
                    }
                }
                Ok(None) => {
                    info!(fleet = %etcd.keys.describe(), "the fleet has no revision yet: running no VIP until one is applied");
                }
                Err(e) => {
                    error!(error = %e, "reading the fleet's current revision failed; starting from the cache");
                    unread = Some(e.to_string());
                }
            }
            Some(etcd)
        }
        Err(e) => {
            warn!(error = %e, "the fleet's etcd is out of reach at start");
            None
        }
    };
    let running = match (current, cached, &etcd) {
        (Some(rev), _, _) => Some(rev),
        (None, Ok(Some(rev)), _) => {
            info!(revision = rev.meta.id, cache = %cache.path().display(), "starting from the cached fleet revision");
            Some(rev)
        }
        (None, Ok(None), Some(_)) if unread.is_none() => None,
        (None, Ok(None), Some(_)) => bail!(
            "the fleet's current revision could not be read ({}) and {} holds no cached revision: this node has nothing it knows to be the fleet's",
            unread.unwrap_or_default(),
            cache.path().display()
        ),
        (None, Err(e), Some(_)) => {
            warn!(error = %e, "the cached fleet revision is unusable; etcd is reachable, so it is not needed");
            None
        }
        (None, Ok(None), None) => bail!(
            "the fleet's etcd ({}) is out of reach and {} holds no cached revision: this node has nothing it knows to be the fleet's; start it once with etcd reachable",
            f.endpoints.join(", "),
            cache.path().display()
        ),
        (None, Err(e), None) => bail!(
            "the fleet's etcd ({}) is out of reach and the cached revision is unusable: {e}",
            f.endpoints.join(", ")
        ),
    };
    let fleet_text = running.as_ref().map_or("", |r| r.config.as_str());
    let text = compose(fleet_text, node_text);
    let label = format!(
        "fleet revision {}",
        running.as_ref().map_or(0, |r| r.meta.id)
    );
    let cfg = Config::parse(&text, Path::new(&label))?;
    if let Some(rev) = &running
        && etcd.is_some()
        && let Err(e) = cache.store(rev)
    {
        error!(error = %e, path = %cache.path().display(), "could not cache the fleet revision");
    }
    Ok(Started {
        text,
        cfg,
        running,
        etcd,
        refused,
        cache,
        etcd_error,
    })
}
