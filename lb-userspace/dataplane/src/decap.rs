//! The decapsulation program for backends (`lb_decap`): strips the balancer's IP-in-IP in
//! XDP so backends need no ipip/ip6tnl module and no tunnel device.
//!
//! Two ways to run it: [`Decap::attach`] (attached while the returned value lives: the test
//! suite and the demo), and the pinned form behind `lbd decap attach|status|detach`
//! ([`attach_pinned`], [`status`], [`detach_pinned`]), which outlives the command. The pinned
//! form keeps, per interface, a directory under the pin directory:
//!
//! ```text
//! PIN_DIR/IF/link             the XDP bpf_link (the program stays attached while it is pinned)
//! PIN_DIR/IF/LB_DECAP_ADDRS   the allow-list of outer destinations
//! PIN_DIR/IF/LB_DECAP_STATS   the per-CPU counters, by lb_common::Reason
//! ```
//!
//! A second attach on an interface loads the program again with the pinned maps, rewrites
//! the allow-list in place (new addresses first, then the ones no longer listed go) and
//! replaces the program on the pinned link atomically: no packet meets the NIC without it.

use std::{
    collections::BTreeSet,
    ffi::CString,
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, Map, MapData, PerCpuArray},
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpError, XdpLink},
    },
};
use lb_common::{DecapAddr, FAMILY_V4, FAMILY_V6, MAP_DECAP_ADDRS, MAP_DECAP_STATS, Reason};
use thiserror::Error;

use crate::{
    dataplane::DataplaneError,
    pins::{PINNED_MAPS, differences, first_mismatch, object_shapes, on_bpffs},
    programs::LB_DECAP,
};

pub const PROGRAM: &str = "lb_decap";

/// Where `lbd decap` pins by default: beside the balancer's `/sys/fs/bpf/lb`, never in it.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb-decap";

/// The name of the link pin in an interface's directory.
pub const LINK_PIN: &str = "link";

/// The maps pinned per interface.
pub const DECAP_MAPS: &[&str] = &[MAP_DECAP_ADDRS, MAP_DECAP_STATS];

/// The reasons `lb_decap` counts, in the order `status` shows them.
pub const DECAP_REASONS: [Reason; 5] = [
    Reason::Decapsulated,
    Reason::PassNotVip,
    Reason::PassNotIp,
    Reason::PassMalformed,
    Reason::DropAdjustFailed,
];

pub struct Decap {
    ebpf: Ebpf,
}

impl Decap {
    /// Load and attach to `iface` (in the caller's network namespace), accepting IP-in-IP
    /// whose outer destination is one of `addrs`.
    pub fn attach(iface: &str, mode: XdpMode, addrs: &[IpAddr]) -> Result<Self, DataplaneError> {
        let mut ebpf = Ebpf::load(LB_DECAP)?;
        {
            let map = ebpf
                .map_mut(MAP_DECAP_ADDRS)
                .ok_or(DataplaneError::MissingMap(MAP_DECAP_ADDRS))?;
            let mut m: HashMap<_, DecapAddr, u8> =
                HashMap::try_from(map).map_err(|source| DataplaneError::Map {
                    map: MAP_DECAP_ADDRS,
                    source,
                })?;
            for a in addrs {
                m.insert(key_of(*a), 1, 0)
                    .map_err(|source| DataplaneError::Map {
                        map: MAP_DECAP_ADDRS,
                        source,
                    })?;
            }
        }
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or(DataplaneError::MissingProgram(PROGRAM))?
            .try_into()?;
        prog.load()?;
        prog.attach(iface, mode)?;
        Ok(Decap { ebpf })
    }

    /// Packets decapsulated so far (summed over CPUs).
    pub fn decapsulated(&self) -> Result<u64, DataplaneError> {
        let map = self
            .ebpf
            .map(MAP_DECAP_STATS)
            .ok_or(DataplaneError::MissingMap(MAP_DECAP_STATS))?;
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| DataplaneError::Map {
                map: MAP_DECAP_STATS,
                source,
            })?;
        let v = stats
            .get(&(Reason::Decapsulated as u32), 0)
            .map_err(|source| DataplaneError::Map {
                map: MAP_DECAP_STATS,
                source,
            })?;
        Ok(v.iter().sum())
    }
}

