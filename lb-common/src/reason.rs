//! Why a packet left the way it did: one per-CPU counter per reason in `LB_STATS`.
//!
//! Every pass, drop and error has its own reason, so an operator can tell a VIP without
//! backends from a malformed packet from a missing next hop without a packet capture.

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident = $val:literal, $label:literal;)*) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason { $($(#[$doc])* $name = $val,)* }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];
            /// snake_case label used in metrics and the CLI.
            pub const fn label(self) -> &'static str {
                match self { $(Reason::$name => $label,)* }
            }
        }
    };
}

reasons! {
    /// Not IPv4/IPv6 (ARP, LLDP, unknown ethertypes): passed untouched.
    PassNotIp = 0, "pass_not_ip";
    /// IP but not addressed to a VIP: passed untouched. (In `LB_DECAP_STATS`: not IP-in-IP
    /// for one of the backend's addresses.)
    PassNotVip = 1, "pass_not_vip";
    /// More than two VLAN tags: passed untouched.
    PassVlanDepth = 2, "pass_vlan_depth";
    /// Truncated or inconsistent headers on a packet we cannot tell is for a VIP.
    PassMalformed = 3, "pass_malformed";
    /// IPv6 with more extension headers than we walk.
    PassExtHeaders = 4, "pass_ext_headers";
    /// ICMP that is not an error about a VIP flow (echo, neighbour discovery, errors about
    /// other traffic): the host's own business.
    PassIcmpLocal = 5, "pass_icmp_local";
    /// The VIP has no usable backend and is configured to pass.
    PassNoBackend = 6, "pass_no_backend";
    /// The VIP has no usable backend and is configured to drop.
    DropNoBackend = 7, "drop_no_backend";
    /// For a VIP, but its lengths lie (IHL < 5, total length past the frame, ...).
    DropMalformed = 8, "drop_malformed";
    /// No next hop: `bpf_fib_lookup` failed and no gateway MAC is configured.
    DropNoNexthop = 9, "drop_no_nexthop";
    /// A helper refused to grow or shrink the packet.
    DropAdjustFailed = 10, "drop_adjust_failed";
    /// Sent to a backend in IP-in-IP with XDP_TX.
    TxIpip = 11, "tx_ipip";
    /// Sent to a backend with rewritten MACs with XDP_TX.
    TxL2Dsr = 12, "tx_l2dsr";
    /// Sent to a backend through another NIC (devmap redirect).
    Redirect = 13, "redirect";
    /// DF packet too big once encapsulated: ICMP sent back to the client.
    TxIcmpTooBig = 14, "tx_icmp_too_big";
    /// ICMP error about a VIP flow, steered to the flow's backend.
    IcmpErrorSteered = 15, "icmp_error_steered";
    /// A fragment, scheduled on addresses only.
    Fragment = 16, "fragment";
    /// Too big once encapsulated but not DF: forwarded, the next hop may fragment.
    OverMtuForwarded = 17, "over_mtu_forwarded";
    /// `bpf_fib_lookup` had no answer: the configured gateway MAC was used.
    FibFallback = 18, "fib_fallback";
    /// Flow found in the connection table.
    FlowHit = 19, "flow_hit";
    /// Flow scheduled and remembered: a connection-table entry was created (for TCP on a
    /// Maglev or source-hash VIP, by the client's first packet after its SYN).
    FlowNew = 20, "flow_new";
    /// Flow's backend was down: scheduled again.
    FlowRescheduled = 21, "flow_rescheduled";
    /// Redirect to another NIC failed (no devmap entry): dropped.
    DropRedirect = 22, "drop_redirect";
    /// Decap program: IP-in-IP for us, stripped and passed to the stack.
    Decapsulated = 23, "decapsulated";
    /// A bare SYN of a flow the table does not hold, on a VIP whose ring placement repeats
    /// (Maglev, source hash): forwarded by the ring and not remembered; the handshake's
    /// next packet creates the entry, on the same backend. A spoofed SYN flood counts here.
    SynStateless = 24, "syn_stateless";
    /// A new flow above the new-entry rate (`LB_NEW_RATE`): forwarded by the ring (by the
    /// flow hash on round-robin, random and least-connections VIPs) and not remembered.
    FlowOverRate = 25, "flow_over_rate";
}

/// Derived from the enum: LB_STATS has one slot per reason.
pub const REASON_COUNT: u32 = Reason::ALL.len() as u32;

// The counters are indexed by the discriminant: the values must run 0..REASON_COUNT.
const _: () = {
    let mut i = 0;
    while i < Reason::ALL.len() {
        assert!(Reason::ALL[i] as usize == i);
        i += 1;
    }
};

impl Reason {
    /// The verdict for a packet that stops with this reason: drops are deliberate,
    /// everything else we could not handle goes to the kernel untouched.
    pub const fn drops(self) -> bool {
        matches!(
            self,
            Reason::DropNoBackend
                | Reason::DropMalformed
                | Reason::DropNoNexthop
                | Reason::DropAdjustFailed
                | Reason::DropRedirect
        )
    }
}
