//! Frames for the tests, built byte by byte (so that malformed ones are as easy as valid
//! ones), and a checker that parses outputs with etherparse: checksums are validated by an
//! implementation that is not ours.

use std::net::IpAddr;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// RFC 1071 sum (for building inputs only; outputs are checked by etherparse).
pub fn inet_sum(data: &[u8], mut sum: u32) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    sum
}

pub fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn pseudo_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut s = inet_sum(&ip_bytes(src), 0);
    s = inet_sum(&ip_bytes(dst), s);
    s + proto as u32 + len as u32
}

/// What goes above IP.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// Raw bytes with the given protocol number (ICMP built by the caller, or anything).
    Raw {
        proto: u8,
        bytes: Vec<u8>,
    },
}

impl L4 {
    pub fn proto(&self) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Raw { proto, .. } => *proto,
        }
    }

    /// The segment with a valid checksum for (src, dst).
    pub fn bytes(&self, src: IpAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
        match self {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut t = Vec::with_capacity(20 + payload.len());
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&1000u32.to_be_bytes());
                t.extend_from_slice(&0u32.to_be_bytes());
                t.extend_from_slice(&[0x50, *flags, 0xff, 0xff, 0, 0, 0, 0]);
                t.extend_from_slice(payload);
                let c = fold(inet_sum(&t, pseudo_sum(src, dst, 6, t.len())));
                t[16..18].copy_from_slice(&c.to_be_bytes());
                t
            }
            L4::Udp { sport, dport } => {
                let len = (8 + payload.len()) as u16;
                let mut u = Vec::with_capacity(len as usize);
                u.extend_from_slice(&sport.to_be_bytes());
                u.extend_from_slice(&dport.to_be_bytes());
                u.extend_from_slice(&len.to_be_bytes());
                u.extend_from_slice(&[0, 0]);
                u.extend_from_slice(payload);
                let mut c = fold(inet_sum(&u, pseudo_sum(src, dst, 17, u.len())));
                if c == 0 {
                    c = 0xffff;
                }
                u[6..8].copy_from_slice(&c.to_be_bytes());
                u
            }
            L4::Raw { bytes, .. } => {
                let mut b = bytes.clone();
                b.extend_from_slice(payload);
                b
            }
        }
    }
}

/// One frame to build. Defaults: no VLAN, no IPv4 options, no IPv6 extension headers.
#[derive(Clone, Debug)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// (TPID, VLAN id), outermost first.
    pub vlans: Vec<(u16, u16)>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    pub payload: Vec<u8>,
    pub ipv4_options: Vec<u8>,
    /// IPv6 extension headers: (header type, full bytes with next-header to be patched).
    pub ipv6_ext: Vec<(u8, Vec<u8>)>,
    pub dont_fragment: bool,
    /// IPv4 (MF, offset in 8-byte units).
    pub fragment: Option<(bool, u16)>,
    pub tos: u8,
    pub ttl: u8,
}

