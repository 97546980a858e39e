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

use lb_control::{Observer, State, VipState};
use lb_dataplane::Counters;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
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
    pub state: State,
}

pub struct Metrics {
    pub check_seconds: Family<Labels, Histogram>,
    pub transitions: Family<Labels, Counter>,
    pub ring_build_seconds: Histogram,
    pub map_write_seconds: Histogram,
    /// 1 while the program is attached to a configured interface, 0 while its NIC is lost.
    pub interface_attached: Family<Labels, Gauge>,
    /// 1 while a VIP's address is announced through BIRD.
    pub vip_announced: Family<Labels, Gauge>,
    /// Failed writes of the routes files or `birdc configure` runs.
    pub announce_errors: Counter,
    /// What is wrong with the revision store (unreadable revisions, stray files, a change
    /// applied but not recorded): the count of `lbctl status`'s list.
    pub store_problems: Gauge,
    /// Fleet mode: the fleet revision this node runs, and the fleet's as last read.
    pub fleet_running: Gauge,
    pub fleet_head: Gauge,
    /// Fleet mode: 1 while the node reaches etcd; 1 while it withholds its routes as one
    /// left behind.
    pub fleet_connected: Gauge,
    pub fleet_behind: Gauge,
    pub snapshot: Arc<Mutex<Snapshot>>,
    registry: Registry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new(pin_dir: PathBuf, flows_capacity: u32) -> Arc<Metrics> {
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
        let interface_attached = Family::<Labels, Gauge>::default();
        registry.register(
            "interface_attached",
            "1 while the XDP program is attached to a configured interface, 0 while its NIC is gone",
            interface_attached.clone(),
        );
        let vip_announced = Family::<Labels, Gauge>::default();
        registry.register(
            "vip_announced",
            "1 while the VIP's address is announced through BIRD, 0 while withheld",
            vip_announced.clone(),
        );
        let announce_errors = Counter::default();
        registry.register(
            "announce_errors",
            "Failed writes of the routes files or birdc configure runs (retried)",
            announce_errors.clone(),
        );
        let store_problems = Gauge::default();
        registry.register(
            "revision_store_problems",
            "Problems of the revision store that lbctl status lists (0 when it is sound)",
            store_problems.clone(),
        );
        let fleet_gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let fleet_running = fleet_gauge(
            &mut registry,
            "fleet_revision_running",
            "Fleet mode: the fleet revision this node runs",
        );
        let fleet_head = fleet_gauge(
            &mut registry,
            "fleet_revision_head",
            "Fleet mode: the fleet's current revision, as last read from etcd",
        );
        let fleet_connected = fleet_gauge(
            &mut registry,
            "fleet_etcd_connected",
            "Fleet mode: 1 while the node reaches etcd",
        );
        let fleet_behind = fleet_gauge(
            &mut registry,
            "fleet_behind",
            "Fleet mode: 1 while the node withholds its routes as one left behind by its peers",
        );
        let snapshot = Arc::new(Mutex::new(Snapshot {
            vips: Vec::new(),
            flows_capacity,
        }));
        registry.register_collector(Box::new(PinnedCounters {
            pin_dir,
            snapshot: snapshot.clone(),
        }));

        Arc::new(Metrics {
            check_seconds,
            transitions,
            ring_build_seconds,
            map_write_seconds,
            interface_attached,
            vip_announced,
            announce_errors,
            store_problems,
            fleet_running,
            fleet_head,
            fleet_connected,
            fleet_behind,
            snapshot,
            registry,
        })
    }

    /// Whether the program is attached to `iface` (`lb_interface_attached`).
    pub fn set_interface_attached(&self, iface: &str, attached: bool) {
        self.interface_attached
            .get_or_create(&vec![("interface", iface.to_string())])
            .set(attached as i64);
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
struct PinnedCounters {
    pin_dir: PathBuf,
    snapshot: Arc<Mutex<Snapshot>>,
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

impl Collector for PinnedCounters {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.snapshot.lock().map(|s| s.clone()).unwrap_or_default();
        let counters = Counters::open(&self.pin_dir);
        if let Some(reasons) = counters.reasons() {
            let rows: Vec<(Labels, u64)> = reasons
                .into_iter()
                .map(|(r, v)| (vec![("reason", r.label().to_string())], v))
                .collect();
            counter_family(
                &mut enc,
                "dataplane_packets",
                "Packets by what the dataplane did with them",
                &rows,
            )?;
        }
        let (mut p, mut b, mut n) = (Vec::new(), Vec::new(), Vec::new());
        for v in &snap.vips {
            let Some(s) = counters.vip(v.vip_id) else {
                continue;
            };
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
        let (mut p, mut b) = (Vec::new(), Vec::new());
        for v in &snap.vips {
            for be in &v.backends {
                let Some(s) = counters.backend(be.id) else {
                    continue;
                };
                let l = vec![("vip", v.name.clone()), ("backend", be.address.clone())];
                p.push((l.clone(), s.packets));
                b.push((l, s.bytes));
            }
        }
        counter_family(&mut enc, "backend_packets", "Packets sent to a backend", &p)?;
        counter_family(
            &mut enc,
            "backend_bytes",
            "Bytes sent to a backend (as received)",
            &b,
        )?;
        let mut states = Vec::new();
        for v in &snap.vips {
            for be in &v.backends {
                for s in State::ALL {
                    let l = vec![
                        ("vip", v.name.clone()),
                        ("backend", be.address.clone()),
                        ("state", s.as_str().to_string()),
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
        if let Some(n) = counters.flows() {
            gauge_family(
                &mut enc,
                "flows",
                "Entries in the connection table",
                &[(Vec::new(), n as i64)],
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

/// The controller reports into the registry and the snapshot the scrape names things by.
impl Observer for Metrics {
    fn check_passed(&self, vip: &str, backend: std::net::IpAddr, latency: std::time::Duration) {
        let labels = vec![("vip", vip.to_string()), ("backend", backend.to_string())];
        self.check_seconds
            .get_or_create(&labels)
            .observe(latency.as_secs_f64());
    }

    fn transition(&self, vip: &str, backend: std::net::IpAddr, to: State) {
        self.transitions
            .get_or_create(&vec![
                ("vip", vip.to_string()),
                ("backend", backend.to_string()),
                ("state", to.as_str().to_string()),
            ])
            .inc();
    }

    fn ring_written(&self, build: std::time::Duration, write: std::time::Duration) {
        self.ring_build_seconds.observe(build.as_secs_f64());
        self.map_write_seconds.observe(write.as_secs_f64());
    }

    fn state(&self, vips: &[VipState]) {
        let Ok(mut snap) = self.snapshot.lock() else {
            return;
        };
        snap.vips = vips
            .iter()
            .map(|v| VipSnap {
                name: v.cfg.name.clone(),
                vip_id: v.meta.vip_id,
                on_backup: v.on_backup,
                backends: v
                    .backends
                    .iter()
                    .map(|b| BackendSnap {
                        address: b.cfg.address.to_string(),
                        id: b.id,
                        state: b.state(),
                    })
                    .collect(),
            })
            .collect();
    }
}

/// Serve `/metrics` on `addr` until the task is aborted; in fleet mode also `/fleet`, what
/// this node runs, for a peer cut off from etcd.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    fleet: Option<tokio::sync::watch::Receiver<String>>,
) -> anyhow::Result<()> {
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
        let fleet = fleet.as_ref().map(|f| f.borrow().clone());
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
                } else if let (true, Some(view)) = (req.starts_with("GET /fleet "), fleet) {
                    ("200 OK", view)
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
