//! Which addresses a node announces: every rule of `decide`, and the include file.

use super::*;
use crate::{Withheld, decide, render};

const ON: &str =
    "\n[announce]\nroutes_v4 = \"/run/lbd/routes4.conf\"\nroutes_v6 = \"/run/lbd/routes6.conf\"\n";

fn two_vips(extra_announce: &str, web: &str) -> Config {
    parse(&format!(
        "{}{ON}{extra_announce}",
        config_text(
            "",
            &[
                vip("web", "198.18.100.1", 80, 401)
                    .health("fall = 1")
                    .set(web)
                    .backend("198.18.0.21", "")
                    .backend("198.18.0.22", ""),
                vip("dns", "2001:db8:100::1", 53, 101).backend("2001:db8::21", ""),
            ],
        )
    ))
}

fn verdict<'a>(each: &'a [crate::VipAnnouncement], vip: &str) -> &'a crate::VipAnnouncement {
    each.iter().find(|a| a.vip == vip).unwrap()
}

#[test]
fn every_qualifying_vip_is_announced_by_family() {
    let cfg = two_vips("", "");
    let c = applied(&cfg);
    let (routes, each) = decide(&cfg, &c.vips, Ok(()), None, &[]);
    assert_eq!(
        routes
            .v4
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["198.18.100.1"]
    );
    assert_eq!(
        routes
            .v6
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["2001:db8:100::1"]
    );
    assert!(each.iter().all(|a| a.wants.is_ok() && a.announced));
}

#[test]
fn off_without_a_routes_file() {
    let cfg = config(&[vip("web", "198.18.100.1", 80, 401).backend("198.18.0.21", "")]);
    let (routes, each) = decide(&cfg, &applied(&cfg).vips, Ok(()), None, &[]);
    assert_eq!(routes, crate::Routes::default());
    assert_eq!(each[0].wants, Err(Withheld::Off));
}

#[test]
fn maintenance_withdraws_everything() {
    let cfg = two_vips("maintenance = true\n", "");
    let (routes, each) = decide(&cfg, &applied(&cfg).vips, Ok(()), None, &[]);
    assert_eq!(routes, crate::Routes::default());
    assert!(
        each.iter()
            .all(|a| a.wants == Err(Withheld::Maintenance) && !a.announced)
    );
}

#[test]
fn a_vip_with_announce_false_is_withheld() {
    let cfg = two_vips("", "announce = false");
    let (routes, each) = decide(&cfg, &applied(&cfg).vips, Ok(()), None, &[]);
    assert!(!routes.v4.iter().any(|a| a.to_string() == "198.18.100.1"));
    assert_eq!(verdict(&each, "web").wants, Err(Withheld::Disabled));
    assert!(verdict(&each, "dns").announced);
}

#[test]
fn a_dataplane_that_does_not_serve_announces_nothing() {
    let cfg = two_vips("", "");
    let (routes, each) = decide(
        &cfg,
        &applied(&cfg).vips,
        Err("eth0 is gone".into()),
        None,
        &[],
    );
    assert_eq!(routes, crate::Routes::default());
    assert_eq!(
        verdict(&each, "web").wants.clone().unwrap_err().to_string(),
        "the dataplane does not serve: eth0 is gone"
    );
}

#[test]
fn too_few_usable_backends_withdraws_and_recovery_announces() {
    let cfg = two_vips("min_backends = 2\n", "");
    let mut c = applied(&cfg);
    let (_, each) = decide(&cfg, &c.vips, Ok(()), None, &[]);
    assert!(verdict(&each, "web").announced);
    // dns has one backend: below 2.
    assert_eq!(
        verdict(&each, "dns").wants,
        Err(Withheld::TooFewBackends {
            usable: 1,
            needed: 2
        })
    );
    let b = bid(&c, "web", "198.18.0.21");
    c.on_probe(&fail("web", b)).unwrap();
    let (routes, each) = decide(&cfg, &c.vips, Ok(()), None, &[]);
    assert!(routes.v4.is_empty(), "{routes:?}");
    assert_eq!(
        verdict(&each, "web").wants,
        Err(Withheld::TooFewBackends {
            usable: 1,
            needed: 2
        })
    );
    c.on_probe(&ok("web", b, 1)).unwrap();
    c.on_probe(&ok("web", b, 1)).unwrap();
    let (routes, _) = decide(&cfg, &c.vips, Ok(()), None, &[]);
    assert_eq!(routes.v4.len(), 1);
}

