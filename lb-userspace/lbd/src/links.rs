//! The NICs the balancer is attached to going away and coming back.
//!
//! When a NIC is deleted, the kernel severs its XDP link: the program stops running there,
//! and a NIC created again under the same name starts without it. A rtnetlink socket
//! subscribed to link events (RTMGRP_LINK) wakes the control loop, which then compares each
//! configured interface's NIC with the one the program was attached to (`reconcile`): a NIC
//! gone is reported lost (log, event, status, `lb_interface_attached`); a NIC of that name
//! present again is attached again, as at start.
//!
//! The messages only wake the loop; what is true is read from the kernel (the ifindex now
//! behind each name), so a missed or overflowed message costs nothing: an overflow wakes the
//! loop as well, and SIGHUP and the 30 s tick reconcile too.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::{debug, error, info, warn};

use crate::{handler::Handler, metrics::Metrics};

const RTM_NEWLINK: u16 = libc::RTM_NEWLINK;
const RTM_DELLINK: u16 = libc::RTM_DELLINK;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const IFLA_IFNAME: u16 = libc::IFLA_IFNAME;

/// One RTM_NEWLINK or RTM_DELLINK message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkMsg {
    pub deleted: bool,
    pub ifindex: u32,
    pub name: Option<String>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The link messages in one datagram from the socket (other messages are skipped; a
/// malformed one ends the walk).
pub fn parse(buf: &[u8]) -> Vec<LinkMsg> {
    let mut out = Vec::new();
    let mut at = 0;
    while let (Some(len), Some(kind)) = (u32_at(buf, at), u16_at(buf, at + 4)) {
        let len = len as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            break;
        }
        let msg = &buf[at..at + len];
        if (kind == RTM_NEWLINK || kind == RTM_DELLINK)
            && let Some(ifindex) = u32_at(msg, NLMSG_HDRLEN + 4)
        {
            out.push(LinkMsg {
                deleted: kind == RTM_DELLINK,
                ifindex,
                name: ifname(msg.get(NLMSG_HDRLEN + IFINFOMSG_LEN..).unwrap_or_default()),
            });
        }
        at += align4(len);
    }
    out
}

/// IFLA_IFNAME among a link message's attributes.
fn ifname(mut attrs: &[u8]) -> Option<String> {
    while let (Some(len), Some(kind)) = (u16_at(attrs, 0), u16_at(attrs, 2)) {
        let len = len as usize;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind & 0x3fff == IFLA_IFNAME {
            let v = &attrs[4..len];
            let v = v.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(v).into_owned());
        }
        attrs = attrs.get(align4(len)..).unwrap_or_default();
    }
    None
}

/// A NETLINK_ROUTE socket subscribed to link events, in the daemon's network namespace.
pub struct Watch {
    fd: AsyncFd<OwnedFd>,
}

