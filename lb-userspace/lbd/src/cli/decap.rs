//! `lbd decap attach|status|detach`: the backends' decapsulation program, pinned under
//! `--pin-dir` (one directory per interface: `IF/link`, `IF/LB_DECAP_ADDRS`,
//! `IF/LB_DECAP_STATS`), so that it outlives the command.

use std::{fmt::Write as _, net::IpAddr, path::Path};

use anyhow::{Result, bail};
use lb_common::Reason;
use lb_dataplane::{
    Attached, DecapStatus, LinkState, XdpMode, decap_attach, decap_detach, decap_status,
};

use super::{DecapCmd, DecapMode};

pub(super) fn run(cmd: DecapCmd) -> Result<()> {
    match cmd {
        DecapCmd::Attach {
            interface,
            addrs,
            pass_only: _,
            mode,
            pin_dir,
        } => {
            let xdp = match mode {
                Some(DecapMode::Generic) => XdpMode::Skb,
                _ => XdpMode::Driver,
            };
            let r = decap_attach(&pin_dir, &interface, xdp, &addrs)?;
            let ids = format!("link {}, program {}", r.link_id, r.program_id);
            match r.how {
                Attached::New | Attached::Renewed => {
                    let mode = match mode {
                        Some(DecapMode::Generic) => "generic",
                        _ => "native",
                    };
                    if r.how == Attached::Renewed {
                        println!(
                            "{interface}: the pinned link's NIC was gone; attached afresh to \
                             the NIC now named {interface}"
                        );
                    }
                    println!(
                        "{interface}: lb_decap attached in {mode} XDP (ifindex {}, {ids}), pinned \
                         under {}",
                        r.ifindex,
                        r.dir.display()
                    );
                }
                Attached::Replaced => {
                    println!(
                        "{interface}: lb_decap replaced on its pinned link, without a gap \
                         (ifindex {}, {ids})",
                        r.ifindex
                    );
                    if mode.is_some() {
                        println!(
                            "{interface}: --mode applies when the link is created; the link \
                             keeps its mode (detach, then attach, to change it)"
                        );
                    }
                }
            }
            let mut line = format!("  allow-list: {}", addr_list(&r.allow_list));
            if r.how == Attached::Replaced {
                let _ = write!(
                    line,
                    " (added: {}; removed: {})",
                    addr_list(&r.added),
                    addr_list(&r.removed)
                );
            }
            println!("{line}");
            Ok(())
        }
        DecapCmd::Status {
            interface,
            json,
            pin_dir,
        } => {
            let all = decap_status(&pin_dir, interface.as_deref())?;
            if json {
                println!("{}", status_json(&pin_dir, &all));
            } else {
                print!("{}", status_text(&pin_dir, &all));
            }
            let down: Vec<String> = all
                .iter()
                .filter(|s| !matches!(s.link, LinkState::Attached { .. }))
                .map(|s| format!("{} ({})", s.interface, s.link.label()))
                .collect();
            if !down.is_empty() {
                bail!("not attached: {}", down.join(", "));
            }
            Ok(())
        }
        DecapCmd::Detach { interface, pin_dir } => {
            let dir = pin_dir.join(&interface);
            match decap_detach(&pin_dir, &interface)? {
                Some(ifindex) => println!(
                    "{interface}: lb_decap detached (ifindex {ifindex}); removed the pins under {}",
                    dir.display()
                ),
                None => println!(
                    "{interface}: nothing was attached (its NIC was gone); removed the pins under {}",
                    dir.display()
                ),
            }
            Ok(())
        }
    }
}

fn addr_list(a: &[IpAddr]) -> String {
    if a.is_empty() {
        return "none".to_string();
    }
    a.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What each counter means on a backend.
fn meaning(r: Reason) -> &'static str {
    match r {
        Reason::Decapsulated => "IP-in-IP to an allow-listed address: stripped, passed on",
        Reason::PassNotVip => "passed untouched: not IP-in-IP to an allow-listed address",
        Reason::PassNotIp => "passed untouched: neither IPv4 nor IPv6 (ARP, ...)",
        Reason::PassMalformed => "passed untouched: truncated headers",
        Reason::DropAdjustFailed => "dropped: the kernel refused to strip the outer header",
        _ => "",
    }
}

fn status_text(pin_dir: &Path, all: &[DecapStatus]) -> String {
    let mut out = String::new();
    if all.is_empty() {
        let _ = writeln!(
            out,
            "nothing pinned under {}: no decapsulation program attached by lbd decap",
            pin_dir.display()
        );
        return out;
    }
    for s in all {
        let iface = &s.interface;
        let state = match s.link {
            LinkState::Attached {
                ifindex,
                link_id,
                program_id,
            } => format!("attached (ifindex {ifindex}, link {link_id}, program {program_id})"),
            LinkState::Severed { link_id } => format!(
                "severed: the NIC it was attached to is gone, nothing is attached (link \
                 {link_id}); `lbd decap attach` attaches again, `lbd decap detach` removes the pins"
            ),
            LinkState::Elsewhere {
                ifindex,
                here,
                link_id,
                program_id,
            } => format!(
                "elsewhere: attached to ifindex {ifindex} (link {link_id}, program \
                 {program_id}), but {iface} here is {}: another network namespace, or a NIC of \
                 that name created since",
                here.map_or("not an interface".to_string(), |i| format!("ifindex {i}"))
            ),
            LinkState::NoLink => "not attached: maps pinned, but no link".to_string(),
        };
        let _ = writeln!(out, "{iface}: {state}");
        let _ = writeln!(out, "  allow-list: {}", addr_list(&s.allow_list));
        for (r, n) in &s.counters {
            let _ = writeln!(out, "  {:<20} {n:>14}  {}", r.label(), meaning(*r));
        }
    }
    out
}

fn status_json(pin_dir: &Path, all: &[DecapStatus]) -> serde_json::Value {
    let interfaces: Vec<serde_json::Value> = all
        .iter()
        .map(|s| {
            let mut v = serde_json::json!({
                "interface": s.interface,
                "state": s.link.label(),
                "allow_list": s.allow_list.iter().map(IpAddr::to_string).collect::<Vec<_>>(),
                "counters": s.counters.iter()
                    .map(|(r, n)| (r.label().to_string(), serde_json::json!(n)))
                    .collect::<serde_json::Map<_, _>>(),
            });
            let link = match s.link {
                LinkState::Attached {
                    ifindex,
                    link_id,
                    program_id,
                }
                | LinkState::Elsewhere {
                    ifindex,
                    link_id,
                    program_id,
                    ..
                } => serde_json::json!({
                    "ifindex": ifindex, "link_id": link_id, "program_id": program_id
                }),
                LinkState::Severed { link_id } => serde_json::json!({ "link_id": link_id }),
                LinkState::NoLink => serde_json::Value::Null,
            };
            v["link"] = link;
            v
        })
        .collect();
    serde_json::json!({
        "pin_dir": pin_dir.display().to_string(),
        "interfaces": interfaces,
    })
}
