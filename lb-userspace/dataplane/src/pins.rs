//! What lives under the pin directory: which maps, whether pins this build finds there can
//! be reused (checked before anything is changed), and removing them for good.

use std::path::{Path, PathBuf};

use aya::maps::{MapInfo, MapType};
use lb_common::{MAP_FLOWS, MAP_RINGS};

use crate::{
    dataplane::{DataplaneError, LoadOptions},
    programs::LB_XDP,
};

/// Maps that outlive the daemon (everything but the per-CPU scratch slot).
pub const PINNED_MAPS: &[&str] = &[
    lb_common::MAP_VIPS,
    lb_common::MAP_BACKENDS,
    lb_common::MAP_RINGS,
    lb_common::MAP_FLOWS,
    lb_common::MAP_CONFIG,
    lb_common::MAP_STATS,
    lb_common::MAP_VIP_STATS,
    lb_common::MAP_BACKEND_STATS,
    lb_common::MAP_RR,
    lb_common::MAP_CONNS,
    lb_common::MAP_TX_PORTS,
    lb_common::MAP_VIP_FILTER,
    lb_common::MAP_VIP_BY_ID,
];

/// Whether `dir` is on bpffs (pins elsewhere fail, or vanish with a tmpfs).
pub fn on_bpffs(dir: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we pass; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Where the link for `iface` is pinned.
pub fn link_pin(pin_dir: &Path, iface: &str) -> std::path::PathBuf {
    pin_dir.join(format!("link-{iface}"))
}

/// Detach (by removing the link pins; the kernel drops a link with its last reference) and
/// remove the pinned maps.
pub fn purge_pins(pin_dir: &Path) -> Result<(), DataplaneError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataplaneError::PinDir { path, source }
    };
    if !pin_dir.exists() {
        return Err(DataplaneError::PinDir {
            path: pin_dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "it does not exist: nothing is pinned there",
            ),
        });
    }
    for entry in std::fs::read_dir(pin_dir).map_err(io(pin_dir))? {
        let path = entry.map_err(io(pin_dir))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("link-") || PINNED_MAPS.contains(&name) {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    std::fs::remove_dir(pin_dir).ok();
    Ok(())
}

/// A map's kind and sizes: what must match for a pinned map to be reused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct MapShape {
    /// `None`: a type this aya does not know (so not one this build creates).
    pub(crate) map_type: Option<MapType>,
    pub(crate) key_size: u32,
    pub(crate) value_size: u32,
    pub(crate) max_entries: u32,
    /// The creation flags that change how a map works (`LAYOUT_FLAGS`).
    pub(crate) flags: u32,
}

/// BPF_F_NO_PREALLOC and BPF_F_NO_COMMON_LRU (`LB_FLOWS`' per-CPU LRU lists). Only these are
/// compared: the kernel adds flags of its own to some maps (BPF_F_RDONLY_PROG on a devmap).
const LAYOUT_FLAGS: u32 = (1 << 0) | (1 << 1);

/// The maps `Dataplane::load` would create under `opts`, read from the embedded object
/// without creating anything. aya reuses whatever is pinned at a map's path without
/// comparing, and the verifier's complaint, if any, does not name the map.
fn expected_shapes(opts: &LoadOptions) -> Result<Vec<(&'static str, MapShape)>, DataplaneError> {
    object_shapes(LB_XDP, PINNED_MAPS, |name| match name {
        MAP_FLOWS => Some(opts.flows),
        MAP_RINGS => Some(opts.ring_capacity),
        _ => None,
    })
}

