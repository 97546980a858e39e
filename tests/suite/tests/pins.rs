//! Pinned maps are reused only when they are the maps this build and its options would
//! create: a restart with the same sizes keeps the connection table; a changed `flows` or
//! `ring_capacity`, or a map of another layout (an upgrade across a map change), is refused
//! with what differs and what to do, and nothing pinned is touched.

use std::{
    os::fd::{FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, Map, MapData, MapInfo};
use lb_common::{FlowEntry, FlowKey, MAP_FLOWS, MAP_RINGS};
use lb_dataplane::{Dataplane, LoadOptions};
use lb_tests::{
    daemon::{BPFFS, ensure_bpffs},
    harness::RING,
};

/// A pin directory of its own on the test bpffs, removed (every pin with it) however the
/// test ends.
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> Self {
        ensure_bpffs();
        let dir = PathBuf::from(BPFFS).join(format!("pins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        PinDir(dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn flows(dir: &Path) -> HashMap<MapData, FlowKey, FlowEntry> {
    let data = MapData::from_pin(dir.join(MAP_FLOWS)).expect("open the pinned LB_FLOWS");
    HashMap::try_from(Map::from_map_data(data).unwrap()).expect("LB_FLOWS as a hash map")
}

fn refused(opts: LoadOptions, dir: &Path) -> String {
    match Dataplane::load(opts, Some(dir)) {
        Ok(_) => panic!("load with {opts:?} over mismatched pins succeeded"),
        Err(e) => e.to_string(),
    }
}

fn assert_says(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error lacks {p:?}: {err}");
    }
}

/// An LRU hash like `like` but for its value size, pinned at `path`: what an older release
/// with a narrower flow entry would have left there. aya creates maps only from an object,
/// so BPF_MAP_CREATE is called directly.
fn pin_lru_hash(like: &MapInfo, value_size: u32, flags: u32, path: &Path) {
    let mut attr = [0u32; 30];
    attr[..5].copy_from_slice(&[
        like.map_type().unwrap() as u32,
        like.key_size(),
        value_size,
        like.max_entries(),
        flags,
    ]);
    // SAFETY: BPF_MAP_CREATE (0) reads the attribute buffer, zeroed past the fields set.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            attr.as_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    MapData::from_fd(fd)
        .unwrap()
        .pin(path)
        .expect("pin the old-layout map");
}

#[test]
fn pinned_maps_of_another_layout_or_size_are_refused() {
    let pins = PinDir::new();
    let dir = pins.0.as_path();
    let opts = LoadOptions {
        flows: 8192,
        ring_capacity: 4 * RING,
    };
    let key = FlowKey {
        src: [198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        dst: [198, 18, 100, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        sport: 40_000,
        dport: 80,
        proto: lb_common::PROTO_TCP,
        family: 4,
        ..Default::default()
    };
    let entry = FlowEntry {
        backend_id: 7,
        ..Default::default()
    };

    let first = Dataplane::load(opts, Some(dir)).expect("first load pins the maps (needs root)");
    flows(dir).insert(key, entry, 0).unwrap();
    drop(first);

    let again = Dataplane::load(opts, Some(dir)).expect("an unchanged restart reuses the pins");
    assert_eq!(
        flows(dir).get(&key, 0).unwrap(),
        entry,
        "the flow carried over"
    );
    drop(again);

    let err = refused(
        LoadOptions {
            flows: 16_384,
            ..opts
        },
        dir,
    );
    let flows_pin = dir.join(MAP_FLOWS);
    let purge = format!("lbd purge --pin-dir {}", dir.display());
    assert_says(
        &err,
        &[
            &format!("pinned map LB_FLOWS ({})", flows_pin.display()),
            "has 8192 entries; this build needs 16384 entries",
            "[dataplane] flows changed",
            "set flows = 8192 again",
            &purge,
        ],
    );
    let err = refused(
        LoadOptions {
            ring_capacity: 5 * RING,
            ..opts
        },
        dir,
    );
    assert_says(
        &err,
        &[
            &format!("pinned map LB_RINGS ({})", dir.join(MAP_RINGS).display()),
            &format!(
                "has {} entries; this build needs {} entries",
                4 * RING,
                5 * RING
            ),
            &format!("set ring_capacity = {} again", 4 * RING),
            &purge,
        ],
    );

    let needed = std::mem::size_of::<FlowEntry>() as u32;
    let old = needed - 4;
    let info = MapInfo::from_pin(&flows_pin).unwrap();
    std::fs::remove_file(&flows_pin).unwrap();
    pin_lru_hash(&info, old, info.map_flags(), &flows_pin);
    let err = refused(opts, dir);
    assert_says(
        &err,
        &[
            &format!("pinned map LB_FLOWS ({})", flows_pin.display()),
            &format!("has {old}-byte values; this build needs {needed}-byte values"),
            "its layout changed between versions",
            &purge,
        ],
    );
    assert_eq!(
        MapInfo::from_pin(&flows_pin).unwrap().value_size(),
        old,
        "a refused load leaves the pin as it was"
    );

    // Same sizes, but one LRU list for all CPUs instead of one per CPU.
    std::fs::remove_file(&flows_pin).unwrap();
    pin_lru_hash(&info, needed, info.map_flags() & !(1 << 1), &flows_pin);
    let err = refused(opts, dir);
    assert_says(
        &err,
        &[
            &format!("pinned map LB_FLOWS ({})", flows_pin.display()),
            "has flags 0x0; this build needs flags 0x2",
            &purge,
        ],
    );
}
