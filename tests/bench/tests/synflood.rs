//! A spoofed SYN flood through the same `lb_xdp` that carries real, long-lived TCP
//! connections (issue 15), in network namespaces:
//!
//! ```text
//!   client ── 100 TCP connections ──> lb (lb_xdp on eth0) ──IP-in-IP──> b1, b2, b3
//!   flood: bench_gen, live frames ──> lb (the same lb_xdp, attached to `flood` too)
//! ```
//!
//! The generator (`bench_gen` of the lb-bench object, as `lbt-rate-bench` drives it) sends
//! bare SYNs to the VIP from a new source address and port every frame, as fast as it goes
//! on one core, until at least 1,000,000 distinct flows have reached the balancer. The held
//! connections send a byte and read their backend's name back, over and over, during the
//! flood: none may break or answer from another backend. The flood's frames must be counted
//! as `syn_stateless`, and the connection table must not lose a real flow: every packet of
//! the held connections during the flood is a `flow_hit` (an evicted flow would come back
//! as `flow_new` or `flow_over_rate`). The flood frames leave the balancer towards a
//! backend on another NIC that is not a transmit port, so they end as `drop_redirect`: the
//! backends' stacks do not see them.
//!
//! The backends' servers are this test's own threads; the topology's `lbt-echo` servers
//! are stand-ins that only say they are ready (`lbt-echo` is a binary of lb-tests, which an
//! lb-bench test cannot name).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{PerCpuArray, PerCpuValues},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    util::nr_cpus,
};
use lb_bench::{LB_BENCH, frame::BenchFrame};
use lb_common::{Forward, PROTO_TCP, Reason, Scheduler};
use lb_dataplane::Dataplane;
use lb_tests::{
    harness::vip_key,
    netns::{Netns, sh},
    packets::{Frame, TCP_SYN},
    topology::{Topology, VIP4},
};

const CONNECTIONS: usize = 100;
const FLOOD_FLOWS: u64 = 1_000_000;
/// Frames per BPF_PROG_TEST_RUN call, and the live-frames batch.
const CHUNK: u32 = 1 << 16;
const BATCH: u32 = 64;

/// A server that says it is ready and then waits: the topology's servers, stood in for.
fn stand_in_server() -> &'static str {
    let path = std::env::temp_dir().join(format!("lbt-synflood-{}.sh", std::process::id()));
    std::fs::write(&path, "#!/bin/sh\necho ready\nexec sleep 600\n").unwrap();
    sh(&format!("chmod +x {}", path.display()));
    Box::leak(path.to_string_lossy().into_owned().into_boxed_str())
}

