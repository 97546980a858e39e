//! A VIP's slot table ("ring"): Maglev consistent hashing with weights, and the smooth
//! weighted round-robin sequence.
//!
//! Maglev (Eisenbud et al., NSDI 2016): each backend walks the table in its own permutation
//! (offset, skip) and claims the first free slot on its turn, so removing a backend frees
//! its slots and disturbs few others. The permutation comes from the backend's identity
//! (its address), not from its position in a list or a random seed, so every balancer node
//! builds the same table from the same backend set and ECMP can move a flow between nodes
//! without moving it between backends.

use thiserror::Error;

/// One backend as the ring sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingMember {
    /// The id written into slots (index into `LB_BACKENDS`).
    pub id: u32,
    /// What the permutation derives from: stable across nodes and restarts.
    pub identity: Vec<u8>,
    /// Relative share of slots; 0 takes none.
    pub weight: u32,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RingError {
    #[error("ring size {0} is not a prime: choose a prime such as 65537 or 655373")]
    NotPrime(u32),
    #[error(
        "ring size {size} is too small for {backends} backends: use at least 100 slots per backend"
    )]
    TooSmall { size: u32, backends: usize },
    #[error("two backends share the identity {0:?}: each backend needs a distinct address")]
    DuplicateIdentity(Vec<u8>),
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = n as u64;
    let mut d = 2u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// SplitMix64's finalizer: a full-avalanche mix for the permutation seeds.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a over the identity, then mixed: deterministic on every node and every build
