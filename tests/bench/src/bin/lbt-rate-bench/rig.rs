//! The benchmark's network: two namespaces, two veth pairs, one core.
//!
//! ```text
//!   namespace gen                              namespace dut
//!   bench_gen --live frames--> to-lb ======== lb   lb_xdp, native: IP-in-IP, XDP_TX back
//!                bench_sink on to-lb <-------'
//!   bench_gen --live frames--> to-rf ======== rf   bench_reflect, native: MACs swapped, XDP_TX back
//!                bench_sink on to-rf <-------'
//!   bench_gen --live frames--> to-tk ======== tk   bench_track, native: table lookup, IP-in-IP
//!                bench_sink on to-tk <-------'
//! ```
//!
//! The generator's XDP_TX becomes a transmit on the `ingress_ifindex` it is given, which
//! hands the frame to the peer's NAPI in `dut`. The balancer, or in the baseline the
//! reflector, sends it back with XDP_TX, and the sink on the generator's side counts and
//! drops it. Both sides have an XDP program, which is what gives each veth the NAPI that
//! frames sent with XDP_TX need. The balancer and the two baselines sit on separate pairs
//! so that rounds can alternate between them without re-attaching anything.

use anyhow::{Context as _, Result};
use aya::programs::XdpMode;
use lb_common::{Forward, Scheduler};
use lb_dataplane::{Dataplane, LoadOptions};
use lb_tests::{
    harness::{CLIENT_MAC, Harness, LB_MAC, RING, vip_key},
    netns::{Netns, sweep_stale},
};

use crate::progs::{GEN, Progs, REFLECT, SINK, TRACK};

/// A VIP with `backends` backends, all IP-in-IP.
pub struct Vip {
    pub backends: u32,
    pub addr: String,
}

pub struct Rig {
    // Fields drop in order: programs and links go before the namespaces they sit in.
    pub progs: Progs,
    pub lb: Harness,
    pub vips: Vec<Vip>,
    /// Interface indexes, in `gen`, of the veths towards the balancer and the baselines.
    pub to_lb: u32,
    pub to_rf: u32,
    pub to_tk: u32,
    pub gen_ns: Netns,
    _dut: Netns,
}

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

impl Rig {
    /// `flows`: connection table entries; one VIP per entry of `backends`.
    pub fn new(flows: u32, backends: &[u32]) -> Result<Rig> {
        sweep_stale();
        let g = Netns::group();
        let gen_ns = Netns::new(g, "gen");
        let dut = Netns::new(g, "dut");
        // No IPv6 and no IPv4 addresses: the stack sends nothing (router solicitations,
        // MLD), so every frame the balancer and the sink see is the generator's.
        for ns in [&gen_ns, &dut] {
            ns.exec(
                "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1",
            );
        }
        for (here, there) in [("to-lb", "lb"), ("to-rf", "rf"), ("to-tk", "tk")] {
            lb_tests::netns::sh(&format!(
                "ip link add {here} netns {} address {} type veth peer name {there} netns {} address {}",
                gen_ns.name,
                mac(CLIENT_MAC),
                dut.name,
                mac(LB_MAC)
            ));
        }
        gen_ns.exec("ip link set to-lb up && ip link set to-rf up && ip link set to-tk up");
        dut.exec("ip link set lb up && ip link set rf up && ip link set tk up");
        let ifindex = |name: &str| -> Result<u32> {
            gen_ns
                .exec(&format!("cat /sys/class/net/{name}/ifindex"))
                .trim()
                .parse()
                .with_context(|| format!("ifindex of {name}"))
        };
        let (to_lb, to_rf, to_tk) = (ifindex("to-lb")?, ifindex("to-rf")?, ifindex("to-tk")?);

        // A veth pair that carries nothing, down, to hold the generator: see below.
        gen_ns.exec("ip link add hold type veth peer name hold-peer");

        let mut progs = Progs::load(flows)?;
        gen_ns.enter(|| -> Result<()> {
            progs.attach(SINK, "to-lb")?;
            progs.attach(SINK, "to-rf")?;
            progs.attach(SINK, "to-tk")?;
            // Each BPF_PROG_TEST_RUN of an XDP program adds it to the kernel's XDP
            // dispatcher and removes it afterwards, and each of those rewrites waits for an
            // RCU grace period: the core sat idle about 60% of a run's wall time, and that
            // idle time dominated every rate (2 Mpps measured against 7.6 Mpps of work).
            // While the generator is attached somewhere, it stays in the dispatcher and a
            // test run changes nothing there.
            progs.attach(GEN, "hold")
        })?;
        dut.enter(|| -> Result<()> {
            progs.attach(REFLECT, "rf")?;
            progs.attach(TRACK, "tk")
        })?;
        let ring_capacity = (backends.len() as u32 + 1) * RING;
        let dp = dut.enter(|| -> Result<Dataplane> {
            let mut dp = Dataplane::load(
                LoadOptions {
                    flows,
                    ring_capacity,
                },
                None,
            )
            .with_context(|| {
                format!(
                    "loading lb_xdp with {flows} flow entries (run as root: CAP_BPF, \
                     CAP_NET_ADMIN, CAP_SYS_ADMIN; a large table needs free memory)"
                )
            })?;
            dp.attach("lb", XdpMode::Driver)
                .context("attaching lb_xdp to the veth in native mode")?;
            Ok(dp)
        })?;
        // The harness's configuration: no FIB lookup, a fixed gateway MAC, so every packet
        // goes out with XDP_TX on the interface it came in on.
        let mut lb = Harness::with(dp, |_| {});
        let mut next_id = 1;
        let mut vips = Vec::new();
        for (i, &n) in backends.iter().enumerate() {
            let addr = format!("198.18.0.{}", 10 + i);
            let members: Vec<(u32, String)> = (0..n)
                .map(|j| (next_id + j, format!("198.18.{}.{}", 1 + i, 1 + j)))
                .collect();
            next_id += n;
            for (id, ip) in &members {
                lb.backend(*id, ip, [0x02, 0, 0, 0, 1, *id as u8]);
            }
            let m: Vec<(u32, &str, u32)> = members
                .iter()
                .map(|(id, ip)| (*id, ip.as_str(), 1))
                .collect();
            lb.vip(
                vip_key(&addr, 80, 6),
                Scheduler::Maglev,
                Forward::IpIp,
                0,
                &m,
            );
            vips.push(Vip { backends: n, addr });
        }
        Ok(Rig {
            progs,
            lb,
            vips,
            to_lb,
            to_rf,
            to_tk,
            gen_ns,
            _dut: dut,
        })
    }
}
