//! The control API's bounds against a real daemon: a peer of another user refused before it
//! sends anything, an overlong line refused having buffered no more than the limit, a line
//! that is not UTF-8 answered, connections over the cap answered `busy`, and an accept loop
//! that outlives running out of file descriptors.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    process::Command,
    time::Duration,
};

use lb_common::Forward;
use lb_tests::{
    daemon::Daemon,
    topology::{Topology, VIP4},
};

const ECHO: &str = env!("CARGO_BIN_EXE_lbt-echo");
const LBD: &str = env!("CARGO_BIN_EXE_lbt-lbd");

/// What lbd's server allows (lb-userspace/lbd/src/server.rs); docs/api.md says the same.
const MAX_LINE: usize = 16 << 20;
const MAX_CONNECTIONS: usize = 64;

fn start() -> (Topology, Daemon) {
    let t = Topology::new(3, Forward::IpIp, ECHO);
    let config = format!(
        "[daemon]\ninterfaces = [\"eth0\"]\npin_dir = \"@PIN_DIR@\"\n\n[dataplane]\nflows = 65536\nring_capacity = 262148\n\n\
         [[vip]]\nname = \"web\"\naddress = \"{VIP4}\"\nport = 80\n\n\
         [[vip.backend]]\naddress = \"198.18.0.21\"\n"
    );
    let mut d = Daemon::start(&t, LBD, &config);
    d.wait_served(&t, &format!("{VIP4}:80"));
    (t, d)
}

fn connect(d: &Daemon) -> UnixStream {
    let s = UnixStream::connect(d.socket()).expect("connect to the API socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// One line read from `s`.
fn answer(s: &mut BufReader<UnixStream>) -> String {
    let mut a = String::new();
    s.read_line(&mut a).expect("an answer line");
    a
}

fn status_answers(d: &Daemon) -> bool {
    let Ok(mut s) = UnixStream::connect(d.socket()) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if writeln!(s, "{{\"v\":1,\"op\":\"status\"}}").is_err() {
        return false;
    }
    answer(&mut BufReader::new(s)).contains("\"ok\":true")
}

#[test]
fn overlong_and_non_utf8_lines_are_answered() {
    let (_t, mut d) = start();
    // Not UTF-8: answered, and the connection goes on serving.
    let mut s = connect(&d);
    s.write_all(b"{\"v\":1,\"op\":\"st\xffatus\"}\n").unwrap();
    s.write_all(b"{\"v\":1,\"op\":\"status\"}\n").unwrap();
    let mut r = BufReader::new(s);
    let first = answer(&mut r);
    assert!(
        first.contains("bad_request") && first.contains("not UTF-8"),
        "{first}"
    );
    let second = answer(&mut r);
    assert!(second.contains("\"ok\":true"), "{second}");

    // A line past the limit (no newline ever comes): refused once the limit is read, and
    // closed; the daemon does not wait for the rest.
    let mut s = connect(&d);
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0;
    while sent <= MAX_LINE {
        if s.write_all(&chunk).is_err() {
            break; // closed by the daemon once the limit was passed
        }
        sent += chunk.len();
    }
    let mut rest = String::new();
    let _ = s.read_to_string(&mut rest);
    assert!(
        rest.contains("bad_request") && rest.contains("at most 16777216 bytes"),
        "after {sent} bytes: {rest:?}"
    );
    d.assert_running();
    assert!(status_answers(&d));
}

#[test]
fn another_user_is_refused_before_it_sends_anything() {
    let (_t, d) = start();
    Command::new("chmod")
        .arg("666")
        .arg(d.socket())
        .status()
        .unwrap();
    // As nobody: connect and read, sending nothing. The answer comes at once.
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            ECHO,
            "listen-unix",
        ])
        .arg(d.socket())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("\"code\":\"permission\""),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn connections_past_the_cap_are_busy_and_the_api_outlives_running_out_of_fds() {
    let (_t, mut d) = start();
    // Hold the cap: each connection has sent a request and been answered, so it is served.
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        let mut s = connect(&d);
        writeln!(s, "{{\"v\":1,\"op\":\"status\"}}").unwrap();
        let mut r = BufReader::new(s);
        assert!(answer(&mut r).contains("\"ok\":true"));
        held.push(r);
    }
    let mut extra = BufReader::new(connect(&d));
    let busy = answer(&mut extra);
    assert!(busy.contains("\"code\":\"busy\""), "{busy}");
    drop(held);
    drop(extra);

    // Out of descriptors: the daemon's limit lowered under it, then more idle clients than
    // it has descriptors. Accepting fails (EMFILE) while they are held...
    let pid = d.pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = open + 16;
    let st = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "prlimit failed");
    let idle: Vec<UnixStream> = (0..200)
        .filter_map(|_| UnixStream::connect(d.socket()).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    drop(idle);
    // ...and once they are gone, the API answers again.
    let mut answered = false;
    for _ in 0..50 {
        if status_answers(&d) {
            answered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    d.assert_running();
    assert!(
        answered,
        "the API never answered again after running out of descriptors:\n{}",
        d.log()
    );
    assert!(
        d.log()
            .contains("accepting an API connection failed; retrying"),
        "the daemon never ran out of descriptors, so this proved nothing:\n{}",
        d.log()
    );
}
