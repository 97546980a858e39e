//! The control API's socket: newline-delimited JSON (`lb_api`, docs/api.md) over a Unix
//! socket. Each line is decoded into an `lb_api::Envelope` here; a line that is not one
//! (not JSON, another version, an unknown operation, bad arguments) is answered
//! `bad_request` at once, and every other goes to the daemon's control loop
//! (`Handler::handle`), which serializes them.
//! The socket is created owner-only (0600) and every peer's credentials are checked.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context, Result};
use lb_api::{ApiError, Envelope, ErrorCode, Reply};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::{info, warn};

/// A request on its way to the daemon's control loop, with where to send the answer.
pub struct Call {
    pub envelope: Envelope,
    pub reply: oneshot::Sender<Reply>,
}

/// Set once this daemon listens on its socket.
pub type Bound = Arc<AtomicBool>;

/// Remove the socket at `path` at stop, only if this daemon bound it and no one answers
/// there any more (call it after the listener is closed): the path may belong to another
/// daemon, which ours refused to take over, or which took it over since.
pub fn remove_own_socket(path: &Path, bound: &Bound) {
    if bound.load(Ordering::Relaxed) && std::os::unix::net::UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

/// Listen on `path` until the task is aborted, forwarding requests to `tx`; `bound` records
/// which socket file is ours.
pub async fn serve(path: PathBuf, tx: mpsc::Sender<Call>, bound: Bound) -> Result<()> {
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
    bound.store(true, Ordering::Relaxed);
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
            Reply::error(
                ErrorCode::Permission,
                "the control API serves root and the daemon's own user only",
            )
        } else {
            match Envelope::from_line(&line) {
                Err(e) => Reply::Err(ApiError::from(e)),
                Ok(envelope) => {
                    let (reply, rx) = oneshot::channel();
                    if tx.send(Call { envelope, reply }).await.is_err() {
                        Reply::error(ErrorCode::Internal, "the daemon is stopping")
                    } else {
                        rx.await.unwrap_or_else(|_| {
                            Reply::error(ErrorCode::Internal, "the daemon dropped the request")
                        })
                    }
                }
            }
        };
        w.write_all(answer.to_line().as_bytes()).await?;
        if !allowed {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_socket_this_daemon_bound_is_removed() {
        let dir = std::env::temp_dir().join(format!("lb-api-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.sock");
        let _ = std::fs::remove_file(&path);
        let not_bound: Bound = Arc::default();
        let bound: Bound = Arc::new(AtomicBool::new(true));
        // Another daemon serves the path.
        let theirs = std::os::unix::net::UnixListener::bind(&path).unwrap();
        remove_own_socket(&path, &not_bound);
        assert!(path.exists(), "removed a socket this daemon never bound");
        remove_own_socket(&path, &bound);
        assert!(path.exists(), "removed a socket another daemon answers on");
        // Ours, its listener closed: removed.
        drop(theirs);
        remove_own_socket(&path, &bound);
        assert!(!path.exists(), "left its own socket behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
