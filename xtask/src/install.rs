//! `cargo xtask install` and `cargo xtask uninstall`: put `lbd`, `lbctl`, the example
//! configuration, the systemd units, the man pages and the shell completions where a gateway
//! expects them, and take them away again.
//!
//! `--destdir` stages the whole tree under a directory (as `make install DESTDIR=` does):
//! paths inside files (the unit's `ExecStart`) still name the final locations, so a package
//! builder or a test can install without touching the system.
//!
//! The pieces (the binaries, the units' text, man pages, completions) are shared with
//! `cargo xtask deb` (deb.rs), which lays them out as a Debian package.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::cmd;

pub const BINS: [&str; 2] = ["lbd", "lbctl"];
/// The unit's paths as shipped; rewritten for another prefix.
const SHIPPED_BIN_DIR: &str = "/usr/local/bin/";
/// The systemd units, in the source tree. `lbd-decap@.service` is for backends (the
/// decapsulation program on a NIC). `install` puts them in /etc/systemd/system, where units
/// the administrator installs go (systemd reads it for any prefix); the package in
/// /usr/lib/systemd/system.
pub const UNITS: [&str; 2] = ["packaging/lbd.service", "packaging/lbd-decap@.service"];
/// Where `install` puts the units.
const ADMIN_UNIT_DIR: &str = "/etc/systemd/system";
pub const EXAMPLE: &str = "config/lb.example.toml";
/// Where the configuration lives: fixed, the unit and the docs name it.
pub const CONFIG: &str = "/etc/lbd/lb.toml";
/// Completion files per shell, relative to the prefix: where bash-completion, zsh (Debian's
/// fpath) and fish look for vendor completions. `{}` is the command's name.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "share/bash-completion/completions/{}"),
    ("zsh", "share/zsh/site-functions/_{}"),
    ("fish", "share/fish/vendor_completions.d/{}.fish"),
];

