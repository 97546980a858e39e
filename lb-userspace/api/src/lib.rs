//! lbd's control API, version 1: newline-delimited JSON over a Unix socket.
//! (Interim form, replaced by the typed requests.)

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub v: u32,
    pub op: String,
    #[serde(default)]
    pub args: Value,
    /// Refuse the change if another one landed since this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_revision: Option<u64>,
}

pub fn ok(data: Value, revision: Option<u64>) -> Value {
    let mut v = json!({"v": VERSION, "ok": true, "data": data});
    if let Some(r) = revision {
        v["revision"] = json!(r);
    }
    v
}

pub fn err(code: &str, message: impl std::fmt::Display) -> Value {
    json!({"v": VERSION, "ok": false, "error": {"code": code, "message": message.to_string()}})
}

/// Client side: one request, one answer (used by lbctl).
pub fn call(socket: &Path, req: &Request) -> std::io::Result<Value> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    let mut line = serde_json::to_string(req).expect("request serializes");
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut answer = String::new();
    std::io::BufReader::new(s).read_line(&mut answer)?;
    serde_json::from_str(&answer)
        .map_err(|e| std::io::Error::other(format!("the daemon's answer is not JSON: {e}")))
}
