//! A small server and client for the namespace tests.
//!
//! `lbt-echo serve NAME [--tcp ADDR]... [--udp ADDR]...`: answers every line (TCP) or
//! datagram (UDP) with `NAME\n`; TCP connections stay open until the peer closes, so tests
//! can hold long-lived connections.
//! `lbt-echo client (--tcp|--udp) ADDR COUNT`: COUNT requests, each a new connection or a new
//! socket; prints `NAME COUNT` per backend that answered and `failed N`.
//! `lbt-echo hold ADDR CONNS MILLIS`: opens CONNS TCP connections and exchanges a line on
//! each every 100 ms for MILLIS ms; prints `NAME COUNT` per backend (where the connections
//! landed), then `broken NAME N` per backend for connections that failed or changed backend.
//! `lbt-echo rate ADDR PER_SECOND MILLIS` (TCP) and `lbt-echo rate-udp ...`: new flows at a
//! steady pace; prints `STARTED_MS TOOK_MS NAME|failed` per flow. A UDP flow is a request
//! (resent every second, up to three times) and, once answered, a second datagram, as
//! protocols with a handshake over UDP do.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

/// A server config with a fresh self-signed certificate.
fn tls_config() -> std::sync::Arc<rustls::ServerConfig> {
    let cert = rcgen::generate_simple_self_signed(vec!["backend.test".into()])
        .expect("self-signed certificate");
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("key");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server certificate");
    std::sync::Arc::new(cfg)
}

/// Milliseconds to wait before an HTTP health answer (file `delay` in the control dir).
fn delay(control: &Option<String>) -> Duration {
    let ms = control
        .as_ref()
        .and_then(|d| std::fs::read_to_string(format!("{d}/delay")).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    Duration::from_millis(ms)
}

fn serve(name: String, args: &[String]) {
    let mut threads = Vec::new();
    let control = args
        .chunks(2)
        .find(|p| p[0] == "--control")
        .map(|p| p[1].clone());
    for pair in args.chunks(2) {
        if pair[0] == "--control" {
            continue;
        }
        let addr: SocketAddr = pair[1].parse().expect("address");
        let name = name.clone();
        let control = control.clone();
        match pair[0].as_str() {
            // HTTP health endpoint: 200 after the control dir's delay.
            "--http" => {
                let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                threads.push(std::thread::spawn(move || {
                    for mut s in l.incoming().flatten() {
                        let control = control.clone();
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 1024];
                            let _ = std::io::Read::read(&mut s, &mut buf);
                            std::thread::sleep(delay(&control));
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
                        });
                    }
                }));
            }
            // The same health endpoint over TLS, with a self-signed certificate.
            "--https" => {
                let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                let tls = tls_config();
                threads.push(std::thread::spawn(move || {
                    for s in l.incoming().flatten() {
                        let (tls, control) = (tls.clone(), control.clone());
                        std::thread::spawn(move || {
                            let Ok(conn) = rustls::ServerConnection::new(tls) else { return };
                            let mut stream = rustls::StreamOwned::new(conn, s);
                            let mut buf = [0u8; 1024];
                            if std::io::Read::read(&mut stream, &mut buf).is_err() {
                                return;
                            }
                            std::thread::sleep(delay(&control));
                            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
                            stream.conn.send_close_notify();
                            let _ = stream.flush();
                        });
                    }
                }));
            }
            // HAProxy agent-check: one line from the control dir's `agent` file ("up" if none).
            "--agent" => {
                let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                threads.push(std::thread::spawn(move || {
                    for mut s in l.incoming().flatten() {
                        let says = control
                            .as_ref()
                            .and_then(|d| std::fs::read_to_string(format!("{d}/agent")).ok())
                            .unwrap_or_else(|| "up".into());
                        let _ = s.write_all(format!("{}\n", says.trim()).as_bytes());
                    }
                }));
            }
            "--tcp" => {
                let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                threads.push(std::thread::spawn(move || {
                    for s in l.incoming().flatten() {
                        let name = name.clone();
                        std::thread::spawn(move || {
                            let mut w = s.try_clone().unwrap();
                            for line in BufReader::new(s).lines() {
                                if line.is_err()
                                    || w.write_all(format!("{name}\n").as_bytes()).is_err()
                                {
                                    break;
                                }
                            }
                        });
                    }
                }));
            }
            "--udp" => {
                let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                threads.push(std::thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    while let Ok((_, peer)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(format!("{name}\n").as_bytes(), peer);
                    }
                }));
            }
            other => panic!("unknown option {other}"),
        }
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    for t in threads {
        let _ = t.join();
    }
}