/// The shapes of the maps `names` that loading `object` would create; `sized` gives the
/// entries of a map whose size the loader sets (None: the object's).
pub(crate) fn object_shapes(
    object: &[u8],
    names: &[&'static str],
    sized: impl Fn(&str) -> Option<u32>,
) -> Result<Vec<(&'static str, MapShape)>, DataplaneError> {
    let obj = aya_obj::Object::parse(object).map_err(|e| DataplaneError::Load(e.into()))?;
    names
        .iter()
        .map(|&name| {
            let def = obj.maps.get(name).ok_or(DataplaneError::MissingMap(name))?;
            let map_type = aya_obj::generated::bpf_map_type::try_from(def.map_type())
                .ok()
                .and_then(|t| MapType::try_from(t).ok());
            // aya sizes a device or CPU map's value by what the kernel supports, not by the
            // object. (Ring buffers and perf arrays, whose entries aya derives too, are not
            // pinned.)
            let prog_id = match map_type {
                Some(MapType::DevMap | MapType::DevMapHash) => {
                    Some(aya::features().devmap_prog_id())
                }
                Some(MapType::CpuMap) => Some(aya::features().cpumap_prog_id()),
                _ => None,
            };
            let value_size = prog_id.map_or(def.value_size(), |id| if id { 8 } else { 4 });
            Ok((
                name,
                MapShape {
                    map_type,
                    key_size: def.key_size(),
                    value_size,
                    max_entries: sized(name).unwrap_or(def.max_entries()),
                    flags: def.map_flags() & LAYOUT_FLAGS,
                },
            ))
        })
        .collect()
}

/// The first of `expected` pinned under `dir` (at `dir/NAME`) whose shape differs: its
/// name, path, and the shapes found and needed. Maps not pinned are skipped.
pub(crate) fn first_mismatch(
    dir: &Path,
    expected: Vec<(&'static str, MapShape)>,
) -> Result<Option<(&'static str, PathBuf, MapShape, MapShape)>, DataplaneError> {
    for (map, needed) in expected {
        let path = dir.join(map);
        if !path.exists() {
            continue;
        }
        let info =
            MapInfo::from_pin(&path).map_err(|source| DataplaneError::PinnedMapUnreadable {
                map,
                path: path.clone(),
                source,
            })?;
        let found = MapShape {
            map_type: info.map_type().ok(),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags() & LAYOUT_FLAGS,
        };
        if found != needed {
            return Ok(Some((map, path, found, needed)));
        }
    }
    Ok(None)
}

pub(crate) fn purge_advice(pin_dir: &Path) -> String {
    format!(
        "stop lbd if it runs, run `lbd purge --pin-dir {}` (it detaches XDP and removes the \
         pins, dropping the connection table: established flows may move to other backends) \
         and start again",
        pin_dir.display()
    )
}

/// The check runs before anything is created or attached, so a refused start leaves a
/// running dataplane (the old program on its pinned link) forwarding.
const UNTOUCHED: &str = "Nothing was changed: what is pinned keeps running as it was.";

/// Refuse pins that this build would misread, before anything is loaded or changed.
pub(crate) fn check_pinned(dir: &Path, opts: &LoadOptions) -> Result<(), DataplaneError> {
    let Some((map, path, found, needed)) = first_mismatch(dir, expected_shapes(opts)?)? else {
        return Ok(());
    };
    let (found_text, needed_text) = differences(&found, &needed);
    let setting = match map {
        MAP_FLOWS => Some("flows"),
        MAP_RINGS => Some("ring_capacity"),
        _ => None,
    };
    let resized_only = MapShape {
        max_entries: needed.max_entries,
        ..found
    } == needed;
    let remedy = match setting {
        Some(key) if resized_only => format!(
            "[dataplane] {key} changed since the map was pinned, and a pinned map keeps its \
             size. {UNTOUCHED} To keep what it holds, set {key} = {} again; to apply the \
             new size, {}",
            found.max_entries,
            purge_advice(dir)
        ),
        _ => format!(
            "its layout changed between versions, so the pinned state (established flows \
             included) cannot be carried over. {UNTOUCHED} To move to this version, {}",
            purge_advice(dir)
        ),
    };
    Err(DataplaneError::PinnedMapMismatch {
        map,
        path,
        found: found_text,
        needed: needed_text,
        remedy,
    })
}

/// The attributes in which `found` differs from `needed`, phrased for each side.
pub(crate) fn differences(found: &MapShape, needed: &MapShape) -> (String, String) {
    let kind = |t: Option<MapType>| match t {
        Some(t) => format!("type {t:?}"),
        None => "an unknown type".to_string(),
    };
    let mut sides: Vec<(String, String)> = Vec::new();
    if found.map_type != needed.map_type {
        sides.push((kind(found.map_type), kind(needed.map_type)));
    }
    for (f, n, what) in [
        (found.key_size, needed.key_size, "-byte keys"),
        (found.value_size, needed.value_size, "-byte values"),
        (found.max_entries, needed.max_entries, " entries"),
    ] {
        if f != n {
            sides.push((format!("{f}{what}"), format!("{n}{what}")));
        }
    }
    if found.flags != needed.flags {
        sides.push((
            format!("flags {:#x}", found.flags),
            format!("flags {:#x}", needed.flags),
        ));
    }
    let (f, n): (Vec<String>, Vec<String>) = sides.into_iter().unzip();
    (f.join(", "), n.join(", "))
}