fn key_of(a: IpAddr) -> DecapAddr {
    let mut key = DecapAddr::default();
    match a {
        IpAddr::V4(v4) => {
            key.addr[..4].copy_from_slice(&v4.octets());
            key.family = FAMILY_V4;
        }
        IpAddr::V6(v6) => {
            key.addr = v6.octets();
            key.family = FAMILY_V6;
        }
    }
    key
}

fn addr_of(k: &DecapAddr) -> Option<IpAddr> {
    match k.family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(
            k.addr[0], k.addr[1], k.addr[2], k.addr[3],
        ))),
        FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(k.addr))),
        _ => None,
    }
}

/// What went wrong with the pinned decap program, and what to do about it.
#[derive(Debug, Error)]
pub enum DecapError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(
        "not permitted: loading, attaching and reading XDP programs needs root (CAP_BPF or \
         CAP_SYS_ADMIN, and CAP_NET_ADMIN): run it as root"
    )]
    NotPrivileged,
    #[error(
        "no interface {0:?} in this network namespace: `ip link show` lists them (in a \
         namespace, run the command with `ip netns exec NS`)"
    )]
    NoInterface(String),
    #[error("{0:?} is not an interface name")]
    BadInterface(String),
    #[error(
        "pin directory {}: not on a bpf filesystem, so nothing pinned would outlive the \
         command; mount one (`mount -t bpf bpf /sys/fs/bpf`) or give --pin-dir a directory \
         on one",
        .0.display()
    )]
    NotBpffs(PathBuf),
    #[error("pin directory {}: {source}; is bpffs mounted (`mount -t bpf bpf /sys/fs/bpf`)?", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "pin directory {}: it holds the balancer's pins (it is `lbd run`'s pin_dir): give the \
         decap program a directory of its own, for example the default {DEFAULT_PIN_DIR}",
        .0.display()
    )]
    BalancerDir(PathBuf),
    #[error(
        "{iface}: another XDP program is attached to it ({detail}), not one pinned under {}: \
         `ip link show dev {iface}` and `bpftool net show dev {iface}` show it; detach it \
         (or its owner's service) first. An interface takes one XDP program: the balancer and \
         the decap program cannot share one",
        dir.display()
    )]
    Busy {
        iface: String,
        dir: PathBuf,
        detail: String,
    },
    #[error("{iface}: its driver has no native XDP ({detail}): attach with --mode generic")]
    NoNative { iface: String, detail: String },
    #[error(
        "the allow-list holds at most {max} addresses ({given} given): list only the \
         backend's own addresses that the balancer sends to"
    )]
    TooMany { given: usize, max: usize },
    #[error(
        "nothing is pinned for {iface} under {}: `lbd decap status --pin-dir {}` lists what is",
        dir.display(),
        dir.display()
    )]
    NotPinned { iface: String, dir: PathBuf },
    #[error(
        "the link pinned at {} is on ifindex {pinned}, but {iface} here is ifindex {here} (a \
         NIC of the same name created since, or another network namespace): run `lbd decap \
         detach --interface {iface} --pin-dir {}` in the namespace it was attached in, then \
         attach again",
        path.display(),
        path.parent().and_then(Path::parent).unwrap_or(path).display()
    )]
    OtherNic {
        iface: String,
        path: PathBuf,
        pinned: u32,
        here: u32,
    },
    #[error(
        "pinned map {} has {found}; this build needs {needed}: the layout changed between \
         versions. Nothing was changed. To move to this version, run `lbd decap detach \
         --interface {iface} --pin-dir {}` and attach again (the interface passes IP-in-IP \
         undecapsulated in between)",
        path.display(),
        path.parent().and_then(Path::parent).unwrap_or(path).display()
    )]
    MapMismatch {
        iface: String,
        path: PathBuf,
        found: String,
        needed: String,
    },
    #[error("{what} {}: {detail}", path.display())]
    Pin {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DecapError + '_ {
    move |source| DecapError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How `attach_pinned` put the program on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// No link was pinned: attached and pinned afresh.
    New,
    /// The program on the pinned link was replaced atomically.
    Replaced,
    /// The pinned link's NIC was gone (deleted, maybe created again): the stale pin was
    /// removed and the program attached afresh.
    Renewed,
}

