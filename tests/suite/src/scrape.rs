//! Scraping the daemon's `/metrics` from inside its namespace, parsed with a Prometheus
//! text parser.

use std::io::{Read, Write};

use prometheus_parse::{Scrape, Value};

use crate::netns::Netns;

pub fn scrape(ns: &str, addr: &str) -> Scrape {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let ns = Netns {
        name: ns.to_string(),
    };
    let body = ns.enter(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect to /metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lb\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    std::mem::forget(ns); // the topology owns the namespace
    let (head, body) = body.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text format")
}

/// The value of `metric` with all of `labels`, summed over the samples that match.
pub fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => 0.0,
        })
        .sum()
}
