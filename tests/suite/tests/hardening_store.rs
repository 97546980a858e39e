//! The revision store and the reads it answers, against a real daemon: a diff answered off
//! the control loop (a status asked meanwhile is answered first), revisions bounded in size
//! and imports in count, a stray file at the last id refusing changes instead of wrapping
//! the ids, a cut-short newest revision reported after a restart instead of passed over,
//! and a reload with an unwritable store that says it was applied (and the next change
//! building on it).

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{fs::OpenOptionsExt, net::UnixStream},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use lb_common::Forward;
use lb_tests::{
    daemon::Daemon,
    topology::{Topology, VIP4},
};
use serde_json::{Value, json};

const ECHO: &str = env!("CARGO_BIN_EXE_lbt-echo");
const LBD: &str = env!("CARGO_BIN_EXE_lbt-lbd");

/// What lbd's store allows (lb-userspace/lbd/src/store.rs); docs/daemon.md and docs/api.md
/// say the same.
const MAX_REVISION_BYTES: usize = 4 << 20;
const MAX_COMMENT_BYTES: usize = 4096;
const MAX_IMPORT_REVISIONS: usize = 1000;

fn config(weight: u32) -> String {
    format!(
        "[daemon]\ninterfaces = [\"eth0\"]\npin_dir = \"@PIN_DIR@\"\n\n[dataplane]\nflows = 65536\nring_capacity = 262148\n\n\
         [[vip]]\nname = \"web\"\naddress = \"{VIP4}\"\nport = 80\n\n\
         [[vip.backend]]\naddress = \"198.18.0.21\"\nweight = {weight}\n"
    )
}

fn start() -> (Topology, Daemon) {
    let t = Topology::new(3, Forward::IpIp, ECHO);
    let mut d = Daemon::start(&t, LBD, &config(100));
    d.wait_served(&t, &format!("{VIP4}:80"));
    (t, d)
}