/// What `attach_pinned` did.
#[derive(Clone, Debug)]
pub struct AttachReport {
    pub how: Attached,
    pub ifindex: u32,
    pub link_id: u32,
    pub program_id: u32,
    /// The allow-list now in force, sorted.
    pub allow_list: Vec<IpAddr>,
    pub added: Vec<IpAddr>,
    pub removed: Vec<IpAddr>,
    /// The interface's directory under the pin directory.
    pub dir: PathBuf,
}

/// The state of an interface's pinned link, as `status` finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Attached to the NIC of the interface's name in this network namespace.
    Attached {
        ifindex: u32,
        link_id: u32,
        program_id: u32,
    },
    /// The link's NIC is gone (deleted): nothing is attached; the pins remain.
    Severed { link_id: u32 },
    /// Attached to another NIC than the one of this name here (another namespace, or a NIC
    /// created again under the name).
    Elsewhere {
        ifindex: u32,
        here: Option<u32>,
        link_id: u32,
        program_id: u32,
    },
    /// No link is pinned (only maps).
    NoLink,
}

impl LinkState {
    pub fn label(&self) -> &'static str {
        match self {
            LinkState::Attached { .. } => "attached",
            LinkState::Severed { .. } => "severed",
            LinkState::Elsewhere { .. } => "elsewhere",
            LinkState::NoLink => "not attached",
        }
    }
}

/// One interface's pinned decap program: `status`'s answer.
#[derive(Clone, Debug)]
pub struct DecapStatus {
    pub interface: String,
    pub link: LinkState,
    /// Sorted; empty if the map is not pinned.
    pub allow_list: Vec<IpAddr>,
    /// `DECAP_REASONS` with their counts summed over CPUs (zeros if the map is not pinned).
    pub counters: Vec<(Reason, u64)>,
}

/// Attach `lb_decap` to `iface` (in the caller's network namespace) with the allow-list
/// `addrs` and pin it under `pin_dir/iface`, or, if it is pinned there already, replace the
/// program on its link and rewrite the allow-list in place. An empty `addrs` decapsulates
/// nothing and passes every packet (an XDP program on a veth peer, which `XDP_TX` into a
/// veth needs). `mode` applies when the link is created: a replaced link keeps its mode.
pub fn attach_pinned(
    pin_dir: &Path,
    iface: &str,
    mode: XdpMode,
    addrs: &[IpAddr],
) -> Result<AttachReport, DecapError> {
    check_name(iface)?;
    require_privileges()?;
    let ifindex = if_index(iface).ok_or_else(|| DecapError::NoInterface(iface.to_string()))?;
    // The directories this attach creates (the pin directory and any missing parents), to
    // remove again if it fails: the nearest one that exists stays.
    let made = pin_dir
        .ancestors()
        .find(|a| a.exists())
        .map(Path::to_path_buf);
    let new_pin_dir = made.as_deref() != Some(pin_dir);
    prepare_pin_dir(pin_dir)?;
    let dir = pin_dir.join(iface);
    let _lock = lock_dir(&dir, true).inspect_err(|_| {
        let _ = std::fs::remove_dir(&dir);
        remove_up_to(pin_dir, made.as_deref());
    })?;
    // Whatever this attach pins for an interface that had no link goes again if it fails
    // (before the lock is released: `undo` is dropped first).
    let link_path = dir.join(LINK_PIN);
    let had_link = link_path.exists();
    let mut undo = Undo {
        dir: (!had_link).then(|| dir.clone()),
        made: new_pin_dir.then(|| (pin_dir.to_path_buf(), made.clone())),
    };

    let shapes = object_shapes(LB_DECAP, DECAP_MAPS, |_| None)?;
    let max = shapes
        .iter()
        .find(|(m, _)| *m == MAP_DECAP_ADDRS)
        .map_or(0, |(_, s)| s.max_entries as usize);
    let want: BTreeSet<IpAddr> = addrs.iter().copied().collect();
    if want.len() > max {
        return Err(DecapError::TooMany {
            given: want.len(),
            max,
        });
    }
    if let Some((_, path, found, needed)) = first_mismatch(&dir, shapes)? {
        let (found, needed) = differences(&found, &needed);
        return Err(DecapError::MapMismatch {
            iface: iface.to_string(),
            path,
            found,
            needed,
        });
    }
    // Refuse a link on another NIC before anything is changed.
    let pinned_info = if had_link {
        let info = pinned_link_info(&link_path)?;
        if info.ifindex != 0 && info.ifindex != ifindex {
            return Err(DecapError::OtherNic {
                iface: iface.to_string(),
                path: link_path,
                pinned: info.ifindex,
                here: ifindex,
            });
        }
        Some(info)
    } else {
        None
    };

    let mut loader = EbpfLoader::new();
    let map_paths: Vec<(&str, PathBuf)> = DECAP_MAPS.iter().map(|m| (*m, dir.join(m))).collect();
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    // Maps pinned already (a second attach) are reused as they are: counters carry on.
    let mut ebpf = loader.load(LB_DECAP).map_err(DataplaneError::from)?;
    let (added, removed, allow_list) = write_allow_list(&mut ebpf, &want)?;

    let prog: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .ok_or(DataplaneError::MissingProgram(PROGRAM))?
        .try_into()
        .map_err(DataplaneError::from)?;
    prog.load().map_err(DataplaneError::from)?;
    let link_err = |detail: String| DecapError::Pin {
        what: "link pin",
        path: link_path.clone(),
        detail,
    };
    let mut how = Attached::New;
    if pinned_info.is_some() {
        let pinned = PinnedLink::from_pin(&link_path).map_err(|e| link_err(e.to_string()))?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| link_err(e.to_string()))?;
        match prog.attach_to_link(link) {
            Ok(_) => how = Attached::Replaced,
            Err(ProgramError::SyscallError(aya::sys::SyscallError { io_error, .. }))
                if io_error.raw_os_error() == Some(libc::ENOLINK) =>
            {
                // Severed: its NIC was deleted. The kernel keeps the link while pinned, but it
                // is attached to nothing and cannot be updated.
                std::fs::remove_file(&link_path)
                    .map_err(|e| link_err(format!("removing the pin of a severed link: {e}")))?;
                how = Attached::Renewed;
            }
            Err(e) => return Err(DataplaneError::from(e).into()),
        }
    }
    if how != Attached::Replaced {
        let id = prog
            .attach(iface, mode)
            .map_err(|e| attach_error(iface, pin_dir, e))?;
        let link = prog.take_link(id).map_err(DataplaneError::from)?;
        let fd = FdLink::try_from(link).map_err(|e| {
            link_err(format!(
                "{e}: the kernel attached without a bpf_link, so the program could not outlive \
                 the command (XDP links need Linux 5.9 or later)"
            ))
        })?;
        fd.pin(&link_path).map_err(|e| link_err(e.to_string()))?;
    }
    undo.dir = None;
    undo.made = None;
    let info = pinned_link_info(&link_path)?;
    Ok(AttachReport {
        how,
        ifindex: if info.ifindex != 0 {
            info.ifindex
        } else {
            ifindex
        },
        link_id: info.link_id,
        program_id: info.program_id,
        allow_list,
        added,
        removed,
        dir,
    })
}

