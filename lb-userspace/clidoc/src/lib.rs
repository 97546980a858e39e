//! Man pages and shell completions for `lbd` and `lbctl`, rendered from their clap
//! definitions so they always match the parsers. One implementation behind `lbd man`,
//! `lbctl man` and both `completions` commands; `cargo xtask install` runs those.

use std::{
    io,
    path::{Path, PathBuf},
};

use clap::{Args, Command};
use clap_mangen::{
    Man,
    roff::{Roff, bold, roman},
};

/// The section every page goes in (user commands, like most CLI tools built with clap).
const SECTION: &str = "1";

/// `man` for both tools: one page on stdout, or every page into a directory.
#[derive(Args)]
pub struct ManArgs {
    /// Write the page of the command and one page per subcommand (e.g. `lbctl-vip-add.1`)
    /// into this directory, and print their paths; without it, print the top page.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

impl ManArgs {
    /// Runs the command for `cmd`; `see_also` names the other tool's page. Returns what
    /// goes to stdout.
    pub fn run(&self, cmd: Command, see_also: &str) -> io::Result<String> {
        let pages = pages(cmd, see_also)?;
        match &self.dir {
            None => Ok(String::from_utf8_lossy(&pages[0].1).into_owned()),
            Some(dir) => {
                let mut out = String::new();
                for (name, roff) in pages {
                    let path = dir.join(name);
                    std::fs::write(&path, roff).map_err(|e| at(&path, e))?;
                    out.push_str(&format!("{}\n", path.display()));
                }
                Ok(out)
            }
        }
    }
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "writing {}: {e} (does the directory exist?)",
            path.display()
        ),
    )
}

/// Every page of `cmd`, top page first, as (file name, roff): the command and each visible
/// subcommand, each with a SEE ALSO naming its parent and the other tool (`see_also`).
pub fn pages(cmd: Command, see_also: &str) -> io::Result<Vec<(String, Vec<u8>)>> {
    // Subcommand pages cover `help`; `build` gives each subcommand its display name
    // (`lbctl-vip-add`) and full bin name (`lbctl vip add`) for the synopsis.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    // Every page's footer names the tool and its version, as the top page's does.
    let source = format!(
        "{} {}",
        cmd.get_name(),
        cmd.get_version().unwrap_or_default()
    );
    let mut out = Vec::new();
    walk(&cmd, None, see_also, &source, &mut out)?;
    Ok(out)
}

fn page_name(cmd: &Command) -> &str {
    cmd.get_display_name().unwrap_or_else(|| cmd.get_name())
}

fn walk(
    cmd: &Command,
    parent: Option<&str>,
    see_also: &str,
    source: &str,
    out: &mut Vec<(String, Vec<u8>)>,
) -> io::Result<()> {
    let man = Man::new(cmd.clone()).section(SECTION).source(source);
    let mut roff = Vec::new();
    man.render(&mut roff)?;
    let mut refs: Vec<&str> = parent.into_iter().collect();
    refs.push(see_also);
    let mut see = Roff::default();
    see.control("SH", ["SEE ALSO"]);
    let mut line = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        if i > 0 {
            line.push(roman(", "));
        }
        line.push(bold(*r));
        line.push(roman(format!("({SECTION})")));
    }
    see.text(line);
    see.to_writer(&mut roff)?;
    out.push((man.get_filename(), roff));
    let name = page_name(cmd).to_string();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        walk(sub, Some(&name), see_also, source, out)?;
    }
    Ok(())
}

/// The completion script for `shell`.
pub fn completions(mut cmd: Command, shell: clap_complete::Shell) -> String {
    let name = cmd.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Parser, Subcommand};

    #[derive(Parser)]
    #[command(name = "tool", version)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Subcommand)]
    enum Cmd {
        /// Things.
        Thing {
            #[command(subcommand)]
            cmd: ThingCmd,
        },
        #[command(hide = true)]
        Secret,
    }

    #[derive(Subcommand)]
    enum ThingCmd {
        /// Add one.
        Add { name: String },
    }

    #[test]
    fn one_page_per_visible_subcommand_each_pointing_up() {
        use clap::CommandFactory;
        let pages = pages(Cli::command(), "other").unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["tool.1", "tool-thing.1", "tool-thing-add.1"]);
        let add = String::from_utf8(pages[2].1.clone()).unwrap();
        assert!(
            add.contains("\n.TH tool-thing-add 1  \"tool 0.1.0\""),
            "{add}"
        );
        assert!(add.contains("tool thing add"), "synopsis: {add}");
        assert!(
            add.contains(".SH \"SEE ALSO\"\n\\fBtool\\-thing\\fR(1), \\fBother\\fR(1)"),
            "{add}"
        );
        let top = String::from_utf8(pages[0].1.clone()).unwrap();
        assert!(top.contains("tool\\-thing(1)"), "{top}");
        assert!(top.contains("\\fBother\\fR(1)"), "{top}");
    }
}