/// Backend `name`'s TCP server on port 80: every byte read is answered with its name.
fn serve(ns: &Netns, name: String) {
    ns.enter(move || {
        let l = TcpListener::bind("0.0.0.0:80").expect("bind :80 on a backend");
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let name = name.clone();
                std::thread::spawn(move || {
                    let mut b = [0u8; 1];
                    while matches!(s.read(&mut b), Ok(1)) {
                        if s.write_all(format!("{name}\n").as_bytes()).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    });
}

/// One exchange on a held connection: the backend's name.
fn ask(s: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    s.get_mut().write_all(b"x")?;
    let mut line = String::new();
    s.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim().to_string())
}

struct Held {
    rounds: u32,
    broken: usize,
    moved: usize,
    per_backend: std::collections::BTreeMap<String, usize>,
}

/// Opens the connections, then exchanges on each of them until `stop`.
fn hold(
    ns: &Netns,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Held> {
    ns.enter(move || {
        std::thread::spawn(move || {
            let mut conns: Vec<(BufReader<TcpStream>, String)> = (0..CONNECTIONS)
                .map(|_| {
                    let s = TcpStream::connect((VIP4, 80)).expect("connect to the VIP");
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut s = BufReader::new(s);
                    let name = ask(&mut s).expect("first exchange");
                    (s, name)
                })
                .collect();
            let mut per_backend = std::collections::BTreeMap::new();
            for (_, n) in &conns {
                *per_backend.entry(n.clone()).or_insert(0) += 1;
            }
            ready.store(true, Ordering::SeqCst);
            let (mut broken, mut moved, mut rounds) = (vec![false; CONNECTIONS], 0, 0);
            while !stop.load(Ordering::SeqCst) {
                for (i, (s, name)) in conns.iter_mut().enumerate() {
                    if broken[i] {
                        continue;
                    }
                    match ask(s) {
                        Ok(n) if n == *name => {}
                        Ok(_) => {
                            moved += 1;
                            broken[i] = true;
                        }
                        Err(_) => broken[i] = true,
                    }
                }
                rounds += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Held {
                rounds,
                broken: broken.iter().filter(|b| **b).count(),
                moved,
                per_backend,
            }
        })
    })
}

/// `lb_xdp` attached to a second interface of the balancer (the dataplane is Send, a
/// pointer to it is not).
struct DpPtr(*mut Dataplane);
// SAFETY: used only while the caller waits for the namespace thread to finish.
unsafe impl Send for DpPtr {}

#[test]
fn a_syn_flood_neither_breaks_nor_moves_nor_evicts_real_connections() {
    let stand_in = stand_in_server();
    let mut t = Topology::with_balancer(3, Forward::IpIp, stand_in);
    // The stand-ins run already (each said ready): the script is not needed any more.
    let _ = std::fs::remove_file(stand_in);
    let backends: Vec<(u32, String, [u8; 6])> = t
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| (i as u32 + 1, b.v4.clone(), b.mac))
        .collect();
    for (id, addr, mac) in &backends {
        t.lb().backend(*id, addr, *mac);
    }
    let set: Vec<(u32, &str, u32)> = backends
        .iter()
        .map(|(id, a, _)| (*id, a.as_str(), 1))
        .collect();
    t.lb().vip(
        vip_key(VIP4, 80, PROTO_TCP),
        Scheduler::Maglev,
        Forward::IpIp,
        0,
        &set,
    );
    for (i, b) in t.backends.iter().enumerate() {
        serve(&b.ns, format!("b{}", i + 1));
    }

    // The flood's own link into the balancer, with lb_xdp on its far end.
    let fl = Netns::new(Netns::group(), "flood");
    sh(&format!(
        "ip link add fl0 netns {} type veth peer name flood netns {}",
        fl.name, t.lb_host.ns.name
    ));
    fl.exec("ip link set fl0 up");
    t.lb_host.ns.exec("ip link set flood up");
    let dp = DpPtr(&mut t.lb().dp);
    t.lb_host.ns.enter(move || {
        let dp = dp;
        // SAFETY: `t` outlives this call and nothing else touches the dataplane meanwhile.
        unsafe { (*dp.0).attach("flood", XdpMode::Driver) }
            .expect("attach lb_xdp to the flood link");
    });
    let fl0: u32 = fl
        .exec("cat /sys/class/net/fl0/ifindex")
        .trim()
        .parse()
        .unwrap();

    // The generator.
    let mut bench = Ebpf::load(LB_BENCH).expect("the lb-bench object");
    let gen_prog: &mut Xdp = bench.program_mut("bench_gen").unwrap().try_into().unwrap();
    gen_prog.load().unwrap();
    let mut frames: PerCpuArray<_, BenchFrame> =
        PerCpuArray::try_from(bench.take_map("BENCH_FRAME").unwrap()).unwrap();
    let mut syn = Frame::tcp("198.19.0.1", 1024, VIP4, 80, TCP_SYN);
    syn.payload = vec![0; 6];
    let syn = syn.bytes();
    let cpus = nr_cpus().unwrap();
    // A new source address (low 16 bits) and port every frame; each CPU's counter in its
    // own half of the space, so no flow repeats.
    let init: Vec<BenchFrame> = (0..cpus)
        .map(|cpu| lb_bench::frame::template(&syn, 0xffff_ffff, (cpu as u32) << 31).unwrap())
        .collect();
    frames
        .set(0, PerCpuValues::try_from(init).unwrap(), 0)
        .unwrap();

    // The real connections, established and exchanging before the flood.
    let ready = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let holder = hold(&t.client.ns, ready.clone(), stop.clone());
    let start = Instant::now();
    while !ready.load(Ordering::SeqCst) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "connections not up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let reasons = |h: &mut Topology| h.lb().dp.reasons().unwrap();
    let before = reasons(&mut t);

    // The flood: one core, flat out, until a million flows have reached the balancer.
    let prog: &Xdp = bench.program("bench_gen").unwrap().try_into().unwrap();
    let md = lb_bench::frame::xdp_md(syn.len(), fl0);
    let (sent, took) = fl.enter(|| {
        // Pinned: the generator's counter is per CPU.
        // SAFETY: a zeroed cpu_set_t is an empty set; sched_setaffinity(0) is this thread.
        unsafe {
            let cpu = libc::sched_getcpu().max(0) as usize;
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < 2 * FLOOD_FLOWS && start.elapsed() < Duration::from_secs(60) {
            prog.test_run(TestRunOptions {
                data_in: Some(&syn),
                ctx_in: Some(&md),
                repeat: CHUNK,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..Default::default()
            })
            .expect("live frames");
            sent += CHUNK as u64;
        }
        (sent, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let held = holder.join().unwrap();
    let after = reasons(&mut t);
    let grew = |r: Reason| after[r as usize].1 - before[r as usize].1;

    let flood = grew(Reason::SynStateless);
    let evicted = grew(Reason::FlowNew) + grew(Reason::FlowOverRate);
    println!(
        "SYN flood: {sent} frames generated in {:.2} s ({:.2} Mpps), {flood} reached lb_xdp as \
         syn_stateless ({:.2} Mpps), drop_redirect +{}; {CONNECTIONS} held connections on \
         {:?}: {} exchange rounds, {} broken, {} moved; flow_hit +{}, real flows evicted \
         (flow_new + flow_over_rate during the flood) {evicted}",
        took.as_secs_f64(),
        sent as f64 / took.as_secs_f64() / 1e6,
        flood as f64 / took.as_secs_f64() / 1e6,
        grew(Reason::DropRedirect),
        held.per_backend,
        held.rounds,
        held.broken,
        held.moved,
        grew(Reason::FlowHit),
    );
    assert!(
        flood >= FLOOD_FLOWS,
        "only {flood} flood SYNs reached the balancer"
    );
    assert!(
        held.rounds >= 2,
        "the connections exchanged {} times",
        held.rounds
    );
    assert_eq!(held.broken, 0, "connections broken during the flood");
    assert_eq!(held.moved, 0, "connections moved during the flood");
    assert_eq!(evicted, 0, "real flows evicted from the connection table");
    assert!(grew(Reason::FlowHit) >= (CONNECTIONS as u64) * held.rounds as u64);
    assert!(held.per_backend.len() >= 2, "{:?}", held.per_backend);
    let _ = std::fs::remove_file(stand_in);
}