impl Frame {
    pub fn new(src: &str, dst: &str, l4: L4) -> Self {
        Frame {
            dst_mac: crate::harness::LB_MAC,
            src_mac: crate::harness::CLIENT_MAC,
            vlans: vec![],
            src: src.parse().expect("src"),
            dst: dst.parse().expect("dst"),
            l4,
            payload: b"hello".to_vec(),
            ipv4_options: vec![],
            ipv6_ext: vec![],
            dont_fragment: false,
            fragment: None,
            tos: 0,
            ttl: 64,
        }
    }

    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Self {
        Frame::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags,
            },
        )
    }

    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Frame::new(src, dst, L4::Udp { sport, dport })
    }

    /// The IP packet (header included).
    pub fn ip_packet(&self) -> Vec<u8> {
        let seg = self.l4.bytes(self.src, self.dst, &self.payload);
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let ihl = 20 + self.ipv4_options.len();
                assert!(
                    ihl.is_multiple_of(4) && ihl <= 60,
                    "IPv4 options must pad to 4 bytes"
                );
                let total = (ihl + seg.len()) as u16;
                let (mf, off) = self.fragment.unwrap_or((false, 0));
                let frag = (if self.dont_fragment { 0x4000 } else { 0 })
                    | (if mf { 0x2000 } else { 0 })
                    | off;
                let mut h = vec![0x40 | (ihl / 4) as u8, self.tos];
                h.extend_from_slice(&total.to_be_bytes());
                h.extend_from_slice(&[0x12, 0x34]);
                h.extend_from_slice(&frag.to_be_bytes());
                h.extend_from_slice(&[self.ttl, self.l4.proto(), 0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend_from_slice(&self.ipv4_options);
                let c = fold(inet_sum(&h, 0));
                h[10..12].copy_from_slice(&c.to_be_bytes());
                h.extend_from_slice(&seg);
                h
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut ext = Vec::new();
                let first = self
                    .ipv6_ext
                    .first()
                    .map(|e| e.0)
                    .unwrap_or(self.l4.proto());
                for (i, (_, bytes)) in self.ipv6_ext.iter().enumerate() {
                    let mut b = bytes.clone();
                    b[0] = self
                        .ipv6_ext
                        .get(i + 1)
                        .map(|e| e.0)
                        .unwrap_or(self.l4.proto());
                    ext.extend_from_slice(&b);
                }
                let plen = (ext.len() + seg.len()) as u16;
                let mut h = vec![0x60 | (self.tos >> 4), self.tos << 4, 0, 0];
                h.extend_from_slice(&plen.to_be_bytes());
                h.extend_from_slice(&[first, self.ttl]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend_from_slice(&ext);
                h.extend_from_slice(&seg);
                h
            }
            _ => panic!("mixed address families"),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let ip = self.ip_packet();
        let ethertype: u16 = if self.src.is_ipv4() { 0x0800 } else { 0x86dd };
        let mut f = Vec::with_capacity(22 + ip.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        for (tpid, id) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&ip);
        f
    }
}

/// What the checker found in a forwarded frame.
#[derive(Debug, Clone)]
pub struct Checked {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlans: usize,
    pub outer_src: IpAddr,
    pub outer_dst: IpAddr,
    /// The IP payload: the inner packet for IP-in-IP.
    pub ip_payload: Vec<u8>,
    pub ip_proto: u8,
}

fn check_transport(t: &Option<TransportSlice>, net: &NetSlice) -> Result<(), String> {
    let (src4, dst4, src6, dst6) = match net {
        NetSlice::Ipv4(s) => (
            s.header().source(),
            s.header().destination(),
            [0; 16],
            [0; 16],
        ),
        NetSlice::Ipv6(s) => (
            [0; 4],
            [0; 4],
            s.header().source(),
            s.header().destination(),
        ),
    };
    let v4 = matches!(net, NetSlice::Ipv4(_));
    match t {
        Some(TransportSlice::Tcp(tcp)) => {
            let want = if v4 {
                tcp.calc_checksum_ipv4(src4, dst4)
            } else {
                tcp.calc_checksum_ipv6(src6, dst6)
            }
            .map_err(|e| e.to_string())?;
            (want == tcp.checksum())
                .then_some(())
                .ok_or(format!("TCP checksum {:#x} != {want:#x}", tcp.checksum()))
        }
        Some(TransportSlice::Udp(udp)) => {
            let h = udp.to_header();
            let want = match net {
                NetSlice::Ipv4(s) => h.calc_checksum_ipv4(&s.header().to_header(), udp.payload()),
                NetSlice::Ipv6(s) => h.calc_checksum_ipv6(&s.header().to_header(), udp.payload()),
            }
            .map_err(|e| e.to_string())?;
            (want == udp.checksum())
                .then_some(())
                .ok_or(format!("UDP checksum {:#x} != {want:#x}", udp.checksum()))
        }
        Some(TransportSlice::Icmpv4(icmp)) => {
            let h = icmp.header();
            let want = h.icmp_type.calc_checksum(icmp.payload());
            (want == h.checksum)
                .then_some(())
                .ok_or(format!("ICMP checksum {:#x} != {want:#x}", h.checksum))
        }
        Some(TransportSlice::Icmpv6(icmp)) => icmp
            .is_checksum_valid(src6, dst6)
            .then_some(())
            .ok_or_else(|| "ICMPv6 checksum invalid".to_string()),
        None => Ok(()),
    }
}

fn check_net(net: &NetSlice) -> Result<(IpAddr, IpAddr, Vec<u8>, u8), String> {
    match net {
        NetSlice::Ipv4(s) => {
            let h = s.header().to_header();
            if h.calc_header_checksum() != h.header_checksum {
                return Err(format!(
                    "IPv4 header checksum {:#x} wrong",
                    h.header_checksum
                ));
            }
            Ok((
                IpAddr::V4(h.source.into()),
                IpAddr::V4(h.destination.into()),
                s.payload().payload.to_vec(),
                s.payload().ip_number.0,
            ))
        }
        NetSlice::Ipv6(s) => Ok((
            IpAddr::V6(s.header().source_addr()),
            IpAddr::V6(s.header().destination_addr()),
            s.payload().payload.to_vec(),
            s.payload().ip_number.0,
        )),
    }
}

/// Parse an Ethernet frame, validating every checksum on the way.
pub fn check_frame(frame: &[u8]) -> Result<Checked, String> {
    let p = SlicedPacket::from_ethernet(frame).map_err(|e| format!("etherparse: {e}"))?;
    let net = p.net.as_ref().ok_or("no IP layer")?;
    let (outer_src, outer_dst, ip_payload, ip_proto) = check_net(net)?;
    check_transport(&p.transport, net)?;
    let vlans = match &p.vlan {
        None => 0,
        Some(etherparse::VlanSlice::SingleVlan(_)) => 1,
        Some(etherparse::VlanSlice::DoubleVlan(_)) => 2,
    };
    Ok(Checked {
        dst_mac: frame[0..6].try_into().unwrap(),
        src_mac: frame[6..12].try_into().unwrap(),
        vlans,
        outer_src,
        outer_dst,
        ip_payload,
        ip_proto,
    })
}

/// Parse an IP packet (an inner packet), validating its checksums.
pub fn check_ip(packet: &[u8]) -> Result<(IpAddr, IpAddr), String> {
    let p = SlicedPacket::from_ip(packet).map_err(|e| format!("etherparse: {e}"))?;
    let net = p.net.as_ref().ok_or("no IP layer")?;
    let (src, dst, _, _) = check_net(net)?;
    check_transport(&p.transport, net)?;
    Ok((src, dst))
}