fn tcp_once(addr: SocketAddr) -> Option<String> {
    let t = std::time::Instant::now();
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| eprintln!("connect {addr}: {e} after {:?}", t.elapsed()))
        .ok()?;
    let local = s.local_addr().ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    (&s).write_all(b"hi\n").ok()?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| eprintln!("read {local} -> {addr}: {e} after {:?}", t.elapsed()))
        .ok()?;
    Some(line.trim().to_string()).filter(|l| !l.is_empty())
}

/// A UDP socket of a new flow to `addr`, waiting at most `wait_ms` for each answer.
fn udp_flow(addr: SocketAddr, wait_ms: u64) -> Option<UdpSocket> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .unwrap();
    let s = UdpSocket::bind(bind).ok()?;
    s.connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(wait_ms)))
        .ok()?;
    Some(s)
}

fn udp_once(addr: SocketAddr) -> Option<String> {
    let s = udp_flow(addr, 700)?;
    let mut buf = [0u8; 256];
    for _ in 0..3 {
        s.send(b"hi").ok()?;
        if let Ok(n) = s.recv(&mut buf) {
            return Some(String::from_utf8_lossy(&buf[..n]).trim().to_string());
        }
    }
    None
}

fn client(kind: &str, addr: &str, count: u32) {
    let addr: SocketAddr = addr.parse().expect("address");
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut failed = 0;
    for _ in 0..count {
        let r = if kind == "--tcp" {
            tcp_once(addr)
        } else {
            udp_once(addr)
        };
        match r {
            Some(name) => *seen.entry(name).or_default() += 1,
            None => failed += 1,
        }
    }
    for (name, n) in seen {
        println!("{name} {n}");
    }
    println!("failed {failed}");
}

