//! Which VIP addresses this node announces, and why not the others. Pure: the daemon
//! writes the result into BIRD's include files; the rules are tested here.
//!
//! A VIP wants its address announced while all of these hold: `[announce]` is on, the VIP's
//! `announce` is true, the node is not in maintenance, the dataplane serves it (program
//! attached, maps written), and it has at least `announce_min_backends` usable backends (a
//! backup pool that serves counts). Several VIPs on one address share its route: it is
//! announced while any of them wants it, as the router cannot tell ports apart.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::Serialize;

use crate::{config::Config, controller::VipState};

/// Why a VIP does not want its address announced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "why")]
pub enum Withheld {
    /// `[announce]` has no routes file: announcements are off on this node.
    Off,
    /// The VIP's `announce = false`.
    Disabled,
    /// `lbctl node drain`.
    Maintenance,
    /// The dataplane does not serve (not attached, maps not in step).
    NotServing {
        detail: String,
    },
    TooFewBackends {
        usable: usize,
        needed: u32,
    },
    /// Its backends came back from too few, and the rest of them are given their checks'
    /// rise before the address is announced: until then this node's ring may differ from
    /// its peers', and a connection the router moves between nodes would change backend.
    Settling {
        remaining_ms: u64,
    },
    /// Fleet mode: a peer has run a newer revision than this node for longer than the
    /// grace period; a node that diverges must not attract flows.
    Behind {
        running: u64,
        fleet: u64,
    },
}

impl std::fmt::Display for Withheld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Withheld::Off => f.write_str("announcements are off ([announce] sets no routes file)"),
            Withheld::Disabled => f.write_str("announce = false"),
            Withheld::Maintenance => f.write_str("the node is drained (lbctl node resume)"),
            Withheld::NotServing { detail } => write!(f, "the dataplane does not serve: {detail}"),
            Withheld::TooFewBackends { usable, needed } => {
                write!(f, "{usable} usable backends, {needed} needed")
            }
            Withheld::Settling { remaining_ms } => write!(
                f,
                "its backends are back; announced once their checks have settled ({remaining_ms} ms)"
            ),
            Withheld::Behind { running, fleet } => write!(
                f,
                "the node runs revision {running}, its peers run {fleet} (see `lbctl fleet status`)"
            ),
        }
    }
}

/// One VIP's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipAnnouncement {
    pub vip: String,
    pub address: IpAddr,
    /// `Ok` when this VIP wants its address announced.
    pub wants: Result<(), Withheld>,
    /// Whether its address is announced (by it or by another VIP on the address).
    pub announced: bool,
}

/// The routes to announce, by family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    pub v4: BTreeSet<Ipv4Addr>,
    pub v6: BTreeSet<Ipv6Addr>,
}

impl Routes {
    pub fn contains(&self, a: IpAddr) -> bool {
        match a {
            IpAddr::V4(a) => self.v4.contains(&a),
            IpAddr::V6(a) => self.v6.contains(&a),
        }
    }

    fn insert(&mut self, a: IpAddr) {
        match a {
            IpAddr::V4(a) => {
                self.v4.insert(a);
            }
            IpAddr::V6(a) => {
                self.v6.insert(a);
            }
        }
    }
}

/// How long a VIP that came back from too few backends waits before it is announced: the
/// longest time any of its backends' checks take to rise (rise x interval, plus a timeout).
pub fn settle_ms(v: &VipState) -> u64 {
    v.backends
        .iter()
        .map(|b| b.health.rise as u64 * b.health.interval_ms + b.health.timeout_ms)
        .max()
        .unwrap_or(0)
}

/// What to announce for `vips` under `cfg`, given whether the dataplane serves, in fleet
/// mode whether the node is left behind (`fleet::behind`), and which VIPs are settling
/// (name, ms left; see [`Withheld::Settling`]).
pub fn decide(
    cfg: &Config,
    vips: &[VipState],
    serving: Result<(), String>,
    behind: Option<Withheld>,
    settling: &[(String, u64)],
) -> (Routes, Vec<VipAnnouncement>) {
    let a = &cfg.announce;
    let wants = |v: &VipState| -> Result<(), Withheld> {
        if !a.enabled() {
            return Err(Withheld::Off);
        }
        if !v.cfg.announce {
            return Err(Withheld::Disabled);
        }
        if a.maintenance {
            return Err(Withheld::Maintenance);
        }
        if let Some(b) = &behind {
            return Err(b.clone());
        }
        if let Err(detail) = &serving {
            return Err(Withheld::NotServing {
                detail: detail.clone(),
            });
        }
        let needed = v.cfg.announce_min_backends.unwrap_or(a.min_backends);
        let usable = v.serving_backends();
        if usable < needed as usize {
            return Err(Withheld::TooFewBackends { usable, needed });
        }
        if let Some((_, remaining_ms)) = settling.iter().find(|(n, _)| *n == v.cfg.name) {
            return Err(Withheld::Settling {
                remaining_ms: *remaining_ms,
            });
        }
        Ok(())
    };
    let verdicts: Vec<(&VipState, Result<(), Withheld>)> =
        vips.iter().map(|v| (v, wants(v))).collect();
    let mut routes = Routes::default();
    for (v, w) in &verdicts {
        if w.is_ok() {
            routes.insert(v.cfg.address);
        }
    }
    let each = verdicts
        .into_iter()
        .map(|(v, wants)| VipAnnouncement {
            vip: v.cfg.name.clone(),
            address: v.cfg.address,
            announced: routes.contains(v.cfg.address),
            wants,
        })
        .collect();
    (routes, each)
}

/// An include file of BIRD static routes for `addrs` (`len` is 32 or 128).
pub fn render<A: std::fmt::Display>(addrs: impl IntoIterator<Item = A>, len: u8) -> String {
    let mut out = String::from(
        "# Written by lbd ([announce] in its configuration): the VIP routes this node\n\
         # announces. Do not edit; lbd rewrites it whenever the set changes.\n",
    );
    for a in addrs {
        out.push_str(&format!("route {a}/{len} blackhole;\n"));
    }
    out
}
