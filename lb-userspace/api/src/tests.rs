//! The wire format of docs/api.md, version 1, byte for byte where the docs show it.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixListener,
};

use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value, json};

use crate::*;

/// A request of each operation, with every argument it takes.
fn sample(op: Op) -> Request {
    let fields = |v: Value| match v {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let vip = || "web".to_string();
    let address = || "198.18.0.21".to_string();
    let comment = || "why".to_string();
    match op {
        Op::Status => Request::Status {},
        Op::VipList => Request::VipList { vip: Some(vip()) },
        Op::BackendList => Request::BackendList { vip: Some(vip()) },
        Op::Health => Request::Health { vip: None },
        Op::Stats => Request::Stats {},
        Op::Metrics => Request::Metrics {},
        Op::FleetStatus => Request::FleetStatus {},
        Op::Events => Request::Events { limit: 7 },
        Op::ConfigShow => Request::ConfigShow { revision: Some(3) },
        Op::ConfigValidate => Request::ConfigValidate {
            config: "[daemon]\n".into(),
            name: Some("lb.toml".into()),
        },
        Op::ConfigHistory => Request::ConfigHistory {},
        Op::ConfigDiff => Request::ConfigDiff {
            from: 1,
            to: Some(2),
        },
        Op::ConfigExport => Request::ConfigExport {},
        Op::ConfigApply => Request::ConfigApply {
            config: "[daemon]\n".into(),
            comment: comment(),
        },
        Op::ConfigRollback => Request::ConfigRollback {
            target: RollbackTarget::Time("2026-11-26T09:30:00Z".into()),
            comment: comment(),
        },
        Op::ConfigImport => Request::ConfigImport {
            revisions: vec![ExportedRevision {
                meta: ExportedMeta {
                    id: 4,
                    at_ms: 1_790_000_000_000,
                    source: "file".into(),
                    comment: String::new(),
                },
                config: "[daemon]\n".into(),
            }],
            comment: String::new(),
        },
        Op::BackendSet => Request::BackendSet {
            vip: vip(),
            address: address(),
            comment: comment(),
            fields: fields(json!({"drain": true, "weight": 5, "mac": null})),
        },
        Op::BackendAdd => Request::BackendAdd {
            vip: vip(),
            address: address(),
            comment: String::new(),
            fields: fields(json!({"role": "backup"})),
        },
        Op::BackendRemove => Request::BackendRemove {
            vip: vip(),
            address: address(),
            comment: comment(),
        },
        Op::BackendSetAll => Request::BackendSetAll {
            address: address(),
            comment: comment(),
            fields: fields(json!({"drain": true})),
        },
        Op::NodeDrain => Request::NodeDrain { comment: comment() },
        Op::NodeResume => Request::NodeResume {
            comment: String::new(),
        },
        Op::VipAdd => Request::VipAdd {
            name: "dns".into(),
            address: "198.18.100.2".into(),
            comment: String::new(),
            fields: fields(json!({"port": 53, "protocol": "udp"})),
        },
        Op::VipSet => Request::VipSet {
            name: vip(),
            comment: comment(),
            fields: fields(json!({"scheduler": "round_robin"})),
        },
        Op::VipRemove => Request::VipRemove {
            name: vip(),
            comment: String::new(),
        },
    }
}

#[test]
fn every_op_round_trips_under_its_own_name() {
    let mut names: Vec<&str> = Op::ALL.map(Op::name).to_vec();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), Op::ALL.len(), "two operations share a name");
    for op in Op::ALL {
        let request = sample(op);
        assert_eq!(request.op(), op);
        assert_eq!(Op::from_name(op.name()), Some(op));
        for base_revision in [None, Some(7)] {
            let envelope = Envelope::new(request.clone(), base_revision);
            let line = envelope.to_line();
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            let wire: Value = serde_json::from_str(&line).unwrap();
            // The serde tag of the variant is the operation's name.
            assert_eq!(wire["op"], op.name(), "{line}");
            assert_eq!(wire["v"], 1);
            assert_eq!(
                wire.get("base_revision").and_then(Value::as_u64),
                base_revision
            );
            let back = Envelope::from_line(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(back, envelope, "{line}");
            // And through serde.
            assert_eq!(serde_json::from_value::<Envelope>(wire).unwrap(), envelope);
        }
    }
}