/// Detach the program pinned for `iface` under `pin_dir` and remove its pins. The link is
/// detached before the command returns (not when the kernel gets round to freeing it).
/// Returns the ifindex it was attached to (None: no link was pinned, or it was severed).
pub fn detach_pinned(pin_dir: &Path, iface: &str) -> Result<Option<u32>, DecapError> {
    check_name(iface)?;
    require_privileges()?;
    let dir = pin_dir.join(iface);
    let not_pinned = || DecapError::NotPinned {
        iface: iface.to_string(),
        dir: pin_dir.to_path_buf(),
    };
    if !dir.is_dir() {
        return Err(not_pinned());
    }
    let Some(_lock) = lock_dir(&dir, false)? else {
        return Err(not_pinned());
    };
    let link_path = dir.join(LINK_PIN);
    let mut was_on = None;
    if link_path.exists() {
        let fd = obj_get(&link_path).map_err(|e| DecapError::Pin {
            what: "link pin",
            path: link_path.clone(),
            detail: e.to_string(),
        })?;
        let info = link_info(&fd).map_err(|e| DecapError::Pin {
            what: "link pin",
            path: link_path.clone(),
            detail: e.to_string(),
        })?;
        std::fs::remove_file(&link_path).map_err(io_err(&link_path))?;
        // With the pin gone the kernel frees the link once nothing holds it, but later; an
        // explicit detach takes the program off the NIC now. A severed link has nothing to
        // detach from.
        match link_detach(&fd) {
            Ok(()) => was_on = (info.ifindex != 0).then_some(info.ifindex),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOLINK | libc::EINVAL)) => {}
            Err(e) => {
                return Err(DecapError::Pin {
                    what: "detaching the link pinned at",
                    path: link_path,
                    detail: e.to_string(),
                });
            }
        }
    }
    for m in DECAP_MAPS {
        let p = dir.join(m);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&p)(e)),
            _ => {}
        }
    }
    std::fs::remove_dir(&dir).map_err(io_err(&dir))?;
    // The pin directory goes too once empty (not if it holds other interfaces).
    let _ = std::fs::remove_dir(pin_dir);
    Ok(was_on)
}

