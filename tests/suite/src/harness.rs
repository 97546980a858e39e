//! The balancer loaded into the kernel with a small, known configuration.

use aya::programs::{TestRun, TestRunOptions};
use lb_common::{Backend, CFG_F_NO_FIB, Forward, GlobalConfig, Scheduler, VipKey, VipMeta};
use lb_control::{RingMember, maglev, round_robin};
use lb_dataplane::{Dataplane, LoadOptions};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const RING: u32 = 65_537;

pub use lb_control::addr16;

pub fn vip_key(ip: &str, port: u16, proto: u8) -> VipKey {
    let (addr, family) = addr16(ip.parse().expect("test address"));
    VipKey {
        addr,
        port,
        proto,
        family,
    }
}

/// A VIP as the tests configure it.
pub struct TestVip {
    pub key: VipKey,
    pub meta: VipMeta,
    pub ring: Vec<u32>,
}

/// The balancer with the tests' sizes (not attached, not pinned).
pub fn load() -> Dataplane {
    Dataplane::load(
        LoadOptions {
            flows: 65_536,
            ring_capacity: 8 * RING,
        },
        None,
    )
    .expect("load lb_xdp (needs root)")
}

pub struct Harness {
    pub dp: Dataplane,
    next_offset: u32,
    next_vip_id: u32,
}

impl Harness {
    /// Loaded, not attached; FIB lookups off so outputs are deterministic (the FIB path is
    /// exercised by the namespace tests).
    pub fn new() -> Self {
        let dp = load();
        Self::with(dp, |_| {})
    }

    /// Wrap a loaded dataplane, with the test configuration adjusted by `f`.
    pub fn with(dp: Dataplane, f: impl FnOnce(&mut GlobalConfig)) -> Self {
        let mut h = Harness {
            dp,
            next_offset: 0,
            next_vip_id: 1,
        };
        h.set_config(f);
        h
    }

    pub fn set_config(&mut self, f: impl FnOnce(&mut GlobalConfig)) {
        let mut cfg = GlobalConfig {
            gateway_mac: GATEWAY_MAC,
            mtu: 1500,
            flags: CFG_F_NO_FIB,
            encap_v4_hash_bits: 8,
            encap_v6_hash_bits: 16,
            encap_src_v4: [198, 18, 255, 0],
            encap_src_v6: "2001:db8:ff::"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        };
        f(&mut cfg);
        self.dp.set_config(&cfg).unwrap();
    }

    pub fn backend(&mut self, id: u32, ip: &str, mac: [u8; 6]) {
        let (addr, family) = addr16(ip.parse().unwrap());
        self.dp
            .set_backend(
                id,
                &Backend {
                    addr,
                    mac,
                    family,
                    flags: 0,
                    vip_id: 0,
                },
            )
            .unwrap();
    }

    pub fn set_backend_flags(&mut self, id: u32, flags: u8) {
        let mut be = self.dp.backend(id).unwrap();
        be.flags = flags;
        self.dp.set_backend(id, &be).unwrap();
    }

    /// Add a VIP over `backends` (id, identity, weight); returns what was written.
    pub fn vip(
        &mut self,
        key: VipKey,
        scheduler: Scheduler,
        forward: Forward,
        flags: u8,
        backends: &[(u32, &str, u32)],
    ) -> TestVip {
        let members: Vec<RingMember> = backends
            .iter()
            .map(|(id, ident, w)| RingMember {
                id: *id,
                identity: ident.as_bytes().to_vec(),
                weight: *w,
            })
            .collect();
        let ring = match scheduler {
            Scheduler::RoundRobin => round_robin(&members, RING),
            _ => maglev(&members, RING).unwrap(),
        };
        let meta = VipMeta {
            vip_id: self.next_vip_id,
            ring_offset: self.next_offset,
            ring_size: ring.len() as u32,
            scheduler: scheduler as u8,
            forward: forward as u8,
            flags,
            _pad: 0,
        };
        self.next_vip_id += 1;
        self.next_offset += RING;
        self.dp.write_ring(meta.ring_offset, &ring).unwrap();
        self.dp.set_vip(&key, &meta).unwrap();
        TestVip { key, meta, ring }
    }

    /// Run the program once on `pkt`: (XDP action, output frame).
    /// Asserts that `pkt` is passed to the stack byte for byte and counted once under
    /// `reason`.
    pub fn assert_passed(&self, pkt: &[u8], reason: lb_common::Reason) {
        let before = self.dp.reason(reason).unwrap();
        assert_eq!(
            self.run(pkt),
            (XDP_PASS, pkt.to_vec()),
            "{reason:?}: passed untouched"
        );
        assert_eq!(
            self.dp.reason(reason).unwrap(),
            before + 1,
            "{reason:?} counted once"
        );
    }

    pub fn run(&self, pkt: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; pkt.len() + 256];
        let prog = self.dp.program().unwrap();
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(res.data_size_out as usize);
        (res.return_value, out)
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}
