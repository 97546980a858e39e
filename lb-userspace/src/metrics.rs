//! Prometheus metrics: `/metrics` in the text format, served by the daemon.
//!
//! Dataplane counters are read from the pinned maps at scrape time (summed over CPUs), so
//! they are exact and survive daemon restarts like the maps do. Health, latency and
//! control-plane timings are recorded by the controller.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use lb_common::{
    BackendStats, FlowEntry, FlowKey, MAP_BACKEND_STATS, MAP_FLOWS, MAP_STATS, MAP_VIP_STATS,
    Reason, VipStats,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tracing::{info, warn};

pub type Labels = Vec<(&'static str, String)>;

/// What the scrape needs to name things: VIP and backend ids, states.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub vips: Vec<VipSnap>,
    pub flows_capacity: u32,
}

#[derive(Debug, Clone)]
pub struct VipSnap {
    pub name: String,
    pub vip_id: u32,
    /// Serving from its backup pool.
    pub on_backup: bool,
    pub backends: Vec<BackendSnap>,
}

#[derive(Debug, Clone)]
pub struct BackendSnap {
    pub address: String,
    pub id: u32,
    pub state: &'static str,
}

pub const STATES: [&str; 5] = ["up", "down", "degraded", "draining", "disabled"];

pub struct Metrics {
    pub check_seconds: Family<Labels, Histogram>,
    pub transitions: Family<Labels, Counter>,
    pub ring_build_seconds: Histogram,
    pub map_write_seconds: Histogram,
    pub snapshot: Arc<Mutex<Snapshot>>,
    registry: Registry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new(pin_dir: PathBuf) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("lb");
        let check_seconds = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        registry.register_with_unit(
            "health_check_duration",
            "Duration of successful health checks",
            Unit::Seconds,
            check_seconds.clone(),
        );
        let transitions = Family::<Labels, Counter>::default();
        registry.register(
            "backend_transitions",
            "Backend state changes, by the state entered",
            transitions.clone(),
        );
        let ring_build_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register_with_unit(
            "ring_build_duration",
            "Time to compute a VIP's ring",
            Unit::Seconds,
            ring_build_seconds.clone(),
        );
        let map_write_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register_with_unit(
            "map_write_duration",
            "Time to write a ring change into the dataplane",
            Unit::Seconds,
            map_write_seconds.clone(),
        );
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        registry.register_collector(Box::new(Dataplane {
            pin_dir,
            snapshot: snapshot.clone(),
        }));
        Arc::new(Metrics {
            check_seconds,
            transitions,
            ring_build_seconds,
            map_write_seconds,
            snapshot,
            registry,
        })
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Counters and gauges read from the pinned maps at scrape time.
#[derive(Debug)]
struct Dataplane {
    pin_dir: PathBuf,
    snapshot: Arc<Mutex<Snapshot>>,
}

fn open(pin_dir: &std::path::Path, name: &str) -> Option<MapData> {
    MapData::from_pin(pin_dir.join(name)).ok()
}

fn counter_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Dataplane {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.snapshot.lock().map(|s| s.clone()).unwrap_or_default();
        if let Some(stats) = open(&self.pin_dir, MAP_STATS)
            .and_then(|d| PerCpuArray::<_, u64>::try_from(Map::PerCpuArray(d)).ok())
        {
            let rows: Vec<(Labels, u64)> = Reason::ALL
                .iter()
                .map(|r| {
                    let v = stats
                        .get(&(*r as u32), 0)
                        .map(|v| v.iter().sum())
                        .unwrap_or(0);
                    (vec![("reason", r.label().to_string())], v)
                })
                .collect();
            counter_family(
                &mut enc,
                "dataplane_packets",
                "Packets by what the dataplane did with them",
                &rows,
            )?;
        }
        if let Some(stats) = open(&self.pin_dir, MAP_VIP_STATS)
            .and_then(|d| PerCpuArray::<_, VipStats>::try_from(Map::PerCpuArray(d)).ok())
        {
            let (mut p, mut b, mut n) = (Vec::new(), Vec::new(), Vec::new());
            for v in &snap.vips {
                let s = stats.get(&v.vip_id, 0).map(|s| {
                    s.iter().fold(VipStats::default(), |a, x| VipStats {
                        packets: a.packets + x.packets,
                        bytes: a.bytes + x.bytes,
                        new_flows: a.new_flows + x.new_flows,
                    })
                });
                let s = s.unwrap_or_default();
                let l = vec![("vip", v.name.clone())];
                p.push((l.clone(), s.packets));
                b.push((l.clone(), s.bytes));
                n.push((l, s.new_flows));
            }
            counter_family(&mut enc, "vip_packets", "Packets forwarded for a VIP", &p)?;
            counter_family(
                &mut enc,
                "vip_bytes",
                "Bytes forwarded for a VIP (as received)",
                &b,
            )?;
            counter_family(
                &mut enc,
                "vip_new_flows",
                "New flows scheduled for a VIP",
                &n,
            )?;
        }
        if let Some(stats) = open(&self.pin_dir, MAP_BACKEND_STATS)
            .and_then(|d| PerCpuArray::<_, BackendStats>::try_from(Map::PerCpuArray(d)).ok())
        {
            let (mut p, mut b) = (Vec::new(), Vec::new());
            for v in &snap.vips {
                for be in &v.backends {
                    let s = stats
                        .get(&be.id, 0)
                        .map(|s| {
                            s.iter()
                                .fold((0, 0), |a, x| (a.0 + x.packets, a.1 + x.bytes))
                        })
                        .unwrap_or((0, 0));
                    let l = vec![("vip", v.name.clone()), ("backend", be.address.clone())];
                    p.push((l.clone(), s.0));
                    b.push((l, s.1));
                }
            }
            counter_family(&mut enc, "backend_packets", "Packets sent to a backend", &p)?;
            counter_family(
                &mut enc,
                "backend_bytes",
                "Bytes sent to a backend (as received)",
                &b,
            )?;
        }
        let mut states = Vec::new();
        for v in &snap.vips {
            for be in &v.backends {
                for s in STATES {
                    let l = vec![
                        ("vip", v.name.clone()),
                        ("backend", be.address.clone()),
                        ("state", s.to_string()),
                    ];
                    states.push((l, (be.state == s) as i64));
                }
            }
        }
        gauge_family(
            &mut enc,
            "backend_state",
            "1 for the state a backend is in",
            &states,
        )?;
        let backup: Vec<(Labels, i64)> = snap
            .vips
            .iter()
            .map(|v| (vec![("vip", v.name.clone())], v.on_backup as i64))
            .collect();
        gauge_family(
            &mut enc,
            "vip_on_backup",
            "1 while a VIP is served by its backup pool",
            &backup,
        )?;
        if let Some(flows) = open(&self.pin_dir, MAP_FLOWS)
            .and_then(|d| BpfHashMap::<_, FlowKey, FlowEntry>::try_from(Map::LruHashMap(d)).ok())
        {
            let n = flows.keys().filter(|k| k.is_ok()).count() as i64;
            gauge_family(
                &mut enc,
                "flows",
                "Entries in the connection table",
                &[(Vec::new(), n)],
            )?;
            gauge_family(
                &mut enc,
                "flows_capacity",
                "Size of the connection table",
                &[(Vec::new(), snap.flows_capacity as i64)],
            )?;
        }
        Ok(())
    }
}

/// Serve `/metrics` on `addr` until the task is aborted.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the metrics listener {addr}: {e}"))?;
    info!(%addr, "serving /metrics");
    loop {
        let (mut s, _) = match l.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) =
                if req.starts_with("GET /metrics ") || req.starts_with("GET /metrics?") {
                    // Reading maps is blocking syscalls: keep it off the async workers.
                    let m = metrics.clone();
                    (
                        "200 OK",
                        tokio::task::spawn_blocking(move || m.encode())
                            .await
                            .unwrap_or_default(),
                    )
                } else {
                    ("404 Not Found", "only /metrics here\n".to_string())
                };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        });
    }
}
