//! What the benchmark drivers (`lbt-bench`, `lbt-rate-bench`) share: reading their
//! arguments, writing their results, and their exit status.

use std::{path::Path, process::ExitCode, str::FromStr, time::Instant};

use anyhow::{Context as _, Result};
use serde_json::Value;

/// The command line after the program name; errors quote the usage text.
pub struct Args {
    args: std::iter::Skip<std::env::Args>,
    usage: &'static str,
}

impl Args {
    pub fn new(usage: &'static str) -> Self {
        Args {
            args: std::env::args().skip(1),
            usage,
        }
    }

    pub fn next_flag(&mut self) -> Option<String> {
        self.args.next()
    }

    /// The value that follows `flag`, parsed.
    pub fn value<T: FromStr>(&mut self, flag: &str) -> Result<T>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        let v = self
            .args
            .next()
            .with_context(|| format!("{flag} needs a value\n{}", self.usage))?;
        v.parse()
            .with_context(|| format!("{flag} {v}: not a valid value\n{}", self.usage))
    }
}

/// Print the tables, write them (`markdown`, if asked) and the JSON document.
pub fn write_results(
    md: &str,
    doc: &Value,
    json: &Path,
    markdown: Option<&Path>,
    started: Instant,
) -> Result<()> {
    print!("{md}");
    if let Some(dir) = json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(json, serde_json::to_string_pretty(doc)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    if let Some(p) = markdown {
        std::fs::write(p, md).with_context(|| format!("writing {}", p.display()))?;
    }
    println!(
        "\nJSON: {}\nfinished in {:.0} s",
        json.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Exit status of a driver whose run returns whether every proof passed.
pub fn exit(bin: &str, run: Result<bool>) -> ExitCode {
    match run {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("{bin}: some proofs failed: those figures are not valid");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{bin}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What a driver run at `--tiny` produced, for the smoke tests.
pub struct TinyRun {
    pub doc: Value,
    pub stdout: String,
    /// The driver's process id (its namespaces carry it in their names).
    pub pid: u32,
}

/// Run driver `exe` with `--tiny`, writing its JSON to a scratch directory; panics, with
/// the driver's output, if it fails.
pub fn run_tiny(exe: &str) -> TinyRun {
    use std::process::{Command, Stdio};
    let name = Path::new(exe).file_name().unwrap().to_string_lossy();
    let dir = std::env::temp_dir().join(format!("lbt-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("results.json");
    let child = Command::new(exe)
        .arg("--tiny")
        .arg("--json")
        .arg(&json_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {exe}: {e}"));
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = std::fs::read_to_string(&json_path).unwrap_or_default();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "{name} --tiny failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = serde_json::from_str(&text).expect("the driver's JSON");
    TinyRun { doc, stdout, pid }
}
