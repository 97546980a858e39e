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
//! <!-- docs-test: not run: WHY -->  needs what a test cannot have (real hardware, systemd)
//! ```
//!
//! HTML comments do not show when the Markdown is rendered.

use std::path::{Path, PathBuf};

pub const MARK: &str = "<!-- docs-test:";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
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
}
