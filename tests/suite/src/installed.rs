//! What an install (the xtask one or the package) must leave in a root: the files there,
//! and the man pages the binaries generate.

use std::{collections::BTreeSet, path::Path};

/// Files (and symlinks) under `dir`, relative to it, leaving out the paths in `skip`
/// (directories are left out whole).
pub fn files_under(dir: &Path, skip: &[&str]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            if skip.contains(&rel.as_str()) {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.insert(rel);
            }
        }
    }
    out
}

/// Every page `lbd man --dir` / `lbctl man --dir` writes: one per visible command.
pub fn man_pages() -> Vec<String> {
    let mut names = Vec::new();
    for (cmd, other) in [(lbd::command(), "lbctl"), (lbctl::command(), "lbd")] {
        for (name, _) in lb_clidoc::pages(cmd, other).unwrap() {
            names.push(name);
        }
    }
    names
}