/// The interfaces pinned under `pin_dir` (or only `only`), sorted by name. No pin directory:
/// nothing is pinned (an empty answer), unless `only` names an interface.
pub fn status(pin_dir: &Path, only: Option<&str>) -> Result<Vec<DecapStatus>, DecapError> {
    require_privileges()?;
    let names: Vec<String> = match only {
        Some(iface) => {
            check_name(iface)?;
            if !pin_dir.join(iface).is_dir() {
                return Err(DecapError::NotPinned {
                    iface: iface.to_string(),
                    dir: pin_dir.to_path_buf(),
                });
            }
            vec![iface.to_string()]
        }
        None if !pin_dir.exists() => Vec::new(),
        None => {
            let mut v: Vec<String> = std::fs::read_dir(pin_dir)
                .map_err(io_err(pin_dir))?
                .flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect();
            v.sort();
            v
        }
    };
    names
        .into_iter()
        .map(|iface| interface_status(pin_dir, iface))
        .collect()
}

fn interface_status(pin_dir: &Path, iface: String) -> Result<DecapStatus, DecapError> {
    let dir = pin_dir.join(&iface);
    let link_path = dir.join(LINK_PIN);
    let link = if link_path.exists() {
        let info = pinned_link_info(&link_path)?;
        let here = if_index(&iface);
        match info.ifindex {
            0 => LinkState::Severed {
                link_id: info.link_id,
            },
            i if Some(i) == here => LinkState::Attached {
                ifindex: i,
                link_id: info.link_id,
                program_id: info.program_id,
            },
            i => LinkState::Elsewhere {
                ifindex: i,
                here,
                link_id: info.link_id,
                program_id: info.program_id,
            },
        }
    } else {
        LinkState::NoLink
    };
    let map_err = |map: &'static str| {
        let path = dir.join(map);
        move |source| {
            DecapError::Dataplane(DataplaneError::PinnedMapUnreadable { map, path, source })
        }
    };
    let mut allow_list = Vec::new();
    let p = dir.join(MAP_DECAP_ADDRS);
    if p.exists() {
        let map = MapData::from_pin(&p)
            .and_then(Map::from_map_data)
            .map_err(map_err(MAP_DECAP_ADDRS))?;
        let m: HashMap<MapData, DecapAddr, u8> =
            HashMap::try_from(map).map_err(map_err(MAP_DECAP_ADDRS))?;
        for k in m.keys() {
            if let Some(a) = addr_of(&k.map_err(map_err(MAP_DECAP_ADDRS))?) {
                allow_list.push(a);
            }
        }
        allow_list.sort();
    }
    let mut counters: Vec<(Reason, u64)> = DECAP_REASONS.iter().map(|r| (*r, 0)).collect();
    let p = dir.join(MAP_DECAP_STATS);
    if p.exists() {
        let map = MapData::from_pin(&p)
            .and_then(Map::from_map_data)
            .map_err(map_err(MAP_DECAP_STATS))?;
        let stats: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(map).map_err(map_err(MAP_DECAP_STATS))?;
        for (reason, n) in &mut counters {
            *n = stats
                .get(&(*reason as u32), 0)
                .map_err(map_err(MAP_DECAP_STATS))?
                .iter()
                .sum();
        }
    }
    Ok(DecapStatus {
        interface: iface,
        link,
        allow_list,
        counters,
    })
}

