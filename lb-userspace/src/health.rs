//! Active health probes. A probe only measures (success with its latency, or why it
//! failed); the controller owns the verdicts (rise, fall, degraded), so every state change
//! happens in one place and in order.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    sync::mpsc,
    task::JoinHandle,
    time::{Instant, timeout},
};

use crate::config::{CheckKind, Health};

/// One probe's outcome for backend `backend_id` of VIP `vip`.
#[derive(Debug, Clone)]
pub struct Probe {
    pub vip: String,
    pub backend_id: u32,
    pub result: Result<Duration, String>,
    /// When the result was known: the start of the failover clock.
    pub at: Instant,
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
            CheckKind::Http => http(h, addr).await,
            CheckKind::Udp => udp(h, addr).await,
        }
    };
    match timeout(limit, run).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("timeout after {} ms", h.timeout_ms)),
    }
}

/// HTTP/1.1 GET; only the status line matters.
async fn http(h: &Health, addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("http connect: {e}"))?;
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
                at: Instant::now(),
            };
            if tx.send(probe).await.is_err() {
                return;
            }
            let jitter = rand::random_range(0..=h.interval_ms / 10);
            tokio::time::sleep(interval + Duration::from_millis(jitter)).await;
        }
    })
}