#[test]
fn is_mutation_exactly_for_the_changes() {
    let mutations: Vec<&str> = Op::ALL
        .into_iter()
        .filter(|op| sample(*op).is_mutation())
        .map(Op::name)
        .collect();
    assert_eq!(
        mutations,
        [
            "config.apply",
            "config.rollback",
            "config.import",
            "backend.set",
            "backend.add",
            "backend.remove",
            "backend.set_all",
            "node.drain",
            "node.resume",
            "vip.add",
            "vip.set",
            "vip.remove",
        ]
    );
    // Reads carry no comment; mutations carry theirs.
    assert_eq!(sample(Op::BackendSet).comment(), "why");
    assert_eq!(sample(Op::Status).comment(), "");
}

fn decode(line: &str) -> Envelope {
    Envelope::from_line(line).unwrap_or_else(|e| panic!("{line}: {e}"))
}

#[test]
fn the_docs_requests_decode() {
    let e = decode(
        r#"{"v":1,"op":"backend.set","args":{"vip":"web","address":"198.18.0.21","drain":true},"base_revision":7}"#,
    );
    assert_eq!(e.base_revision, Some(7));
    let Request::BackendSet {
        vip,
        address,
        comment,
        fields,
    } = e.request
    else {
        panic!("{:?}", e.request)
    };
    assert_eq!(
        (vip.as_str(), address.as_str(), comment.as_str()),
        ("web", "198.18.0.21", "")
    );
    assert_eq!(Value::Object(fields), json!({"drain": true}));

    let e = decode(
        r#"{"v":1,"op":"backend.set","args":{"vip":"web","address":"198.18.0.21","drain":true,"comment":"kernel upgrade on b1"},"base_revision":1}"#,
    );
    assert_eq!(e.request.comment(), "kernel upgrade on b1");
    assert!(
        matches!(&e.request, Request::BackendSet { fields, .. } if !fields.contains_key("comment"))
    );

    // args missing, not an object, or with keys a read ignores; other top-level keys.
    for line in [
        r#"{"v":1,"op":"status"}"#,
        r#"{"v":1,"op":"status","args":{}}"#,
        r#"{"v":1,"op":"status","args":[1,2]}"#,
        r#"{"v":1,"op":"status","args":{"vip":"web"},"id":"x"}"#,
    ] {
        assert_eq!(decode(line).request, Request::Status {}, "{line}");
    }
    assert_eq!(
        decode(r#"{"v":1,"op":"backend.list","args":{"vip":"web"}}"#).request,
        Request::BackendList {
            vip: Some("web".into())
        }
    );
    assert_eq!(
        decode(r#"{"v":1,"op":"events","args":null}"#).request,
        Request::Events { limit: 100 }
    );
    // An unknown backend key travels to the daemon, which refuses it as `invalid`.
    let e = decode(
        r#"{"v":1,"op":"backend.set","args":{"vip":"web","address":"198.18.0.22","colour":"red"}}"#,
    );
    assert!(matches!(&e.request, Request::BackendSet { fields, .. } if fields["colour"] == "red"));
    // vip.add keeps its scalar keys for the file.
    let e = decode(
        r#"{"v":1,"op":"vip.add","args":{"name":"dns","address":"198.18.100.2","port":53,"protocol":"udp"}}"#,
    );
    assert!(
        matches!(&e.request, Request::VipAdd { name, fields, .. } if name == "dns" && Value::Object(fields.clone()) == json!({"port": 53, "protocol": "udp"}))
    );
    // config.rollback: `to` or `at`; `to` wins.
    let target = |line| match decode(line).request {
        Request::ConfigRollback { target, .. } => target,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        target(r#"{"v":1,"op":"config.rollback","args":{"to":5}}"#),
        RollbackTarget::Revision(5)
    );
    assert_eq!(
        target(r#"{"v":1,"op":"config.rollback","args":{"at":"2026-11-26T09:30:00Z"}}"#),
        RollbackTarget::Time("2026-11-26T09:30:00Z".into())
    );
    assert_eq!(
        target(r#"{"v":1,"op":"config.rollback","args":{"to":5,"at":"x"}}"#),
        RollbackTarget::Revision(5)
    );
}

#[test]
fn refused_lines_say_which_way_they_are_wrong() {
    let err = |line: &str| Envelope::from_line(line).expect_err(line);
    let e = err("hello");
    assert!(matches!(e, DecodeError::NotJson(_)), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("not a version 1 request: expected value at line 1 column 1"),
        "{e}"
    );
    for line in [
        r#"{"op":"status"}"#,
        r#"{"v":1}"#,
        "[1]",
        r#"{"v":"1","op":"status"}"#,
        r#"{"v":1,"op":"status","base_revision":"7"}"#,
    ] {
        let e = err(line);
        assert!(matches!(e, DecodeError::NotAnEnvelope(_)), "{line}: {e:?}");
        assert!(
            e.to_string().starts_with("not a version 1 request: "),
            "{e}"
        );
    }
    let e = err(r#"{"v":2,"op":"status"}"#);
    assert!(matches!(e, DecodeError::Version(2)));
    assert_eq!(
        e.to_string(),
        "API version 2 is not served; this daemon speaks 1"
    );
    let e = err(r#"{"v":1,"op":"nope"}"#);
    assert!(matches!(&e, DecodeError::UnknownOp(op) if op == "nope"));
    assert!(
        e.to_string()
            .starts_with("unknown operation \"nope\"; the operations are status, vip.list,"),
        "{e}"
    );
    let e = err(r#"{"v":1,"op":"backend.set","args":{"vip":"web"}}"#);
    assert!(
        matches!(&e, DecodeError::MissingArg { op: Op::BackendSet, arg } if arg == "address"),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "backend.set needs args.address");
    let e = err(r#"{"v":1,"op":"config.validate"}"#);
    assert_eq!(e.to_string(), "config.validate needs args.config");
    let e = err(r#"{"v":1,"op":"config.diff","args":{"from":"one"}}"#);
    assert!(
        matches!(
            &e,
            DecodeError::BadArgs {
                op: Op::ConfigDiff,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("config.diff: invalid type: string \"one\", expected u64"),
        "{e}"
    );
    let e = err(r#"{"v":1,"op":"config.rollback","args":{"comment":"x"}}"#);
    assert!(
        matches!(
            &e,
            DecodeError::BadArgs {
                op: Op::ConfigRollback,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("config.rollback: needs args.to (a revision) or args.at (a time)"),
        "{e}"
    );
    let e = err(r#"{"v":1,"op":"config.import","args":{"revisions":[{"config":"x"}]}}"#);
    assert!(
        matches!(
            &e,
            DecodeError::BadArgs {
                op: Op::ConfigImport,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().starts_with(
            "config.import: args.revisions is not what config.export answers: missing field `meta`"
        ),
        "{e}"
    );
    let e = err(r#"{"v":1,"op":"config.import","args":{}}"#);
    assert_eq!(e.to_string(), "config.import needs args.revisions");
    // Every one is a bad_request.
    let api = ApiError::from(err(r#"{"v":1,"op":"nope"}"#));
    assert_eq!(api.code, ErrorCode::BadRequest);
    assert_eq!(
        Reply::Err(api)
            .to_line()
            .split("\"message\"")
            .next()
            .unwrap(),
        r#"{"error":{"code":"bad_request","#
    );
}

/// `line` decodes as a reply whose data is a `T`, and a reply built from that `T` is the
/// same line: the typed data is field for field the wire's.
fn same_line_through<T: Serialize + DeserializeOwned>(line: &str) -> T {
    let reply = Reply::from_line(line).unwrap_or_else(|e| panic!("{line}: {e}"));
    assert_eq!(reply.to_line(), format!("{line}\n"));
    let Reply::Ok(answer) = reply else {
        panic!("{line}")
    };
    let data: T = answer.decode().unwrap_or_else(|e| panic!("{line}: {e}"));
    let rebuilt = match answer.revision {
        None => Reply::data(&data),
        Some(r) => {
            let Reply::Ok(a) = Reply::data(&data) else {
                panic!()
            };
            Reply::Ok(Answer {
                revision: Some(r),
                ..a
            })
        }
    };
    assert_eq!(rebuilt.to_line(), format!("{line}\n"));
    data
}

#[test]
fn the_docs_replies_decode_into_typed_data_and_back() {
    let s: Status = same_line_through(
        r#"{"data":{"backends":{"up":2},"interfaces":["eth0"],"pin_dir":"/run/lbdoc-bpffs/lb","revision":1,"uptime_s":6,"vips":1},"ok":true,"v":1}"#,
    );
    assert_eq!(s.backends[&BackendState::Up], 2);
    let rows: Vec<BackendRow> = same_line_through(
        r#"{"data":[{"address":"198.18.0.21","effective_weight":100,"error_rate":0.0,"last_check_s":null,"latency_ms":null,"reason":"configured","role":"primary","since_s":6,"state":"up","vip":"web","weight":100},{"address":"198.18.0.22","effective_weight":200,"error_rate":0.25,"last_check_s":0.5,"latency_ms":1.5,"reason":"check failed","role":"backup","since_s":6,"state":"draining","vip":"web","weight":200}],"ok":true,"v":1}"#,
    );
    assert_eq!(
        (rows[1].role, rows[1].state),
        (Role::Backup, BackendState::Draining)
    );
    let meta: RevisionMeta = same_line_through(
        r#"{"data":{"at":"2026-11-26T09:58:41.101Z","comment":"kernel upgrade on b1","revision":2,"source":"api: backend.set web 198.18.0.21"},"ok":true,"revision":2,"v":1}"#,
    );
    assert_eq!(
        Reply::revision(&meta).to_line(),
        "{\"data\":{\"at\":\"2026-11-26T09:58:41.101Z\",\"comment\":\"kernel upgrade on b1\",\"revision\":2,\"source\":\"api: backend.set web 198.18.0.21\"},\"ok\":true,\"revision\":2,\"v\":1}\n"
    );
    // The reads' other shapes, as the daemon builds them.
    let vips: Vec<VipRow> = same_line_through(
        r#"{"data":[{"address":"198.18.100.1","backends":3,"forward":"l2dsr","name":"web","on_backup":false,"port":80,"protocol":"tcp","ring_size":65537,"scheduler":"round_robin","usable":2},{"address":"2001:db8::1","backends":0,"forward":"ipip","name":"dns","on_backup":true,"port":0,"protocol":"udp","ring_size":13,"scheduler":"least_conn","usable":0}],"ok":true,"v":1}"#,
    );
    assert_eq!(
        (vips[0].scheduler, vips[0].forward),
        (Scheduler::RoundRobin, Forward::L2dsr)
    );
    let _: Stats = same_line_through(
        r#"{"data":{"backends":[{"address":"198.18.0.21","bytes":600,"packets":10,"vip":"web"}],"reasons":{"pass_not_vip":3,"tx_ipip":10},"vips":[{"bytes":600,"new_flows":2,"packets":10,"vip":"web"}]},"ok":true,"v":1}"#,
    );
    let m: MetricsText = same_line_through(
        r##"{"data":{"text":"# TYPE lb_vip_packets counter\nlb_vip_packets_total{vip=\"web\"} 10\n"},"ok":true,"v":1}"##,
    );
    assert!(
        m.text.ends_with("lb_vip_packets_total{vip=\"web\"} 10\n"),
        "{m:?}"
    );
    let _: Vec<EventRow> = same_line_through(
        r#"{"data":[{"at":"2026-11-26T09:58:41.101Z","backend":null,"vip":"*","what":"configuration revision 2 applied (api: backend.set web 198.18.0.21)"},{"at":"2026-11-26T09:58:42.000Z","backend":"198.18.0.21","vip":"web","what":"draining: configuration"}],"ok":true,"v":1}"#,
    );
    let _: ConfigText =
        same_line_through(r#"{"data":{"config":"[daemon]\n","revision":3},"ok":true,"v":1}"#);
    let _: Validity = same_line_through(r#"{"data":{"valid":true},"ok":true,"v":1}"#);
    let _: Vec<RevisionMeta> = same_line_through(
        r#"{"data":[{"at":"2026-11-26T09:58:41.101Z","comment":"","revision":2,"source":"rollback to 1"}],"ok":true,"v":1}"#,
    );
    let _: Diff = same_line_through(
        r#"{"data":{"diff":"--- revision 1\n+++ revision 2\n"},"ok":true,"v":1}"#,
    );
    let export: Vec<ExportedRevision> = same_line_through(
        r#"{"data":[{"config":"[daemon]\n","meta":{"at_ms":1790000000000,"comment":"","id":1,"source":"file"}}],"ok":true,"v":1}"#,
    );
    // An export is what config.import takes.
    let import = Request::ConfigImport {
        revisions: export,
        comment: String::new(),
    };
    assert_eq!(
        decode(&Envelope::new(import.clone(), None).to_line()).request,
        import
    );
}

#[test]
fn the_docs_errors_decode_and_encode_alike() {
    for (line, code) in [
        (
            r#"{"error":{"code":"conflict","message":"based on revision 1, but revision 2 landed since: read it and retry"},"ok":false,"v":1}"#,
            ErrorCode::Conflict,
        ),
        (
            r#"{"error":{"code":"not_found","message":"VIP \"web\" has no backend 198.18.0.99 (`lbctl backend list web` shows them)"},"ok":false,"v":1}"#,
            ErrorCode::NotFound,
        ),
        (
            r#"{"error":{"code":"bad_request","message":"backend.set needs args.address"},"ok":false,"v":1}"#,
            ErrorCode::BadRequest,
        ),
        (
            r#"{"error":{"code":"permission","message":"the control API serves root and the daemon's own user only"},"ok":false,"v":1}"#,
            ErrorCode::Permission,
        ),
        (
            r#"{"error":{"code":"invalid","message":"x"},"ok":false,"v":1}"#,
            ErrorCode::Invalid,
        ),
        (
            r#"{"error":{"code":"internal","message":"x"},"ok":false,"v":1}"#,
            ErrorCode::Internal,
        ),
    ] {
        let reply = Reply::from_line(line).unwrap();
        assert!(matches!(&reply, Reply::Err(e) if e.code == code), "{line}");
        assert_eq!(reply.to_line(), format!("{line}\n"));
    }
    assert_eq!(ErrorCode::NotFound.to_string(), "not_found");
    assert_eq!(
        "bad_request".parse::<ErrorCode>(),
        Ok(ErrorCode::BadRequest)
    );
    assert_eq!(
        ApiError::new(ErrorCode::Permission, "no").to_string(),
        "permission: no"
    );
    // Not answers.
    for line in [
        "",
        "hello",
        r#"{"ok":false,"v":1}"#,
        r#"{"ok":true,"v":2,"data":1}"#,
        r#"{"error":{"code":"teapot","message":"x"},"ok":false,"v":1}"#,
    ] {
        assert!(Reply::from_line(line).is_err(), "{line}");
    }
}

#[test]
fn enums_are_spelled_as_in_the_file() {
    assert_eq!(Scheduler::RoundRobin.to_string(), "round_robin");
    assert_eq!(Scheduler::LeastConn.to_string(), "least_conn");
    assert_eq!(Scheduler::SourceHash.to_string(), "source_hash");
    assert_eq!(Forward::L2dsr.to_string(), "l2dsr");
    assert_eq!(Protocol::Udp.to_string(), "udp");
    assert_eq!(Role::Backup.to_string(), "backup");
    assert_eq!(BackendState::Degraded.to_string(), "degraded");
    assert_eq!("source_hash".parse(), Ok(Scheduler::SourceHash));
    let e = "fast".parse::<Scheduler>().unwrap_err();
    assert!(
        e.contains("unknown variant `fast`") && e.contains("`maglev`"),
        "{e}"
    );
}

/// A daemon stand-in: answers each connection's one line with `answer`, and hands back
/// what it read.
fn fake_daemon(answer: &'static str) -> (std::path::PathBuf, std::thread::JoinHandle<String>) {
    let dir = std::env::temp_dir().join(format!(
        "lb-api-test-{}-{}",
        std::process::id(),
        answer.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("api.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        (&s).write_all(answer.as_bytes()).unwrap();
        line
    });
    (path, server)
}

#[test]
fn the_client_sends_one_line_and_types_the_answer() {
    let (path, server) = fake_daemon(
        "{\"data\":{\"backends\":{\"up\":2},\"interfaces\":[\"eth0\"],\"pin_dir\":\"/sys/fs/bpf/lb\",\"revision\":1,\"uptime_s\":6,\"vips\":1},\"ok\":true,\"v\":1}\n",
    );
    let status: Status = Client::new(&path)
        .call_typed(&Request::Status {}, None)
        .unwrap();
    assert_eq!(status.revision, 1);
    assert_eq!(
        server.join().unwrap(),
        "{\"v\":1,\"op\":\"status\",\"args\":{}}\n"
    );

    let (path, server) = fake_daemon(
        "{\"error\":{\"code\":\"conflict\",\"message\":\"based on revision 1, but revision 2 landed since: read it and retry\"},\"ok\":false,\"v\":1}\n",
    );
    let request = Request::ConfigApply {
        config: "x".into(),
        comment: String::new(),
    };
    let e = Client::new(&path).call(&request, Some(1)).unwrap_err();
    assert!(
        matches!(
            &e,
            ClientError::Refused(ApiError {
                code: ErrorCode::Conflict,
                ..
            })
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().starts_with("conflict: based on revision 1"),
        "{e}"
    );
    let sent = Envelope::from_line(&server.join().unwrap()).unwrap();
    assert_eq!(sent, Envelope::new(request, Some(1)));

    let (path, server) = fake_daemon("HTTP/1.1 400 Bad Request\r\n");
    let e = Client::new(&path)
        .call(&Request::Stats {}, None)
        .unwrap_err();
    assert!(matches!(e, ClientError::BadAnswer { .. }), "{e:?}");
    assert!(e.to_string().contains("is not valid"), "{e}");
    server.join().unwrap();

    let (path, server) = fake_daemon("{\"data\":[1],\"ok\":true,\"v\":1}\n");
    let e = Client::new(&path)
        .call_typed::<Status>(&Request::Status {}, None)
        .unwrap_err();
    assert!(matches!(e, ClientError::BadAnswer { .. }), "{e:?}");
    assert!(e.to_string().contains("the data of a status answer"), "{e}");
    server.join().unwrap();

    let e = Client::new("/nonexistent/lbd.sock")
        .call(&Request::Status {}, None)
        .unwrap_err();
    assert_eq!(e.io_kind(), Some(std::io::ErrorKind::NotFound));
    assert!(
        e.to_string()
            .starts_with("cannot reach the daemon at /nonexistent/lbd.sock: "),
        "{e}"
    );
}

/// Fuzzing of the request decoder (proptest): every line of every operation, mutated by
/// random edits, and arbitrary text, gets an answer (never a panic), and whatever decodes
/// re-encodes to a line that decodes to the same request. The suite runs a few hundred
/// cases; a longer run is `PROPTEST_CASES=20000 cargo test -p lb-api --release fuzz`.
mod fuzz {
    use proptest::prelude::*;

    use super::sample;
    use crate::*;

    const PIECES: &[&str] = &[
        "\"",
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "null",
        "true",
        "0",
        "-1",
        "1e400",
        "18446744073709551616",
        "\"op\"",
        "\"args\"",
        "\"v\"",
        "\"status\"",
        "\"backend.set\"",
        "\\u0000",
        "\\ud800",
        "é",
        "\u{0}",
        "\n",
        " ",
    ];

    fn lines() -> Vec<String> {
        Op::ALL
            .iter()
            .flat_map(|op| {
                [None, Some(3)].map(|b| {
                    Envelope::new(sample(*op), b)
                        .to_line()
                        .trim_end()
                        .to_string()
                })
            })
            .collect()
    }

    fn round_trips(line: &str) -> Result<(), TestCaseError> {
        if let Ok(e) = Envelope::from_line(line) {
            let again = Envelope::from_line(&e.to_line());
            prop_assert_eq!(again.ok(), Some(e), "{}", line);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(500),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn fuzz_mutated_requests_get_an_answer(
            which in any::<usize>(),
            edits in proptest::collection::vec((any::<usize>(), 0..PIECES.len(), 0usize..4), 1..8),
        ) {
            let all = lines();
            let mut line = all[which % all.len()].clone();
            for (at, piece, cut) in edits {
                let mut i = at % (line.len() + 1);
                while !line.is_char_boundary(i) {
                    i -= 1;
                }
                let mut j = (i + cut).min(line.len());
                while !line.is_char_boundary(j) {
                    j -= 1;
                }
                line.replace_range(i..j, PIECES[piece]);
            }
            round_trips(&line)?;
        }

        #[test]
        fn fuzz_arbitrary_text_gets_an_answer(line in "\\PC{0,300}") {
            round_trips(&line)?;
        }
    }
}

#[test]
fn disagreements_name_only_backends_the_nodes_see_differently() {
    use crate::{BackendState::*, FleetBackend, FleetNode, disagreements};
    let node = |name: &str, states: &[(&str, crate::BackendState)]| FleetNode {
        node: name.into(),
        running: 3,
        refused: None,
        announced: vec![],
        withheld: None,
        backends: states
            .iter()
            .map(|(a, s)| FleetBackend {
                vip: "web".into(),
                address: a.parse().unwrap(),
                state: *s,
            })
            .collect(),
        advertise: None,
        at: String::new(),
    };
    let nodes = [
        node("lb1", &[("10.0.0.1", Up), ("10.0.0.2", Up)]),
        node("lb2", &[("10.0.0.1", Up), ("10.0.0.2", Down)]),
        node("lb3", &[("10.0.0.1", Up)]),
    ];
    let d = disagreements(&nodes);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].address.to_string(), "10.0.0.2");
    assert_eq!(d[0].states.len(), 2);
    assert_eq!(d[0].states["lb2"], Down);
    assert!(disagreements(&nodes[..1]).is_empty());
}
