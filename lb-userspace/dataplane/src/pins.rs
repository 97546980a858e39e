//! What lives under the pin directory, and removing it for good.

use std::path::Path;

use crate::dataplane::{DataplaneError, PINNED_MAPS};

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
