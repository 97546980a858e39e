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

use std::time::Duration;

use anyhow::{Context, Result};
use lb_api::{ApiError, Envelope, ErrorCode, Reply};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, mpsc, oneshot},
};
use tracing::{info, warn};

/// API connections served at once; one more is answered `busy` and closed. Bounds the file
/// descriptors and memory clients can hold (each connection buffers at most one line).
pub const MAX_CONNECTIONS: usize = 64;
/// The longest request line, newline excluded (an import carries its revisions in one
/// line); a longer line is answered `bad_request` and the connection closed, having
/// buffered no more than this. With MAX_CONNECTIONS, bounds what clients can make the
/// daemon hold to 1 GiB.
pub const MAX_LINE: usize = 16 << 20;
/// A connection that sends no complete line for this long is closed.
pub const IDLE: Duration = Duration::from_secs(60);
/// Back-off after a failed accept (out of file descriptors, ...), doubling up to the max.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

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
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = ACCEPT_BACKOFF;
    loop {
        // A failed accept (EMFILE, ENFILE, ECONNABORTED ...) is transient: the API must
        // outlive it, so back off and go on instead of ending the listener.
        let s = match l.accept().await {
            Ok((s, _)) => {
                backoff = ACCEPT_BACKOFF;
                s
            }
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "accepting an API connection failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        // The peer is checked before anything it sends is read: a refused peer costs one
        // answer, not a buffered line.
        let allowed = s
            .peer_cred()
            .map(|c| c.uid() == 0 || c.uid() == me)
            .unwrap_or(false);
        // A refused peer takes no slot: it cannot crowd out those the API serves.
        let permit = match allowed {
            true => slots.clone().try_acquire_owned().map(Some),
            false => Ok(None),
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let refusal = match (&permit, allowed) {
                (_, false) => Some(Reply::error(
                    ErrorCode::Permission,
                    "the control API serves root and the daemon's own user only",
                )),
                (Err(_), true) => Some(Reply::error(
                    ErrorCode::Busy,
                    format!(
                        "the daemon serves {MAX_CONNECTIONS} API connections at once: retry shortly"
                    ),
                )),
                (Ok(_), true) => None,
            };
            let res = match refusal {
                Some(r) => refuse(s, r).await,
                None => connection(s, tx).await,
            };
            if let Err(e) = res {
                warn!(error = %e, "API connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// Answer once and close. What the peer sends is not read as a request; a little is
/// drained (bounded in bytes and time) so that a client that writes its request before it
/// reads is not met by a reset instead of the answer.
async fn refuse(mut s: UnixStream, answer: Reply) -> Result<()> {
    s.write_all(answer.to_line().as_bytes()).await?;
    s.shutdown().await?;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    let linger = tokio::time::sleep(Duration::from_secs(1));
    tokio::pin!(linger);
    while drained < 64 << 10 {
        tokio::select! {
            n = s.read(&mut sink) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            },
            _ = &mut linger => break,
        }
    }
    Ok(())
}

/// What a connection sent next.
enum Line {
    Text(String),
    NotUtf8,
    TooLong,
}

/// The next line, buffering at most `MAX_LINE` + 1 bytes of it; `None` at the end of the
/// stream.
async fn read_line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Line>> {
    buf.clear();
    let n = r.take(MAX_LINE as u64 + 1).read_until(b'\n', buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > MAX_LINE {
        return Ok(Some(Line::TooLong));
    }
    Ok(Some(match std::str::from_utf8(buf) {
        Ok(t) => Line::Text(t.to_string()),
        Err(_) => Line::NotUtf8,
    }))
}

async fn connection(s: UnixStream, tx: mpsc::Sender<Call>) -> Result<()> {
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        let line = match tokio::time::timeout(IDLE, read_line(&mut r, &mut buf)).await {
            Err(_) | Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(Some(line))) => line,
        };
        let (answer, close) = match line {
            Line::TooLong => (
                Reply::error(
                    ErrorCode::BadRequest,
                    format!("a request line is at most {MAX_LINE} bytes: this one is longer"),
                ),
                true,
            ),
            Line::NotUtf8 => (
                Reply::error(ErrorCode::BadRequest, "the request line is not UTF-8"),
                false,
            ),
            Line::Text(text) => (answer(&text, &tx).await, false),
        };
        w.write_all(answer.to_line().as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}

/// Decode a line and have the control loop answer it.
async fn answer(line: &str, tx: &mpsc::Sender<Call>) -> Reply {
    match Envelope::from_line(line) {
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