/// Make the allow-list `want`: the new addresses first, then the ones not wanted go, so an
/// address on both lists is never missing. Returns (added, removed, now), sorted.
#[allow(clippy::type_complexity)]
fn write_allow_list(
    ebpf: &mut Ebpf,
    want: &BTreeSet<IpAddr>,
) -> Result<(Vec<IpAddr>, Vec<IpAddr>, Vec<IpAddr>), DecapError> {
    let map_err = |source| DataplaneError::Map {
        map: MAP_DECAP_ADDRS,
        source,
    };
    let map = ebpf
        .map_mut(MAP_DECAP_ADDRS)
        .ok_or(DataplaneError::MissingMap(MAP_DECAP_ADDRS))?;
    let mut m: HashMap<_, DecapAddr, u8> = HashMap::try_from(map).map_err(map_err)?;
    let mut had = Vec::new();
    for k in m.keys() {
        had.push(k.map_err(map_err)?);
    }
    let had_addrs: BTreeSet<IpAddr> = had.iter().filter_map(addr_of).collect();
    let mut added = Vec::new();
    for a in want {
        m.insert(key_of(*a), 1, 0).map_err(map_err)?;
        if !had_addrs.contains(a) {
            added.push(*a);
        }
    }
    let mut removed = Vec::new();
    for k in &had {
        let a = addr_of(k);
        if a.is_some_and(|a| want.contains(&a)) {
            continue;
        }
        m.remove(k).map_err(map_err)?;
        removed.extend(a);
    }
    Ok((added, removed, want.iter().copied().collect()))
}

/// The attach error, said in the operator's terms.
fn attach_error(iface: &str, pin_dir: &Path, e: ProgramError) -> DecapError {
    let errno = match &e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        ProgramError::XdpError(XdpError::NetlinkError(n)) => n.raw_os_error(),
        ProgramError::UnknownInterface { .. } => {
            return DecapError::NoInterface(iface.to_string());
        }
        _ => None,
    };
    // The kernel's reason is in the error's source: "`bpf_link_create` failed" alone says
    // nothing.
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail.push_str(&format!(": {s}"));
        source = s.source();
    }
    match errno {
        Some(libc::EBUSY | libc::EEXIST) => DecapError::Busy {
            iface: iface.to_string(),
            dir: pin_dir.to_path_buf(),
            detail,
        },
        Some(libc::EOPNOTSUPP) => DecapError::NoNative {
            iface: iface.to_string(),
            detail,
        },
        Some(libc::EPERM | libc::EACCES) => DecapError::NotPrivileged,
        _ => DataplaneError::from(e).into(),
    }
}

/// Removes what a failed first attach pinned for its interface, and the directories it
/// made for the pin directory.
struct Undo {
    dir: Option<PathBuf>,
    /// The pin directory, and the directory above it that existed before.
    made: Option<(PathBuf, Option<PathBuf>)>,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            for m in DECAP_MAPS {
                let _ = std::fs::remove_file(dir.join(m));
            }
            let _ = std::fs::remove_dir(dir);
        }
        if let Some((dir, existed)) = &self.made {
            remove_up_to(dir, existed.as_deref());
        }
    }
}

/// Remove `dir` and its parents, while empty, up to (not including) `existed`.
fn remove_up_to(dir: &Path, existed: Option<&Path>) {
    for d in dir.ancestors() {
        if Some(d) == existed || std::fs::remove_dir(d).is_err() {
            break;
        }
    }
}

fn check_name(iface: &str) -> Result<(), DecapError> {
    // IFNAMSIZ is 16 with the NUL; no '/' (a path) and no whitespace.
    if iface.is_empty()
        || iface.len() > 15
        || iface == "."
        || iface == ".."
        || iface.contains(['/', '\0'])
        || iface.chars().any(char::is_whitespace)
    {
        return Err(DecapError::BadInterface(iface.to_string()));
    }
    Ok(())
}

/// Create `pin_dir` on bpffs, and refuse the balancer's.
fn prepare_pin_dir(pin_dir: &Path) -> Result<(), DecapError> {
    // Check the nearest existing ancestor first: creating a directory on sysfs or a root
    // file system would fail with a less helpful error, or succeed and vanish.
    let existing = pin_dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    if !on_bpffs(existing) {
        return Err(DecapError::NotBpffs(pin_dir.to_path_buf()));
    }
    std::fs::create_dir_all(pin_dir).map_err(io_err(pin_dir))?;
    if !on_bpffs(pin_dir) {
        return Err(DecapError::NotBpffs(pin_dir.to_path_buf()));
    }
    let balancer = std::fs::read_dir(pin_dir)
        .map_err(io_err(pin_dir))?
        .flatten()
        .any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            PINNED_MAPS.contains(&name.as_ref())
                || (name.starts_with("link-") && !e.path().is_dir())
        });
    if balancer {
        return Err(DecapError::BalancerDir(pin_dir.to_path_buf()));
    }
    Ok(())
}

