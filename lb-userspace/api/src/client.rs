//! The client: one connection per request, synchronous (`lbctl` needs no runtime).

use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::{
    VERSION,
    reply::{Answer, ApiError, Reply},
    request::{Envelope, Request, request_line},
};

/// Why a call did not get a successful answer.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Connecting, sending or receiving failed: no daemon, a wrong path, no permission to
    /// open the socket (`io::ErrorKind::PermissionDenied`), or the daemon went away.
    #[error(
        "cannot reach the daemon at {}: {source} (is lbd running, is this its [daemon] api_socket, and may this user open it?)",
        socket.display()
    )]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The daemon answered with an error.
    #[error(transparent)]
    Refused(#[from] ApiError),
    /// The daemon's answer is not a version 1 answer, or its data is not what the
    /// operation answers with.
    #[error(
        "the answer from {} is not valid: {detail} (is lbd there, and as new as this client? it speaks API version {VERSION})",
        socket.display()
    )]
    BadAnswer { socket: PathBuf, detail: String },
}

impl ClientError {
    /// For `Unreachable`: what kind of I/O error (`PermissionDenied`, `NotFound`, ...).
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            ClientError::Unreachable { source, .. } => Some(source.kind()),
            ClientError::Refused(_) | ClientError::BadAnswer { .. } => None,
        }
    }
}

/// A client of the daemon's control socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Send `request` (a mutation based on `base_revision`, if given) and wait for the
    /// answer.
    pub fn call(
        &self,
        request: &Request,
        base_revision: Option<u64>,
    ) -> Result<Answer, ClientError> {
        self.exchange(&request_line(request, base_revision))?
            .into_result()
            .map_err(ClientError::Refused)
    }

    /// [`Client::call`], with the answer's data as `T` (the type the operation answers
    /// with: see [`Request`]'s variants).
    pub fn call_typed<T: DeserializeOwned>(
        &self,
        request: &Request,
        base_revision: Option<u64>,
    ) -> Result<T, ClientError> {
        self.call(request, base_revision)?
            .decode()
            .map_err(|e| self.bad_answer(format!("the data of a {} answer: {e}", request.op())))
    }

    /// Send one envelope and read its reply, successful or not.
    pub fn send(&self, envelope: &Envelope) -> Result<Reply, ClientError> {
        self.exchange(&envelope.to_line())
    }

    /// One request line out, one answer line back.
    fn exchange(&self, request_line: &str) -> Result<Reply, ClientError> {
        let unreachable = |source| ClientError::Unreachable {
            socket: self.socket.clone(),
            source,
        };
        let mut s = UnixStream::connect(&self.socket).map_err(unreachable)?;
        // The daemon may answer before it reads (a refused peer) and close: its answer is
        // still there to read, so a failed write is reported only if none is.
        let written = s.write_all(request_line.as_bytes());
        let mut line = String::new();
        let read = BufReader::new(s).read_line(&mut line);
        if line.is_empty() {
            written.map_err(unreachable)?;
        }
        read.map_err(unreachable)?;
        if line.is_empty() {
            return Err(
                self.bad_answer("the daemon closed the connection without answering".into())
            );
        }
        Reply::from_line(&line).map_err(|e| self.bad_answer(e.to_string()))
    }

    fn bad_answer(&self, detail: String) -> ClientError {
        ClientError::BadAnswer {
            socket: self.socket.clone(),
            detail,
        }
    }
}
