//! The control API: newline-delimited JSON over a Unix socket.
//!
//! Version 1. A request is one JSON object on one line:
//! `{"v":1,"op":"backend.set","args":{"vip":"web","address":"198.18.0.21","drain":true},"base_revision":7}`
//! and the answer is one line: `{"v":1,"ok":true,"revision":8,"data":...}` or
//! `{"v":1,"ok":false,"error":{"code":"not_found","message":"..."}}`.
//! Error codes: `bad_request` (malformed or unknown op), `invalid` (the change does not
//! validate), `not_found`, `conflict` (base_revision is not the current revision),
//! `permission` (peer is neither root nor the daemon's user), `internal`.
//! The socket is created owner-only (0600) and every peer's credentials are checked.
//! Mutations are serialized by the daemon and each one is a configuration revision.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::{info, warn};

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

/// A request on its way to the daemon's control loop, with where to send the answer.
pub struct Call {
    pub req: Request,
    pub reply: oneshot::Sender<Value>,
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

/// Listen on `path` until the task is aborted, forwarding requests to `tx`.
pub async fn serve(path: PathBuf, tx: mpsc::Sender<Call>) -> Result<()> {
    // A socket someone answers on belongs to another daemon: never take it over.
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        anyhow::bail!(
            "{} is served by another process (another lbd?): set a different [daemon] api_socket",
            path.display()
        );
    }
    let _ = std::fs::remove_file(&path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let l = UnixListener::bind(&path)
        .with_context(|| format!("binding the API socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} owner-only", path.display()))?;
    info!(socket = %path.display(), "control API listening");
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    loop {
        let (s, _) = l.accept().await.context("accepting an API connection")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let allowed = s
                .peer_cred()
                .map(|c| c.uid() == 0 || c.uid() == me)
                .unwrap_or(false);
            if let Err(e) = connection(s, allowed, tx).await {
                warn!(error = %e, "API connection ended with an error");
            }
        });
    }
}

async fn connection(s: UnixStream, allowed: bool, tx: mpsc::Sender<Call>) -> Result<()> {
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let answer = if !allowed {
            err(
                "permission",
                "the control API serves root and the daemon's own user only",
            )
        } else {
            match serde_json::from_str::<Request>(&line) {
                Err(e) => err(
                    "bad_request",
                    format!("not a version {VERSION} request: {e}"),
                ),
                Ok(req) if req.v != VERSION => err(
                    "bad_request",
                    format!(
                        "API version {} is not served; this daemon speaks {VERSION}",
                        req.v
                    ),
                ),
                Ok(req) => {
                    let (reply, rx) = oneshot::channel();
                    if tx.send(Call { req, reply }).await.is_err() {
                        err("internal", "the daemon is stopping")
                    } else {
                        rx.await
                            .unwrap_or_else(|_| err("internal", "the daemon dropped the request"))
                    }
                }
            }
        };
        let mut out = serde_json::to_string(&answer)?;
        out.push('\n');
        w.write_all(out.as_bytes()).await?;
        if !allowed {
            break;
        }
    }
    Ok(())
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
