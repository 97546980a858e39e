//! The command blocks of README.md and docs/*.md, for the tests that keep the docs true.
//!
//! Every ```` ```sh ```` block is preceded by a marker saying which test runs it:
//!
//! ```text
//! <!-- docs-test: cli -->        only lbd/lbctl/cargo xtask lines: each is parsed by the real
//!                                parser, each lbctl line runs against a daemon (docs.rs)
//! <!-- docs-test: daemon -->     run against a test daemon, in its namespace (docs.rs)
//! <!-- docs-test: gateway -->    run in a fresh namespace with an eth0; effects read back
//! <!-- docs-test: backend -->    the same, for a backend host
//! <!-- docs-test: client -->     the same, for the test client
//! <!-- docs-test: install -->    run by tests/tests/install.rs into a temporary --destdir
//! <!-- docs-test: deb -->        run by tests/tests/deb.rs: the package, into a temporary dir
//! <!-- docs-test: not run: WHY -->  needs what a test cannot have (real hardware, systemd)
//! ```
//!
//! A block of log lines (not `sh`: no language, or `json` for `--log-json`) is marked too,
//! so that what the docs quote is what the daemon writes:
//!
//! ```text
//! <!-- docs-test: log -->        every line is a log line a real daemon writes: doc_logs.rs
//!                                produces each and compares them, the parts that vary masked
//! ```
//!
//! HTML comments do not show when the Markdown is rendered.

use std::path::{Path, PathBuf};

pub const MARK: &str = "<!-- docs-test:";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/suite is two levels below the workspace root")
        .to_path_buf()
}

pub fn doc_files() -> Vec<PathBuf> {
    let root = root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

#[derive(Debug, Clone)]
pub struct Block {
    pub file: PathBuf,
    /// 1-based line of the opening fence.
    pub line: usize,
    /// The fence's info string (`sh`, `json`, or empty).
    pub lang: String,
    /// What the marker before the fence says (`cli`, `not run: ...`), if there is one.
    pub mark: Option<String>,
    pub lines: Vec<String>,
}

impl Block {
    pub fn at(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }

    /// The commands: non-empty lines with a trailing `  # comment` removed. A line ending in
    /// `\` continues on the next.
    pub fn commands(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        for l in &self.lines {
            let l = l.trim();
            if let Some(head) = l.strip_suffix('\\') {
                cur.push_str(head);
                continue;
            }
            cur.push_str(l);
            let c = strip_comment(&cur).trim().to_string();
            cur.clear();
            if !c.is_empty() && !c.starts_with('#') {
                out.push(c);
            }
        }
        out
    }

    pub fn is_mark(&self, kind: &str) -> bool {
        self.mark.as_deref() == Some(kind)
    }
}

/// `cmd  # comment` -> `cmd` (a `#` after whitespace, outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev.is_whitespace() => return &line[..i],
            _ => {}
        }
        prev = c;
    }
    line
}

/// Every fenced block of `text`.
pub fn blocks_in(file: &Path, text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    let mut last = "";
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(info) = t.strip_prefix("```") {
            match open.take() {
                Some(b) => {
                    out.push(b);
                    last = "";
                }
                None => {
                    let mark = last
                        .strip_prefix(MARK)
                        .and_then(|m| m.strip_suffix("-->"))
                        .map(|m| m.trim().to_string());
                    open = Some(Block {
                        file: file.to_path_buf(),
                        line: i + 1,
                        lang: info.trim().to_string(),
                        mark,
                        lines: Vec::new(),
                    });
                }
            }
            continue;
        }
        match open.as_mut() {
            Some(b) => b.lines.push(line.to_string()),
            None if !t.is_empty() => last = t,
            None => {}
        }
    }
    out
}

/// Every fenced block of every doc file.
pub fn blocks() -> Vec<Block> {
    doc_files()
        .iter()
        .flat_map(|f| blocks_in(f, &std::fs::read_to_string(f).expect("read doc")))
        .collect()
}

/// The blocks marked `kind`; panics if there is none (a test that checks nothing).
pub fn marked(kind: &str) -> Vec<Block> {
    let b: Vec<Block> = blocks().into_iter().filter(|b| b.is_mark(kind)).collect();
    assert!(!b.is_empty(), "no docs block is marked `{MARK} {kind} -->`");
    b
}

