//! The decapsulation program for backends (`lb_decap`): strips the balancer's IP-in-IP in
//! XDP so backends need no ipip/ip6tnl module and no tunnel device.

use std::net::IpAddr;

use aya::{
    Ebpf,
    maps::{HashMap, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use lb_common::{DecapAddr, FAMILY_V4, FAMILY_V6, MAP_DECAP_ADDRS, MAP_DECAP_STATS, Reason};

use crate::{dataplane::DataplaneError, programs::LB_DECAP};

pub const PROGRAM: &str = "lb_decap";

pub struct Decap {
    ebpf: Ebpf,
}

impl Decap {
    /// Load and attach to `iface` (in the caller's network namespace), accepting IP-in-IP
    /// whose outer destination is one of `addrs`.
    pub fn attach(iface: &str, mode: XdpMode, addrs: &[IpAddr]) -> Result<Self, DataplaneError> {
        let mut ebpf = Ebpf::load(LB_DECAP)?;
        {
            let map = ebpf
                .map_mut(MAP_DECAP_ADDRS)
                .ok_or(DataplaneError::MissingMap(MAP_DECAP_ADDRS))?;
            let mut m: HashMap<_, DecapAddr, u8> =
                HashMap::try_from(map).map_err(|source| DataplaneError::Map {
                    map: MAP_DECAP_ADDRS,
                    source,
                })?;
            for a in addrs {
                let mut key = DecapAddr::default();
                match a {
                    IpAddr::V4(v4) => {
                        key.addr[..4].copy_from_slice(&v4.octets());
                        key.family = FAMILY_V4;
                    }
                    IpAddr::V6(v6) => {
                        key.addr = v6.octets();
                        key.family = FAMILY_V6;
                    }
                }
                m.insert(key, 1, 0).map_err(|source| DataplaneError::Map {
                    map: MAP_DECAP_ADDRS,
                    source,
                })?;
            }
        }
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or(DataplaneError::MissingProgram(PROGRAM))?
            .try_into()?;
        prog.load()?;
        prog.attach(iface, mode)?;
        Ok(Decap { ebpf })
    }

    /// Packets decapsulated so far (summed over CPUs).
    pub fn decapsulated(&self) -> Result<u64, DataplaneError> {
        let map = self
            .ebpf
            .map(MAP_DECAP_STATS)
            .ok_or(DataplaneError::MissingMap(MAP_DECAP_STATS))?;
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| DataplaneError::Map {
                map: MAP_DECAP_STATS,
                source,
            })?;
        let v = stats
            .get(&(Reason::Decapsulated as u32), 0)
            .map_err(|source| DataplaneError::Map {
                map: MAP_DECAP_STATS,
                source,
            })?;
        Ok(v.iter().sum())
    }
}