/// Lock the interface's directory (one `lbd decap` at a time per interface), creating it
/// if `create`. A directory removed by a detach while this waited is not the one at the
/// path any more: then try again (or, without `create`, answer None).
fn lock_dir(dir: &Path, create: bool) -> Result<Option<File>, DecapError> {
    loop {
        if create {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let f = match File::open(dir) {
            Err(e) if !create && e.kind() == io::ErrorKind::NotFound => return Ok(None),
            r => r.map_err(io_err(dir))?,
        };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(dir)(io::Error::last_os_error()));
        }
        let locked = f.metadata().map_err(io_err(dir))?.ino();
        match std::fs::metadata(dir) {
            Ok(m) if m.ino() == locked => return Ok(Some(f)),
            _ if !create => return Ok(None),
            _ => continue,
        }
    }
}

fn require_privileges() -> Result<(), DecapError> {
    if capable() {
        Ok(())
    } else {
        Err(DecapError::NotPrivileged)
    }
}

/// Whether this process has CAP_NET_ADMIN and CAP_BPF or CAP_SYS_ADMIN in effect. If the
/// kernel cannot say, yes: the syscalls will tell.
fn capable() -> bool {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget fills the two data structs of version 3 that we pass.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut Header, d.as_mut_ptr()) };
    if rc != 0 {
        return true;
    }
    let has = |cap: u32| d[(cap / 32) as usize].effective & (1 << (cap % 32)) != 0;
    has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN))
}

fn if_index(iface: &str) -> Option<u32> {
    let name = CString::new(iface).ok()?;
    // SAFETY: a NUL-terminated name; the call only reads it.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// What the kernel says about a pinned XDP link.
#[derive(Clone, Copy, Debug)]
struct LinkFacts {
    link_id: u32,
    program_id: u32,
    /// 0: severed (its NIC is gone).
    ifindex: u32,
}

fn pinned_link_info(path: &Path) -> Result<LinkFacts, DecapError> {
    let err = |detail: String| DecapError::Pin {
        what: "link pin",
        path: path.to_path_buf(),
        detail,
    };
    let fd = obj_get(path).map_err(|e| err(format!("opening it: {e}")))?;
    link_info(&fd).map_err(|e| err(e.to_string()))
}

// The few bpf(2) commands aya 0.14 does not expose: a pinned link's ifindex (aya's
// `LinkInfo` has no accessor for it) and BPF_LINK_DETACH.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is the prefix of `union bpf_attr` that `cmd` reads, zero-padded by the
    // caller's struct; the kernel copies at most its size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut attr = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor, ours to own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn link_info(fd: &OwnedFd) -> io::Result<LinkFacts> {
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    use aya_obj::generated::{bpf_link_info, bpf_link_type};
    // SAFETY: a plain C struct of integers and unions of them: all zeroes is valid.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<bpf_link_info>() as u32,
        info: &mut info as *mut bpf_link_info as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    if info.type_ != bpf_link_type::BPF_LINK_TYPE_XDP as u32 {
        return Err(io::Error::other(format!(
            "not an XDP link (link type {})",
            info.type_
        )));
    }
    Ok(LinkFacts {
        link_id: info.id,
        program_id: info.prog_id,
        // SAFETY: an XDP link's info fills the `xdp` member of the union.
        ifindex: unsafe { info.__bindgen_anon_1.xdp.ifindex },
    })
}

fn link_detach(fd: &OwnedFd) -> io::Result<()> {
    #[repr(C)]
    struct LinkDetach {
        link_fd: u32,
    }
    let mut attr = LinkDetach {
        link_fd: fd.as_raw_fd() as u32,
    };
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for a in ["198.18.0.21", "2001:db8::21", "::ffff:198.18.0.1"] {
            let a: IpAddr = a.parse().unwrap();
            assert_eq!(addr_of(&key_of(a)), Some(a));
        }
        assert_eq!(addr_of(&DecapAddr::default()), None);
    }

    #[test]
    fn interface_names_are_checked() {
        for bad in ["", ".", "..", "a/b", "sixteen-chars-xx", "a b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["eth0", "p-lb", "enp1s0f0np0", "bond0.100"] {
            assert!(check_name(ok).is_ok(), "{ok:?}");
        }
    }
}