/// Where to install (or uninstall).
#[derive(Args, Debug)]
pub struct Location {
    /// Installation prefix: binaries in PREFIX/bin, man pages in PREFIX/share/man, ...
    #[arg(long, default_value = "/usr/local", value_name = "PREFIX")]
    pub prefix: PathBuf,
    /// Stage everything under this directory instead of / (for packaging and tests).
    #[arg(long, value_name = "DIR")]
    pub destdir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct InstallArgs {
    #[command(flatten)]
    pub at: Location,
    /// Install the `lbd` and `lbctl` in DIR instead of building them (for packagers who
    /// build separately, and the test suite, which has built them already).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

impl Location {
    /// `path` (absolute, as on the installed system) under the staging directory.
    fn staged(&self, path: &Path) -> PathBuf {
        match &self.destdir {
            Some(d) => d.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_path_buf(),
        }
    }

    fn under_prefix(&self, rel: &str) -> PathBuf {
        self.prefix.join(rel)
    }

    /// The list of what was installed, read by `uninstall`.
    fn manifest(&self) -> PathBuf {
        self.under_prefix("share/lbd/installed-files")
    }
}

fn say(msg: impl AsRef<str>) {
    println!("[install] {}", msg.as_ref());
}

/// Every file written, as on the installed system (not staged), for the manifest.
struct Installed {
    files: Vec<PathBuf>,
}

impl Installed {
    fn write(&mut self, a: &Location, dest: &Path, content: &[u8], mode: u32) -> Result<()> {
        let staged = a.staged(dest);
        put(&staged, content, mode)?;
        say(format!("installed {}", staged.display()));
        self.files.push(dest.to_path_buf());
        Ok(())
    }
}

/// Writes `path` with `mode`, creating its directory.
pub fn put(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    mkdir(path.parent().expect("absolute paths have a parent"))?;
    fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

pub fn mkdir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| {
        format!(
            "creating {} (installing under / needs root; --destdir stages elsewhere)",
            dir.display()
        )
    })
}

pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// `lbd` and `lbctl`, in the order of `BINS`: from `bin_dir`, or built (release) now, with
/// cargo's output tagged `tag`.
pub fn binaries(bin_dir: Option<&Path>, tag: &str) -> Result<Vec<PathBuf>> {
    BINS.iter()
        .map(|bin| match bin_dir {
            Some(dir) => {
                let path = dir.join(bin);
                if !cmd::is_executable(&path) {
                    bail!("--bin-dir: {} is not an executable file", path.display());
                }
                Ok(path)
            }
            // Each binary is its own package, of the same name.
            None => cmd::build_release(tag, bin, bin),
        })
        .collect()
}

/// The unit at `src` (one of `UNITS`), its Exec lines naming the binaries in `bin_dir`
/// (ending in `/`).
pub fn unit_text(src: &str, bin_dir: &str) -> Result<String> {
    let unit = String::from_utf8(read(&cmd::workspace_root().join(src))?)
        .with_context(|| format!("{src} is not UTF-8"))?;
    Ok(unit.replace(SHIPPED_BIN_DIR, bin_dir))
}

/// The file name of a unit of `UNITS`.
pub fn unit_name(src: &str) -> &str {
    src.rsplit('/').next().unwrap_or(src)
}

/// Renders every man page of the binary `bin` (one per command) into `dir`, which exists;
/// returns the pages' file names.
pub fn man_pages(bin: &Path, dir: &Path) -> Result<Vec<String>> {
    let listed = cmd::output(Command::new(bin).args(["man", "--dir"]).arg(dir))?;
    listed
        .lines()
        .map(|page| {
            Ok(Path::new(page)
                .file_name()
                .context("a man page path")?
                .to_string_lossy()
                .into_owned())
        })
        .collect()
}

/// The completion script of the binary `bin` for `shell` (bash, zsh, fish).
pub fn completion(bin: &Path, shell: &str) -> Result<String> {
    cmd::output(Command::new(bin).args(["completions", shell]))
}

pub fn install(args: &InstallArgs) -> Result<()> {
    let a = &args.at;
    if !a.prefix.is_absolute() {
        bail!(
            "--prefix {} is not an absolute path (the unit's ExecStart needs one)",
            a.prefix.display()
        );
    }
    let root = cmd::workspace_root();
    let built = binaries(args.bin_dir.as_deref(), "install")?;
    let mut done = Installed { files: Vec::new() };

    for (bin, path) in BINS.iter().zip(&built) {
        let dest = a.under_prefix(&format!("bin/{bin}"));
        done.write(a, &dest, &read(path)?, 0o755)?;
    }

    // The units name the binaries by absolute path: point them at this prefix.
    let bin_dir = format!("{}/", a.under_prefix("bin").display());
    for src in UNITS {
        let dest = Path::new(ADMIN_UNIT_DIR).join(unit_name(src));
        done.write(a, &dest, unit_text(src, &bin_dir)?.as_bytes(), 0o644)?;
    }
    // The example stays available as a reference; the configuration is the operator's and
    // is never overwritten (the daemon also rewrites it on every lbctl change).
    let example = read(&root.join(EXAMPLE))?;
    done.write(
        a,
        &a.under_prefix("share/doc/lbd/lb.example.toml"),
        &example,
        0o644,
    )?;
    let config = a.staged(Path::new(CONFIG));
    if config.exists() {
        say(format!(
            "kept {}: it exists (the example is in {})",
            config.display(),
            a.staged(&a.under_prefix("share/doc/lbd/lb.example.toml"))
                .display()
        ));
    } else {
        // Not in the manifest: uninstall must not take the operator's configuration.
        put(&config, &example, 0o644)?;
        say(format!(
            "installed {} from the example: edit it, then `lbd check -c {CONFIG}`",
            config.display()
        ));
    }

    // Man pages: the binaries render them (one per subcommand), straight into place.
    let man_dir = a.under_prefix("share/man/man1");
    mkdir(&a.staged(&man_dir))?;
    for path in &built {
        for name in man_pages(path, &a.staged(&man_dir))? {
            say(format!(
                "installed {}",
                a.staged(&man_dir).join(&name).display()
            ));
            done.files.push(man_dir.join(name));
        }
    }

    for (bin, path) in BINS.iter().zip(&built) {
        for (shell, rel) in COMPLETIONS {
            let script = completion(path, shell)?;
            let dest = a.under_prefix(&rel.replace("{}", bin));
            done.write(a, &dest, script.as_bytes(), 0o644)?;
        }
    }

    let mut list: String = done
        .files
        .iter()
        .map(|f| format!("{}\n", f.display()))
        .collect();
    let manifest = a.manifest();
    list.push_str(&format!("{}\n", manifest.display()));
    done.write(a, &manifest, list.as_bytes(), 0o644)?;

    say(format!("{} files installed", done.files.len()));
    if a.destdir.is_none() {
        say(format!(
            "next: edit {CONFIG}, `lbd check -c {CONFIG}`, `systemctl daemon-reload`, \
             `systemctl enable --now lbd` (docs/deployment.md); on a backend, \
             /etc/default/lbd-decap and `systemctl enable --now lbd-decap@IF` instead"
        ));
    }
    Ok(())
}

/// Removes what `install` listed in its manifest; keeps the configuration and everything the
/// daemon made (pins, revision store).
pub fn uninstall(a: &Location) -> Result<()> {
    let manifest = a.staged(&a.manifest());
    let list = fs::read_to_string(&manifest).with_context(|| {
        format!(
            "reading {}: nothing installed with this --prefix/--destdir?",
            manifest.display()
        )
    })?;
    for f in list.lines().filter(|l| !l.is_empty()) {
        let staged = a.staged(Path::new(f));
        match fs::remove_file(&staged) {
            Ok(()) => say(format!("removed {}", staged.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                say(format!("already gone: {}", staged.display()))
            }
            Err(e) => return Err(e).with_context(|| format!("removing {}", staged.display())),
        }
    }
    for dir in ["share/lbd", "share/doc/lbd"] {
        // Only when empty: anything else in them is not ours to delete.
        let _ = fs::remove_dir(a.staged(&a.under_prefix(dir)));
    }
    say(format!(
        "kept {} and [daemon] state_dir (default /var/lib/lbd). The dataplane stays pinned \
         until `lbd purge` (run it before uninstalling to stop balancing)",
        a.staged(Path::new(CONFIG)).display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_under_destdir() {
        let a = Location {
            prefix: "/usr/local".into(),
            destdir: Some("/tmp/stage".into()),
        };
        assert_eq!(
            a.staged(&a.under_prefix("bin/lbd")),
            Path::new("/tmp/stage/usr/local/bin/lbd")
        );
        assert_eq!(
            a.staged(Path::new(CONFIG)),
            Path::new("/tmp/stage/etc/lbd/lb.toml")
        );
        let real = Location {
            prefix: "/opt/lb".into(),
            destdir: None,
        };
        assert_eq!(
            real.staged(&real.manifest()),
            Path::new("/opt/lb/share/lbd/installed-files")
        );
    }
}