/// Wait until the (re)started daemon answers on its socket: the pinned dataplane serves
/// before it does.
fn wait_api(d: &mut Daemon) {
    for _ in 0..300 {
        d.assert_running();
        if let Ok(mut s) = UnixStream::connect(d.socket()) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            if writeln!(s, "{}", json!({"v": 1, "op": "status"})).is_ok() {
                let mut line = String::new();
                if BufReader::new(s).read_line(&mut line).is_ok() && line.contains("\"ok\":true") {
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the API never answered:\n{}", d.log());
}

fn state_dir(d: &Daemon) -> PathBuf {
    d.dir.join("state")
}

/// A connection to the API that has sent `request`; its answer is read by `answer`.
fn send(d: &Daemon, request: &Value) -> BufReader<UnixStream> {
    let mut s = UnixStream::connect(d.socket()).expect("connect to the API socket");
    // A guard against a hang, not a measure: every answer here comes in seconds.
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    writeln!(s, "{request}").unwrap();
    BufReader::new(s)
}

fn answer(r: &mut BufReader<UnixStream>) -> Value {
    let mut line = String::new();
    r.read_line(&mut line).expect("an answer line");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn call(d: &Daemon, request: Value) -> Value {
    answer(&mut send(d, &request))
}

fn ok(d: &Daemon, request: Value) -> Value {
    let a = call(d, request.clone());
    assert_eq!(a["ok"], true, "{request} failed: {a}");
    a
}

fn status(d: &Daemon) -> Value {
    ok(d, json!({"v": 1, "op": "status"}))["data"].clone()
}

fn revision(d: &Daemon) -> u64 {
    status(d)["revision"].as_u64().unwrap()
}

fn problems(d: &Daemon) -> String {
    status(d)["store_problems"].to_string()
}

fn apply(d: &Daemon, text: &str) -> Value {
    call(
        d,
        json!({"v": 1, "op": "config.apply", "args": {"config": text}}),
    )
}

/// The daemon's configuration file as it is now (with this daemon's pins, store and
/// socket filled in).
fn file(d: &Daemon) -> String {
    std::fs::read_to_string(&d.config).unwrap()
}

/// Run `args` in the daemon's mount namespace (`ip netns exec` gave it its own).
fn in_daemon_mounts(d: &Daemon, args: &[&str]) {
    let st = Command::new("nsenter")
        .args(["-t", &d.pid().to_string(), "-m", "--"])
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "nsenter {args:?} failed");
}

#[test]
fn a_diff_is_answered_off_the_control_loop() {
    let (_t, d) = start();
    let to = ok(
        &d,
        json!({"v": 1, "op": "backend.set", "args": {"vip": "web", "address": "198.18.0.21", "weight": 7}}),
    )["revision"]
        .as_u64()
        .unwrap();
    // Revision 1 becomes a FIFO: a diff from it waits, on whatever thread runs it, until
    // the test writes the revision, as a diff that takes long would. The order of events
    // is what is checked, not how long anything takes.
    let path = state_dir(&d).join("rev-000001.toml");
    let text = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path; the call only reads it.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");

    let mut diff = send(
        &d,
        &json!({"v": 1, "op": "config.diff", "args": {"from": 1, "to": to}}),
    );
    // The diff is running once the daemon has the FIFO open for reading (opening its
    // writing end without blocking fails until then).
    let mut writer = None;
    for _ in 0..600 {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(w) => {
                writer = Some(w);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let mut writer = writer.expect("the daemon never read the revision for the diff");
    // Meanwhile, the control loop answers.
    let mut st = send(&d, &json!({"v": 1, "op": "status"}));
    st.get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = String::new();
    let answered = st.read_line(&mut line);
    // Let the diff finish either way.
    writer.write_all(&text).unwrap();
    drop(writer);
    let diffed = answer(&mut diff);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &text).unwrap();
    assert!(
        matches!(answered, Ok(n) if n > 0) && line.contains("\"ok\":true"),
        "status was not answered while a diff ran: the diff holds the control loop ({answered:?} {line:?})"
    );
    assert_eq!(diffed["ok"], true, "{diffed}");
    let text = diffed["data"]["diff"].as_str().unwrap();
    assert!(
        text.contains(&format!("+++ revision {to}")) && text.contains("+weight = 7"),
        "{text}"
    );
}

#[test]
fn revisions_past_the_bounds_are_refused_and_nothing_is_recorded() {
    let (_t, d) = start();
    let before = revision(&d);
    let history = |d: &Daemon| ok(d, json!({"v": 1, "op": "config.history"}))["data"].clone();
    let h0 = history(&d);

    // One byte past the limit: invalid, naming it. At the limit: applied.
    let file = file(&d);
    let base = format!("{file}# ");
    let over = format!("{base}{}\n", "x".repeat(MAX_REVISION_BYTES - base.len()));
    assert_eq!(over.len(), MAX_REVISION_BYTES + 1);
    let a = apply(&d, &over);
    assert_eq!(a["error"]["code"], "invalid", "{}", a["error"]);
    let m = a["error"]["message"].as_str().unwrap();
    assert!(m.contains(&MAX_REVISION_BYTES.to_string()), "{m}");

    // Too many revisions in one import: bad_request, nothing recorded.
    let one =
        json!({"meta": {"id": 1, "at_ms": 0, "source": "file", "comment": ""}, "config": file});
    let many = vec![one.clone(); MAX_IMPORT_REVISIONS + 1];
    let a = call(
        &d,
        json!({"v": 1, "op": "config.import", "args": {"revisions": many}}),
    );
    assert_eq!(a["error"]["code"], "bad_request", "{}", a["error"]);
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&MAX_IMPORT_REVISIONS.to_string()),
        "{}",
        a["error"]
    );
    // An imported older revision past the size limit: refused before any is recorded.
    let mut big = one.clone();
    big["config"] = json!(over);
    let a = call(
        &d,
        json!({"v": 1, "op": "config.import", "args": {"revisions": [big, one]}}),
    );
    assert_eq!(a["error"]["code"], "invalid", "{}", a["error"]);

    // A comment past its limit.
    let a = call(
        &d,
        json!({"v": 1, "op": "backend.set", "args": {"vip": "web", "address": "198.18.0.21", "weight": 5, "comment": "c".repeat(MAX_COMMENT_BYTES + 1)}}),
    );
    assert_eq!(a["error"]["code"], "bad_request", "{}", a["error"]);

    assert_eq!(revision(&d), before, "a refused change made a revision");
    assert_eq!(history(&d), h0);
    // The limit itself is allowed.
    let at = format!(
        "{base}{}\n",
        "x".repeat(MAX_REVISION_BYTES - base.len() - 1)
    );
    assert_eq!(at.len(), MAX_REVISION_BYTES);
    let a = apply(&d, &at);
    assert_eq!(a["ok"], true, "{}", a["error"]);
}

#[test]
fn a_stray_file_at_the_last_id_refuses_changes_instead_of_wrapping() {
    let (_t, d) = start();
    let before = revision(&d);
    let newest = state_dir(&d).join(format!("rev-{before:06}.toml"));
    let stray = state_dir(&d).join(format!("rev-{}.toml", u64::MAX));
    std::fs::copy(&newest, &stray).unwrap();

    let set = json!({"v": 1, "op": "backend.set", "args": {"vip": "web", "address": "198.18.0.21", "weight": 7}});
    let a = call(&d, set.clone());
    assert_eq!(
        a["ok"], false,
        "a change was recorded past the last id: {a}"
    );
    let m = a["error"]["message"].as_str().unwrap();
    assert!(m.contains(stray.to_str().unwrap()), "{m}");
    // Refused before anything was applied.
    let backends = ok(&d, json!({"v": 1, "op": "backend.list"}))["data"].clone();
    assert_eq!(backends[0]["weight"], 100, "{backends}");
    assert!(
        problems(&d).contains("rev-18446744073709551615.toml"),
        "{}",
        problems(&d)
    );
    assert!(stray.exists());

    // Removed, as the message says: the ids go on from the real revisions.
    std::fs::remove_file(&stray).unwrap();
    let a = ok(&d, set);
    assert_eq!(a["revision"], before + 1, "{a}");
    assert_eq!(status(&d).get("store_problems"), None);
}

#[test]
fn a_cut_short_newest_revision_is_reported_after_a_restart() {
    let (t, mut d) = start();
    let a = ok(
        &d,
        json!({"v": 1, "op": "backend.set", "args": {"vip": "web", "address": "198.18.0.21", "weight": 7}}),
    );
    let cut = a["revision"].as_u64().unwrap();
    d.kill9();
    let path = state_dir(&d).join(format!("rev-{cut:06}.toml"));
    let whole = std::fs::read(&path).unwrap();
    std::fs::write(&path, &whole[..whole.len() - 3]).unwrap();
    d.restart();
    d.wait_served(&t, &format!("{VIP4}:80"));
    wait_api(&mut d);

    // The file is recorded as a new revision past the unreadable one, which stays reported;
    // the one before it is not passed for the current one.
    let s = status(&d);
    assert_eq!(s["revision"], cut + 1, "{s}");
    assert!(
        s["store_problems"]
            .to_string()
            .contains(&format!("rev-{cut:06}.toml")),
        "{s}"
    );
    assert!(d.last_log().contains("unreadable"), "{}", d.last_log());
    let shown = ok(&d, json!({"v": 1, "op": "config.show"}))["data"].clone();
    assert_eq!(shown["revision"], cut + 1);
    assert!(shown["config"].as_str().unwrap().contains("weight = 7"));
}

#[test]
fn a_reload_with_an_unwritable_store_says_it_was_applied() {
    let (_t, d) = start();
    let before = revision(&d);
    let state = state_dir(&d);
    let state = state.to_str().unwrap();
    in_daemon_mounts(&d, &["mount", "--bind", state, state]);
    in_daemon_mounts(&d, &["mount", "-o", "remount,ro,bind", state]);

    d.write_config(&config(50));
    d.signal("HUP");
    d.wait_log_line(&["reload applied", "not recorded"], 15);
    assert!(
        !d.log().contains("reload rejected"),
        "the log says the applied reload was rejected:\n{}",
        d.log()
    );
    let backends = ok(&d, json!({"v": 1, "op": "backend.list"}))["data"].clone();
    assert_eq!(backends[0]["weight"], 50, "{backends}");
    assert_eq!(revision(&d), before);
    assert!(problems(&d).contains("not recorded"), "{}", problems(&d));

    // Writable again: the next change builds on the configuration in force (the reload's
    // weight), not on the last recorded revision, and records both.
    in_daemon_mounts(&d, &["umount", state]);
    let a = ok(
        &d,
        json!({"v": 1, "op": "vip.set", "args": {"name": "web", "min_primaries": 1}}),
    );
    assert_eq!(a["revision"], before + 1, "{a}");
    let shown = ok(&d, json!({"v": 1, "op": "config.show"}))["data"]["config"].clone();
    let shown = shown.as_str().unwrap();
    assert!(
        shown.contains("weight = 50") && shown.contains("min_primaries = 1"),
        "{shown}"
    );
    assert_eq!(status(&d).get("store_problems"), None);
}