impl Watch {
    pub fn open() -> io::Result<Watch> {
        // SAFETY: plain syscalls on a descriptor this function creates and owns; the
        // address is a zeroed sockaddr_nl of the size given.
        let fd = unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            addr.nl_groups = libc::RTMGRP_LINK as u32;
            if libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            fd
        };
        // SAFETY: the AsyncFd owns the descriptor, so it stays open (and the same) for as
        // long as it is registered.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(Watch { fd })
    }

    /// The next datagram's link messages. `Ok(None)`: the kernel dropped messages (the
    /// socket's buffer overflowed), so anything may have changed.
    pub async fn next(&self, buf: &mut [u8]) -> io::Result<Option<Vec<LinkMsg>>> {
        loop {
            let mut guard = self.fd.readable().await?;
            let got = guard.try_io(|fd| {
                // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
                let n = unsafe {
                    libc::recv(
                        fd.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match got {
                Ok(Ok(n)) => return Ok(Some(parse(&buf[..n]))),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(None),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Watch link events in a task of its own: each datagram with a link message (or an
/// overflow) wakes the control loop through `wake` (one pending wake-up is enough).
pub fn spawn(wake: mpsc::Sender<()>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let watch = match Watch::open() {
            Ok(w) => w,
            Err(e) => {
                return error!(
                    error = %e,
                    "cannot watch link events: a lost NIC is noticed only on SIGHUP and within 30 s"
                );
            }
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match watch.next(&mut buf).await {
                Ok(Some(msgs)) if msgs.is_empty() => continue,
                Ok(Some(msgs)) => debug!(?msgs, "link events"),
                Ok(None) => {
                    warn!("link events were dropped (socket buffer full); checking every interface")
                }
                Err(e) => {
                    return error!(
                        error = %e,
                        "reading link events failed: a lost NIC is noticed only on SIGHUP and within 30 s"
                    );
                }
            }
            let _ = wake.try_send(());
        }
    })
}

/// Compare each attached interface's NIC with the one behind its name now: report the
/// lost ones, attach to the ones that are back (as at start: native, or generic if native
/// fails and `generic_fallback` allows; pinned; added to LB_TX_PORTS). A failed attach
/// leaves the interface lost, tried again at the next link event, SIGHUP or tick.
pub fn reconcile(svc: &mut Handler, metrics: &Metrics) {
    let attached: Vec<(String, u32, bool)> = svc
        .ctl
        .maps()
        .interfaces()
        .map(|(n, i, lost)| (n.to_string(), i, lost))
        .collect();
    for (iface, was, lost) in attached {
        let now = crate::run::ifindex(&iface).ok();
        if (!lost && now == Some(was)) || (lost && now.is_none()) {
            continue;
        }
        if !lost {
            warn!(%iface, ifindex = was, "interface lost: its NIC went away and the XDP program with it; it is attached again when a NIC of that name appears");
            svc.ctl.maps_mut().interface_lost(&iface);
            metrics.set_interface_attached(&iface, false);
            svc.ctl.event(
                "*",
                None,
                format!("interface {iface} lost (ifindex {was}): not balanced until it returns"),
            );
        }
        let Some(new) = now else { continue };
        if new != was {
            // The pinned link belongs to the old NIC: severed if it was deleted, still on it
            // if it was renamed or moved. Either way not the one to take over.
            let pin = lb_dataplane::link_pin(&svc.cfg.daemon.pin_dir, &iface);
            if let Err(e) = svc.ctl.maps_mut().release_link(&iface, &pin) {
                error!(%iface, error = %e, "letting go of the old NIC's link failed; tried again at the next link event, SIGHUP or within 30 s");
                continue;
            }
        }
        match crate::run::attach_interface(svc.ctl.maps_mut(), &svc.cfg.daemon, &iface) {
            Ok(()) => {
                metrics.set_interface_attached(&iface, true);
                info!(%iface, ifindex = new, "interface back: XDP program attached again");
                svc.ctl.event(
                    "*",
                    None,
                    format!("interface {iface} back (ifindex {new}): XDP program attached again"),
                );
            }
            Err(e) => error!(
                %iface,
                ifindex = new,
                "attaching to the returned interface failed: {e:#}; tried again at the next link event, SIGHUP or within 30 s"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link message as the kernel lays it out (native endianness).
    fn msg(kind: u16, ifindex: u32, name: Option<&str>, extra_attr: bool) -> Vec<u8> {
        let mut attrs = Vec::new();
        if extra_attr {
            // IFLA_MTU (4), 4 bytes.
            attrs.extend_from_slice(&8u16.to_ne_bytes());
            attrs.extend_from_slice(&4u16.to_ne_bytes());
            attrs.extend_from_slice(&1500u32.to_ne_bytes());
        }
        if let Some(n) = name {
            let len = 4 + n.len() + 1;
            attrs.extend_from_slice(&(len as u16).to_ne_bytes());
            attrs.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
            attrs.extend_from_slice(n.as_bytes());
            attrs.push(0);
            attrs.resize(align4(attrs.len()), 0);
        }
        let len = NLMSG_HDRLEN + IFINFOMSG_LEN + attrs.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]); // flags, seq, pid
        m.extend_from_slice(&[0; 4]); // family, pad, type
        m.extend_from_slice(&ifindex.to_ne_bytes());
        m.extend_from_slice(&[0; 8]); // flags, change
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn parses_new_and_deleted_links_with_their_names() {
        let mut buf = msg(RTM_DELLINK, 7, Some("eth0"), true);
        buf.extend(msg(RTM_NEWLINK, 9, Some("eth0"), false));
        // Not a link message: skipped.
        buf.extend(msg(libc::RTM_NEWADDR, 9, None, false));
        buf.extend(msg(RTM_NEWLINK, 10, None, false));
        assert_eq!(
            parse(&buf),
            vec![
                LinkMsg {
                    deleted: true,
                    ifindex: 7,
                    name: Some("eth0".into())
                },
                LinkMsg {
                    deleted: false,
                    ifindex: 9,
                    name: Some("eth0".into())
                },
                LinkMsg {
                    deleted: false,
                    ifindex: 10,
                    name: None
                },
            ]
        );
    }

    #[test]
    fn a_truncated_or_malformed_datagram_ends_the_walk() {
        let good = msg(RTM_NEWLINK, 3, Some("ens1"), false);
        let mut buf = good.clone();
        buf.extend_from_slice(&good[..good.len() - 5]);
        assert_eq!(parse(&buf).len(), 1);
        assert!(parse(&[0u8; 3]).is_empty());
        // A header claiming less than a header.
        let mut bad = good.clone();
        bad[..4].copy_from_slice(&4u32.to_ne_bytes());
        assert!(parse(&bad).is_empty());
        // An attribute claiming more than the message holds: no name, no panic.
        let mut odd = good;
        odd[NLMSG_HDRLEN + IFINFOMSG_LEN..NLMSG_HDRLEN + IFINFOMSG_LEN + 2]
            .copy_from_slice(&200u16.to_ne_bytes());
        assert_eq!(parse(&odd)[0].name, None);
    }
}