fn hold(addr: &str, conns: usize, millis: u64) {
    let addr: SocketAddr = addr.parse().expect("address");
    // The backend's name, or why there is none.
    let ask = |s: &TcpStream| -> Result<String, String> {
        (&*s).write_all(b"hi\n").map_err(|e| format!("send: {e}"))?;
        let mut line = String::new();
        BufReader::new(s)
            .read_line(&mut line)
            .map_err(|e| format!("receive: {e}"))?;
        Some(line.trim().to_string())
            .filter(|l| !l.is_empty())
            .ok_or_else(|| "closed by the peer".to_string())
    };
    let mut held = Vec::new();
    // A connect that fails is tried again (up to 5 times, 100 ms apart) and counted: what
    // this tool measures is connections that break once established.
    let mut retried = 0;
    let connect = |retried: &mut u32| loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(s) => return s,
            Err(e) if *retried < 5 => {
                *retried += 1;
                eprintln!("connect for hold: {e}; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("connect for hold: {e}"),
        }
    };
    for _ in 0..conns {
        let s = connect(&mut retried);
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let name = ask(&s).expect("first answer on a held connection");
        held.push((s, name, false));
    }
    let mut at: BTreeMap<String, u32> = BTreeMap::new();
    for (_, name, _) in &held {
        *at.entry(name.clone()).or_default() += 1;
    }
    for (name, n) in &at {
        println!("{name} {n}");
    }
    if retried > 0 {
        println!("retried {retried}");
    }
    std::io::stdout().flush().unwrap();
    let end = std::time::Instant::now() + Duration::from_millis(millis);
    while std::time::Instant::now() < end {
        for (s, name, broken) in held.iter_mut().filter(|h| !h.2) {
            let answer = ask(s);
            if answer.as_ref() != Ok(name) {
                *broken = true;
                // Why, for the test's failure message (stdout is the report).
                let why = match answer {
                    Ok(other) => format!("moved to {other}"),
                    Err(e) => e,
                };
                eprintln!(
                    "a connection to {name} broke after {} ms: {why}",
                    millis
                        - end
                            .saturating_duration_since(std::time::Instant::now())
                            .as_millis() as u64
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut broken: BTreeMap<String, u32> = BTreeMap::new();
    for (_, name, b) in &held {
        if *b {
            *broken.entry(name.clone()).or_default() += 1;
        }
    }
    for (name, n) in broken {
        println!("broken {name} {n}");
    }
}

/// One UDP flow of `rate-udp`: the request, resent every second until it is answered (as
/// QUIC resends its first flight), then a second datagram, which passive detection counts
/// as the client's answer. The second is not waited for: the flow took until its answer.
/// A resend is the flow's second datagram too, and counts as an answer: clients that resend
/// within `handshake_ms + window_ms` hide a dead backend from passive detection.
fn udp_exchange(addr: SocketAddr) -> Option<String> {
    let s = udp_flow(addr, 1000)?;
    let mut buf = [0u8; 256];
    for _ in 0..3 {
        s.send(b"hello").ok()?;
        if let Ok(n) = s.recv(&mut buf) {
            let name = String::from_utf8_lossy(&buf[..n]).trim().to_string();
            s.send(b"done").ok()?;
            return Some(name);
        }
    }
    None
}

/// New flows to `addr` at `per_second` for `millis`, each made by `once` on a thread of
/// its own (a connection to a black-holed backend waits for its SYN's retransmission): one
/// line per flow, `START_MS TOOK_MS NAME` or `START_MS TOOK_MS failed`, in the order
/// started; START_MS counts from the first line `start` (printed at once), TOOK_MS is how
/// long the flow took to be answered.
fn rate(addr: &str, per_second: u64, millis: u64, once: fn(SocketAddr) -> Option<String>) {
    let addr: SocketAddr = addr.parse().expect("address");
    let start = std::time::Instant::now();
    println!("start");
    std::io::stdout().flush().unwrap();
    let every = Duration::from_micros(1_000_000 / per_second.max(1));
    let mut threads = Vec::new();
    let mut next = start;
    while start.elapsed() < Duration::from_millis(millis) {
        let begun = next.duration_since(start).as_millis() as u64;
        threads.push(std::thread::spawn(move || {
            let t = std::time::Instant::now();
            let r = once(addr);
            (begun, t.elapsed().as_millis() as u64, r)
        }));
        next += every;
        if let Some(wait) = next.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    for t in threads {
        let (begun, took, r) = t.join().unwrap();
        println!("{begun} {took} {}", r.as_deref().unwrap_or("failed"));
    }
}

/// Connect to the Unix socket at `path`, send nothing, and print the first line that
/// arrives within 5 s (exit 1 if none does): what a server says before it reads.
fn listen_unix(path: &str) {
    use std::io::BufRead;
    let s = std::os::unix::net::UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = String::new();
    match std::io::BufReader::new(s).read_line(&mut line) {
        Ok(n) if n > 0 => print!("{line}"),
        other => {
            eprintln!("nothing arrived: {other:?}");
            std::process::exit(1);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") if args.len() >= 2 => serve(args[1].clone(), &args[2..]),
        Some("client") if args.len() == 4 => {
            client(&args[1], &args[2], args[3].parse().expect("count"))
        }
        Some("hold") if args.len() == 4 => hold(
            &args[1],
            args[2].parse().expect("conns"),
            args[3].parse().expect("millis"),
        ),
        Some("listen-unix") if args.len() == 2 => listen_unix(&args[1]),
        Some(kind @ ("rate" | "rate-udp")) if args.len() == 4 => rate(
            &args[1],
            args[2].parse().expect("per second"),
            args[3].parse().expect("millis"),
            if kind == "rate" {
                tcp_once
            } else {
                udp_exchange
            },
        ),
        _ => {
            eprintln!(
                "usage: lbt-echo serve NAME [--tcp ADDR]... [--udp ADDR]... | lbt-echo client (--tcp|--udp) ADDR COUNT | lbt-echo hold ADDR CONNS MILLIS | lbt-echo (rate|rate-udp) ADDR PER_SECOND MILLIS | lbt-echo listen-unix PATH"
            );
            std::process::exit(2);
        }
    }
}