/// Split like a shell would for these simple lines (quotes kept together).
pub fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    for c in line.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ' ') => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The programs an operator types. A code span in prose that starts with one of these (or with
/// `./target/`) and has an argument is a command.
pub const PROGRAMS: &[&str] = &[
    "bpftool",
    "cargo",
    "curl",
    "ethtool",
    "install",
    "ip",
    "journalctl",
    "lbctl",
    "lbd",
    "modprobe",
    "mount",
    "nft",
    "sysctl",
    "systemctl",
    "tc",
    "tcpdump",
    "umount",
];

/// A command written in a code span in prose, outside any fenced block.
#[derive(Debug, Clone)]
pub struct Inline {
    pub file: PathBuf,
    /// 1-based line where the span starts.
    pub line: usize,
    pub text: String,
}

pub fn is_program(word: &str) -> bool {
    PROGRAMS.contains(&word) || word.starts_with("./target/")
}

/// The inline commands of `text`. Fenced blocks and HTML comments (the markers quote commands
/// in their reasons) are not prose; a span may wrap onto the next line.
pub fn inline_commands_in(file: &Path, text: &str) -> Vec<Inline> {
    let mut prose = String::new();
    let mut fenced = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            fenced = !fenced;
        }
        if !fenced && !t.starts_with("```") && !t.starts_with("<!--") {
            prose.push_str(line);
        }
        prose.push('\n');
    }
    let mut out = Vec::new();
    let mut offset = 0;
    for (i, part) in prose.split('`').enumerate() {
        let line = prose[..offset].matches('\n').count() + 1;
        offset += part.len() + 1;
        // Odd parts are inside a span; one across a blank line is an unpaired backtick.
        if i % 2 == 0 || part.contains("\n\n") {
            continue;
        }
        let text = part.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut w = text.split(' ');
        if w.next().is_some_and(is_program) && w.next().is_some() {
            out.push(Inline {
                file: file.to_path_buf(),
                line,
                text,
            });
        }
    }
    out
}

/// Every inline command of every doc file.
pub fn inline_commands() -> Vec<Inline> {
    doc_files()
        .iter()
        .flat_map(|f| inline_commands_in(f, &std::fs::read_to_string(f).expect("read doc")))
        .collect()
}

/// Whether the inline command `span` is written out in `cmd`, a command of a fenced block:
/// its words begin `cmd`'s. A word in capitals (`FILE`, `N`) stands for any word, and optional
/// parts (`[--keep]`) and a trailing `...` are left out of the comparison.
pub fn spells(span: &str, cmd: &str) -> bool {
    let mut bare = String::new();
    let mut depth = 0;
    for c in span.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            c if depth == 0 => bare.push(c),
            _ => {}
        }
    }
    let want = words(bare.trim_end_matches("...").trim());
    let have = words(cmd);
    want.len() <= have.len()
        && want.iter().zip(&have).all(|(w, h)| {
            w == h
                || (w.chars().any(|c| c.is_ascii_uppercase())
                    && w.chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_marks_commands_and_continuations() {
        let md = "text\n\n<!-- docs-test: backend -->\n\n```sh\nip addr add 1 dev lo   # why\n\
                  python3 -c 'a # b' \\\n  arg\n```\n\n```json\n{}\n```\n";
        let b = blocks_in(Path::new("x.md"), md);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].mark.as_deref(), Some("backend"));
        assert_eq!(b[0].line, 5);
        assert_eq!(
            b[0].commands(),
            ["ip addr add 1 dev lo", "python3 -c 'a # b' arg"]
        );
        assert_eq!(b[1].lang, "json");
        assert_eq!(b[1].mark, None);
    }

    #[test]
    fn finds_inline_commands_and_matches_them() {
        let md = "Run `ip route add\nblackhole 10.0.0.1/32` or see `lbd`, `foo bar`.\n\n\
                  <!-- docs-test: not run: `ip link set x up` -->\n```sh\n`ip a`\n```\n";
        let c = inline_commands_in(Path::new("x.md"), md);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].text, "ip route add blackhole 10.0.0.1/32");
        assert_eq!(c[0].line, 1);
        assert!(spells(
            "lbd purge [--pin-dir DIR]",
            "lbd purge --pin-dir /x"
        ));
        assert!(spells(
            "lbctl config diff FROM [TO]",
            "lbctl config diff 12 13"
        ));
        assert!(spells(
            "lbctl config show --revision N",
            "lbctl config show --revision 3"
        ));
        assert!(!spells(
            "lbctl config show --revision 3",
            "lbctl config show"
        ));
        assert!(!spells("lbd check -c a", "lbd check -c b"));
    }
}
