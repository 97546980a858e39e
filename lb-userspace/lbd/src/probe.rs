//! Active health probes. A probe only measures (success with its latency, or why it
//! failed); the controller owns the verdicts (rise, fall, degraded), so every state change
//! happens in one place and in order.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    sync::mpsc,
    task::JoinHandle,
    time::{Instant, timeout},
};

use tokio_rustls::{
    TlsConnector,
    rustls::{
        self, DigitallySignedStruct, SignatureScheme,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        pki_types::{CertificateDer, ServerName, UnixTime},
    },
};

use lb_control::{CheckKind, Health, Probe};

/// Ask the agent on `addr` for one line.
pub async fn agent(timeout_ms: u64, addr: SocketAddr) -> Result<String, String> {
    let run = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("agent connect: {e}"))?;
        let mut buf = vec![0u8; 512];
        let mut got = 0;
        while got < buf.len() {
            let n = s
                .read(&mut buf[got..])
                .await
                .map_err(|e| format!("agent read: {e}"))?;
            got += n;
            if n == 0 || buf[..got].contains(&b'\n') {
                break;
            }
        }
        let text = String::from_utf8_lossy(&buf[..got]);
        Ok(text.lines().next().unwrap_or_default().trim().to_string())
    };
    match timeout(Duration::from_millis(timeout_ms), run).await {
        Ok(r) => r,
        Err(_) => Err(format!("agent timeout after {timeout_ms} ms")),
    }
}

/// Ask the agent at `addr` every interval until aborted.
pub fn spawn_agent(
    vip: String,
    backend_id: u32,
    h: Health,
    addr: SocketAddr,
    tx: mpsc::Sender<Probe>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let answer = agent(h.timeout_ms, addr).await;
            let probe = Probe {
                vip: vip.clone(),
                backend_id,
                result: Ok(Duration::ZERO),
                at: std::time::Instant::now(),
                agent: Some(answer),
            };
            if tx.send(probe).await.is_err() {
                return;
            }
            let jitter = rand::random_range(0..=h.interval_ms / 10);
            tokio::time::sleep(Duration::from_millis(h.interval_ms + jitter)).await;
        }
    })
}

/// Run one check against `addr`.
pub async fn check(h: &Health, addr: SocketAddr) -> Result<Duration, String> {
    let start = Instant::now();
    let limit = Duration::from_millis(h.timeout_ms);
    let run = async {
        match h.kind {
            CheckKind::None => Ok(()),
            CheckKind::Tcp => TcpStream::connect(addr)
                .await
                .map(|_| ())
                .map_err(|e| format!("tcp connect: {e}")),
            CheckKind::Http => {
                let s = TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("http connect: {e}"))?;
                http(h, addr, s).await
            }
            CheckKind::Https => https(h, addr).await,
            CheckKind::Udp => udp(h, addr).await,
        }
    };
    match timeout(limit, run).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("timeout after {} ms", h.timeout_ms)),
    }
}

/// HTTP/1.1 GET over `s` (plain TCP or TLS); only the status line matters.
async fn http<S: AsyncRead + AsyncWrite + Unpin>(
    h: &Health,
    addr: SocketAddr,
    mut s: S,
) -> Result<(), String> {
    let host = h.host.clone().unwrap_or_else(|| addr.ip().to_string());
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lbd-health\r\nConnection: close\r\n\r\n",
        h.path
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("http write: {e}"))?;
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        let n = s
            .read(&mut buf[got..])
            .await
            .map_err(|e| format!("http read: {e}"))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let line = String::from_utf8_lossy(&buf[..got]);
    let status: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("http: no status line in {line:?}"))?;
    if status == h.expect_status {
        Ok(())
    } else {
        Err(format!(
            "http status {status}, expected {}",
            h.expect_status
        ))
    }
}

/// HTTPS: TLS, then the same GET. The certificate is not verified (as HAProxy's
/// `check-ssl verify none`): checks address backends by IP, and what is checked is that the
/// service answers, not who it is. SNI is the `host` setting when it is a name.
async fn https(h: &Health, addr: SocketAddr) -> Result<(), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("https connect: {e}"))?;
    let name = h
        .host
        .as_deref()
        .and_then(|n| ServerName::try_from(n.to_string()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
    let tls = tls_connector()
        .connect(name, tcp)
        .await
        .map_err(|e| format!("https handshake: {e}"))?;
    http(h, addr, tls).await
}

fn tls_connector() -> TlsConnector {
    static CONNECTOR: std::sync::OnceLock<TlsConnector> = std::sync::OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
                .with_no_client_auth();
            TlsConnector::from(Arc::new(cfg))
        })
        .clone()
}

/// Accepts any certificate, still checking the handshake signatures.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn udp(h: &Health, addr: SocketAddr) -> Result<(), String> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .unwrap();
    let s = UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("udp bind: {e}"))?;
    s.connect(addr)
        .await
        .map_err(|e| format!("udp connect: {e}"))?;
    s.send(h.send.as_bytes())
        .await
        .map_err(|e| format!("udp send: {e}"))?;
    let mut buf = [0u8; 1500];
    let n = s
        .recv(&mut buf)
        .await
        .map_err(|e| format!("udp recv: {e}"))?;
    match &h.expect {
        Some(want) if !buf[..n].starts_with(want.as_bytes()) => Err(format!(
            "udp answer {:?} does not start with {want:?}",
            String::from_utf8_lossy(&buf[..n])
        )),
        _ => Ok(()),
    }
}

/// Probe `addr` every interval (with up to 10% jitter, so thousands of checks do not fire
/// in lockstep) until the task is aborted, reporting each result.
pub fn spawn(
    vip: String,
    backend_id: u32,
    h: Health,
    addr: SocketAddr,
    tx: mpsc::Sender<Probe>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let interval = Duration::from_millis(h.interval_ms);
        loop {
            let result = check(&h, addr).await;
            let probe = Probe {
                vip: vip.clone(),
                backend_id,
                result,
                at: std::time::Instant::now(),
                agent: None,
            };
            if tx.send(probe).await.is_err() {
                return;
            }
            let jitter = rand::random_range(0..=h.interval_ms / 10);
            tokio::time::sleep(interval + Duration::from_millis(jitter)).await;
        }
    })
}