/// (std's hashers are randomly seeded and may change between Rust releases).
fn identity_hash(identity: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in identity {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// The Maglev table of `size` slots (a prime). Slots hold backend ids; with no backend of
/// positive weight every slot is `lb_common::NO_BACKEND`.
pub fn maglev(members: &[RingMember], size: u32) -> Result<Vec<u32>, RingError> {
    if !is_prime(size) {
        return Err(RingError::NotPrime(size));
    }
    // Turn order is part of the result: take turns in identity order, not list order.
    let mut live: Vec<&RingMember> = members.iter().filter(|m| m.weight > 0).collect();
    live.sort_by(|a, b| a.identity.cmp(&b.identity));
    if live.is_empty() {
        return Ok(vec![lb_common::NO_BACKEND; size as usize]);
    }
    if (size as usize) < live.len() * 100 {
        return Err(RingError::TooSmall {
            size,
            backends: live.len(),
        });
    }
    if let Some(w) = live.windows(2).find(|w| w[0].identity == w[1].identity) {
        return Err(RingError::DuplicateIdentity(w[0].identity.clone()));
    }
    let m = size as u64;
    let perms: Vec<(u64, u64)> = live
        .iter()
        .map(|b| {
            let offset = identity_hash(&b.identity, 0x6f66_6673_6574) % m;
            let skip = identity_hash(&b.identity, 0x736b_6970) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_weight = live.iter().map(|b| b.weight as u64).max().unwrap_or(1);
    let mut next = vec![0u64; live.len()];
    let mut credit = vec![0u64; live.len()];
    let mut table = vec![lb_common::NO_BACKEND; size as usize];
    let mut filled = 0u64;
    // Each round the heaviest backend claims one slot and the others accumulate credit in
    // proportion to their weight: shares follow weights to within one slot per backend.
    loop {
        for (i, b) in live.iter().enumerate() {
            credit[i] += b.weight as u64;
            if credit[i] < max_weight {
                continue;
            }
            credit[i] -= max_weight;
            let (offset, skip) = perms[i];
            loop {
                let c = ((offset + next[i] * skip) % m) as usize;
                next[i] += 1;
                if table[c] == lb_common::NO_BACKEND {
                    table[c] = b.id;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                return Ok(table);
            }
        }
    }
}

/// The smooth weighted round-robin sequence (as nginx builds it): each backend appears in
/// proportion to its weight, interleaved rather than in bursts. Weights are reduced by
/// their common divisor and scaled down to about `max_len` entries (never below one
/// entry per backend).
pub fn round_robin(members: &[RingMember], max_len: u32) -> Vec<u32> {
    let live: Vec<&RingMember> = members.iter().filter(|m| m.weight > 0).collect();
    if live.is_empty() {
        return vec![lb_common::NO_BACKEND];
    }
    let g = live.iter().fold(0u64, |g, m| gcd(g, m.weight as u64));
    let mut weights: Vec<u64> = live.iter().map(|m| m.weight as u64 / g).collect();
    let total: u64 = weights.iter().sum();
    if total > max_len as u64 {
        weights = weights
            .iter()
            .map(|w| (w * max_len as u64 / total).max(1))
            .collect();
    }
    let total: i64 = weights.iter().map(|w| *w as i64).sum();
    let mut current = vec![0i64; live.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += *w as i64;
        }
        let best = (0..live.len())
            .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
            .unwrap_or(0);
        current[best] -= total;
        seq.push(live[best].id);
    }
    seq
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: u32) -> Vec<RingMember> {
        (1..=n)
            .map(|i| RingMember {
                id: i,
                identity: format!("198.18.1.{i}").into_bytes(),
                weight: 1,
            })
            .collect()
    }

    fn share(table: &[u32], id: u32) -> f64 {
        table.iter().filter(|&&s| s == id).count() as f64 / table.len() as f64
    }

    #[test]
    fn rejects_bad_sizes() {
        assert_eq!(maglev(&members(3), 65536), Err(RingError::NotPrime(65536)));
        assert_eq!(
            maglev(&members(10), 997),
            Err(RingError::TooSmall {
                size: 997,
                backends: 10
            })
        );
    }

    #[test]
    fn equal_weights_share_within_one_percent() {
        let n = 50;
        let t = maglev(&members(n), 65537).unwrap();
        assert!(t.iter().all(|&s| s != 0));
        for id in 1..=n {
            let s = share(&t, id);
            assert!((s * n as f64 - 1.0).abs() < 0.01, "backend {id} share {s}");
        }
    }

    #[test]
    fn weights_are_followed_within_one_percent() {
        // M >= 100 x N: the bound is load within 1% of the weight share.
        let mut m = members(10);
        for (i, b) in m.iter_mut().enumerate() {
            b.weight = (i as u32 % 4) + 1;
        }
        let total: u32 = m.iter().map(|b| b.weight).sum();
        let t = maglev(&m, 65537).unwrap();
        let mut worst: f64 = 0.0;
        for b in &m {
            let want = b.weight as f64 / total as f64;
            let got = share(&t, b.id);
            worst = worst.max(((got - want) / want).abs());
        }
        println!(
            "maglev weighted: worst relative deviation from weight share {:.4}%",
            worst * 100.0
        );
        assert!(worst < 0.01, "worst relative deviation {worst}");
    }

    #[test]
    fn removing_one_backend_moves_few_other_slots() {
        let n = 20;
        let all = members(n);
        let before = maglev(&all, 65537).unwrap();
        let after = maglev(&all[1..], 65537).unwrap();
        let mut own = 0;
        let mut others_moved = 0;
        for (a, b) in before.iter().zip(&after) {
            if *a == 1 {
                own += 1;
            } else if a != b {
                others_moved += 1;
            }
        }
        let frac = others_moved as f64 / (before.len() - own) as f64;
        println!(
            "maglev: removing 1 of {n} backends moved its {own} slots plus {:.3}% of the others",
            frac * 100.0
        );
        assert!(after.iter().all(|&s| s != 1));
        assert!(frac < 0.03, "{frac}");
    }

    #[test]
    fn same_set_same_table_regardless_of_order() {
        let mut m = members(7);
        let a = maglev(&m, 65537).unwrap();
        m.reverse();
        assert!(
            a == maglev(&m, 65537).unwrap(),
            "table depends on list order"
        );
    }

    #[test]
    fn round_robin_interleaves_by_weight() {
        let mut m = members(3);
        m[0].weight = 5;
        m[1].weight = 1;
        m[2].weight = 1;
        let seq = round_robin(&m, 1000);
        assert_eq!(seq, vec![1, 1, 2, 1, 3, 1, 1]);
    }
}
