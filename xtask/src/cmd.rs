//! Running child processes: printable command lines, captured output, and "tee" (copy a
//! child's stream to ours while keeping a copy to inspect afterwards).

use std::{
    env,
    ffi::OsStr,
    io::{self, Read, Write},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

/// The cargo that runs us (`cargo run` sets CARGO), else the one on PATH.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// A shell-like rendering of `cmd`, with the environment variables it sets, for messages.
pub fn show(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            parts.push(format!("{}={}", k.to_string_lossy(), quote(v)));
        }
    }
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=+:,@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Builds `bin` of `package` in release mode (cargo's output shown, prefixed by `tag`) and
/// returns the path of the executable.
pub fn build_release(tag: &str, package: &str, bin: &str) -> Result<PathBuf> {
    let mut build = cargo();
    build.args(["build", "--release", "-p", package, "--bin", bin]);
    println!("[{tag}] building: {}", show(&build));
    let st = status(&mut build)?;
    if !st.success() {
        bail!(
            "building `{bin}` failed ({st}); cargo's errors are above. If the eBPF programs \
             failed to build (rust-src, bpf-linker), run `cargo xtask setup`"
        );
    }
    Ok(workspace_root().join("target/release").join(bin))
}

/// Runs `cmd` with inherited stdio and returns its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status()
        .with_context(|| format!("could not start `{}`", show(cmd)))
}

/// Runs `cmd` with inherited stdio and fails unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let st = status(cmd)?;
    if !st.success() {
        bail!("`{}` failed ({st})", show(cmd));
    }
    Ok(())
}

/// Runs `cmd`, capturing stdout and stderr; fails (quoting stderr) unless it exits
/// successfully. Returns stdout.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{}`", show(cmd)))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        // Tools run with RUST_BACKTRACE set (rustup) append a backtrace: not useful here.
        let err = err.split("Stack backtrace:").next().unwrap_or_default();
        bail!("`{}` failed ({}): {}", show(cmd), out.status, err.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `name` is a command the shell can find (`command -v`).
pub fn has_command(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", "command -v \"$1\" >/dev/null 2>&1", "sh", name])
        .status()
        .is_ok_and(|s| s.success())
}

/// Finds an executable called `name` in PATH, like `which`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Which of the child's streams `tee` copies and keeps.
#[derive(Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Runs `cmd`; the chosen stream is copied to ours as it arrives (byte by byte as the child
/// writes, so partial lines like `test foo ... ` show up at once) and also returned; the
/// other stream and stdin are inherited.
pub fn tee(cmd: &mut Command, stream: Stream) -> Result<(ExitStatus, String)> {
    match stream {
        Stream::Stdout => tee_into(cmd, stream, &mut io::stdout()),
        Stream::Stderr => tee_into(cmd, stream, &mut io::stderr()),
    }
}

/// `tee`, copying to `to`.
fn tee_into(cmd: &mut Command, stream: Stream, to: &mut dyn Write) -> Result<(ExitStatus, String)> {
    match stream {
        Stream::Stdout => cmd.stdout(Stdio::piped()),
        Stream::Stderr => cmd.stderr(Stdio::piped()),
    };
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{}`", show(cmd)))?;
    let mut from: Box<dyn Read> = match stream {
        Stream::Stdout => Box::new(child.stdout.take().expect("stdout is piped")),
        Stream::Stderr => Box::new(child.stderr.take().expect("stderr is piped")),
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading the child's output"),
        };
        kept.extend_from_slice(&buf[..n]);
        // A closed stdout (e.g. piped into `head`) must not stop the child or lose the count.
        let _ = to.write_all(&buf[..n]).and_then(|()| to.flush());
    }
    let st = child
        .wait()
        .with_context(|| format!("waiting for `{}`", show(cmd)))?;
    Ok((st, String::from_utf8_lossy(&kept).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_quotes_what_the_shell_would_split() {
        let mut c = Command::new("cargo");
        c.args(["install", "a b", "it's"]).env("LLVM_PREFIX", "/p");
        assert_eq!(show(&c), r"LLVM_PREFIX=/p cargo install 'a b' 'it'\''s'");
    }

    #[test]
    fn tee_keeps_what_it_copies() {
        let mut copy = Vec::new();
        let (st, out) = tee_into(
            Command::new("sh").args(["-c", "printf 'a\\nb'; exit 3"]),
            Stream::Stdout,
            &mut copy,
        )
        .unwrap();
        assert_eq!(st.code(), Some(3));
        assert_eq!(out, "a\nb");
        assert_eq!(copy, b"a\nb");
    }

    #[test]
    fn finds_sh() {
        assert!(has_command("sh"));
        assert!(!has_command("no-such-command-lb-xtask"));
        assert!(find_on_path("sh").is_some());
    }
}
