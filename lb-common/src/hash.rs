//! The flow hash: one function compiled into the XDP program and into userspace.
//!
//! It is MurmurHash3's 32-bit block function over the flow key's words. Murmur3 mixes well
//! enough that `hash % prime` spreads evenly over a Maglev ring, costs a handful of
//! instructions per word, and needs no tables (the BPF stack is small). The seed is fixed:
//! every balancer node must map a flow to the same ring slot, which is what keeps flows on
//! their backend when ECMP moves them between nodes.

use crate::maps::FlowKey;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;
const SEED: u32 = 0x4c42_5846; // "LBXF"

#[inline(always)]
fn mix(h: u32, word: u32) -> u32 {
    let k = word.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn mix_addr(mut h: u32, addr: &[u8; 16]) -> u32 {
    h = mix(h, u32::from_le_bytes([addr[0], addr[1], addr[2], addr[3]]));
    h = mix(h, u32::from_le_bytes([addr[4], addr[5], addr[6], addr[7]]));
    h = mix(
        h,
        u32::from_le_bytes([addr[8], addr[9], addr[10], addr[11]]),
    );
    mix(
        h,
        u32::from_le_bytes([addr[12], addr[13], addr[14], addr[15]]),
    )
}

/// Hash of the whole 5-tuple (with the address family): Maglev indexes its ring with it,
/// fragments and ICMP errors are placed by it, and IP-in-IP's outer source carries it.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let mut h = mix_addr(SEED, &key.src);
    h = mix_addr(h, &key.dst);
    h = mix(h, (key.sport as u32) << 16 | key.dport as u32);
    h = mix(h, (key.proto as u32) << 8 | key.family as u32);
    finish(h, 40)
}

/// Hash of the client address alone: the source-hash scheduler sends every flow of one
/// client to the same backend (session affinity without shared state).
#[inline(always)]
pub fn source_hash(key: &FlowKey) -> u32 {
    let h = mix_addr(SEED, &key.src);
    finish(mix(h, key.family as u32), 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED_FLOW: u32 = 650_231_389;
    const PINNED_SOURCE: u32 = 110_287_547;

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            src: [198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [198, 18, 100, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport,
            dport: 80,
            proto: 6,
            family: 4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn hash_is_stable_across_builds() {
        // Pinned values: a change here reshuffles every flow on every node during an
        // upgrade, so it must be deliberate.
        assert_eq!(flow_hash(&key(40000)), PINNED_FLOW);
        assert_eq!(source_hash(&key(40000)), PINNED_SOURCE);
        assert_ne!(flow_hash(&key(40000)), flow_hash(&key(40001)));
        assert_eq!(source_hash(&key(1)), source_hash(&key(2)));
    }

    #[test]
    fn hash_spreads_ports_evenly() {
        let mut buckets = [0u32; 16];
        for p in 0..16_000u16 {
            buckets[(flow_hash(&key(p)) % 16) as usize] += 1;
        }
        for b in buckets {
            assert!(
                (900..1100).contains(&b),
                "bucket {b} far from 1000: {buckets:?}"
            );
        }
    }
}