#[test]
fn per_vip_minimum_overrides_the_node_wide_one() {
    let cfg = two_vips("min_backends = 2\n", "announce_min_backends = 1");
    let c = applied(&cfg);
    let (_, each) = decide(&cfg, &c.vips, Ok(()), None, &[]);
    assert!(verdict(&each, "web").wants.is_ok());
}

#[test]
fn a_serving_backup_pool_counts() {
    let cfg = parse(&format!(
        "{}{ON}",
        config_text(
            "",
            &[vip("web", "198.18.100.1", 80, 401)
                .health("fall = 1")
                .backend("198.18.0.21", "")
                .backend("198.18.0.31", "role = \"backup\"")]
        )
    ));
    let mut c = applied(&cfg);
    let b = bid(&c, "web", "198.18.0.21");
    c.on_probe(&fail("web", b)).unwrap();
    assert!(vip_of(&c, "web").on_backup);
    let (routes, each) = decide(&cfg, &c.vips, Ok(()), None, &[]);
    assert_eq!(routes.v4.len(), 1, "{each:?}");
}

#[test]
fn an_address_shared_by_two_vips_stays_while_either_qualifies() {
    let cfg = parse(&format!(
        "{}{ON}",
        config_text(
            "",
            &[
                vip("web", "198.18.100.1", 80, 401).backend("198.18.0.21", ""),
                vip("tls", "198.18.100.1", 443, 401)
                    .set("announce = false")
                    .backend("198.18.0.21", ""),
            ]
        )
    ));
    let (routes, each) = decide(&cfg, &applied(&cfg).vips, Ok(()), None, &[]);
    assert_eq!(routes.v4.len(), 1);
    let tls = verdict(&each, "tls");
    assert!(
        tls.announced && tls.wants == Err(Withheld::Disabled),
        "{tls:?}"
    );
}

#[test]
fn the_include_file_holds_one_blackhole_route_per_address() {
    let text = render(["198.18.100.1", "198.18.100.2"], 32);
    let routes: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        routes,
        [
            "route 198.18.100.1/32 blackhole;",
            "route 198.18.100.2/32 blackhole;"
        ]
    );
    assert!(
        render(Vec::<String>::new(), 128)
            .lines()
            .all(|l| l.starts_with('#'))
    );
}

#[test]
fn a_node_left_behind_withdraws_everything_and_says_why() {
    let cfg = two_vips("", "");
    let behind = Withheld::Behind {
        running: 7,
        fleet: 8,
    };
    let (routes, each) = decide(&cfg, &applied(&cfg).vips, Ok(()), Some(behind.clone()), &[]);
    assert_eq!(routes, crate::Routes::default());
    assert!(
        each.iter()
            .all(|a| a.wants == Err(behind.clone()) && !a.announced)
    );
    assert_eq!(
        behind.to_string(),
        "the node runs revision 7, its peers run 8 (see `lbctl fleet status`)"
    );
}

#[test]
fn a_vip_settling_after_its_backends_came_back_is_withheld_and_says_for_how_long() {
    let cfg = two_vips("", "");
    let c = applied(&cfg);
    let (routes, each) = decide(&cfg, &c.vips, Ok(()), None, &[("web".into(), 420)]);
    assert_eq!(
        verdict(&each, "web").wants,
        Err(Withheld::Settling { remaining_ms: 420 })
    );
    assert!(!routes.contains("198.18.100.1".parse().unwrap()));
    assert!(
        verdict(&each, "dns").wants.is_ok(),
        "other VIPs are not held"
    );
    // Rise x interval plus a timeout of the slowest backend's checks.
    let web = c.vips.iter().find(|v| v.cfg.name == "web").unwrap();
    let h = &web.backends[0].health;
    assert_eq!(
        crate::settle_ms(web),
        h.rise as u64 * h.interval_ms + h.timeout_ms
    );
}
