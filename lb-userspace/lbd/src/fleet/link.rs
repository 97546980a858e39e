//! The node's link to its fleet: a task that keeps a session with etcd, hands every new
//! revision to the control loop in order, publishes the node's status under a lease, and
//! keeps track of what the peers run, from etcd or, cut off from it, from the peers.
//!
//! A session: a lease, a watch on the head, a catch-up on every revision past the one the
//! node runs, then events. Any failure ends the session; the node stays as it is (serving,
//! announcing its revision) and the task connects again every second. A new session
//! catches up on what landed meanwhile, oldest first.

use std::{net::SocketAddr, time::Duration};

use etcd_client::EventType;
use lb_api::FleetNode;
use lb_control::{FleetConfig, PeerNewest};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{mpsc, watch},
};
use tracing::{info, warn};

use super::etcd::{Etcd, FleetError, FleetRevision};
use crate::store::now_ms;

/// How often the peers' status is read (from etcd, or from the peers when cut off).
const PEER_POLL: Duration = Duration::from_secs(1);
/// How long a peer may take to answer `/fleet`.
const PEER_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest `/fleet` answer read from a peer.
const PEER_ANSWER_BYTES: usize = 64 << 10;

/// What the link knows, for the control loop (status, announcements).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkState {
    pub connected: bool,
    /// The last failure, while not connected.
    pub error: Option<String>,
    /// The fleet's current revision, as last read.
    pub head: Option<u64>,
    /// The newest revision a live peer runs, if newer than this node's.
    pub peer_newest: Option<PeerNewest>,
}

/// What `/fleet` answers: enough for a peer cut off from etcd to tell whether it is
/// behind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    pub node: String,
    pub running: u64,
    pub connected: bool,
}

/// The loop's side of the link.
pub struct LinkHandle {
    pub state: watch::Receiver<LinkState>,
    pub etcd: watch::Receiver<Option<Etcd>>,
    /// The revisions to apply, in order (the run loop takes it).
    pub incoming: Option<mpsc::Receiver<FleetRevision>>,
    /// The revision the node runs (the loop sets it after each apply).
    pub running: watch::Sender<u64>,
    /// The node's status to publish (the loop refreshes it).
    pub report: watch::Sender<Option<FleetNode>>,
    /// What `/fleet` answers.
    pub view: watch::Receiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LinkHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Link {
    cfg: FleetConfig,
    node: String,
    keep: usize,
    state: watch::Sender<LinkState>,
    etcd: watch::Sender<Option<Etcd>>,
    incoming: mpsc::Sender<FleetRevision>,
    running: watch::Receiver<u64>,
    report: watch::Receiver<Option<FleetNode>>,
    view: watch::Sender<String>,
    /// The newest revision handed to the loop.
    sent: u64,
    /// Peers' `/fleet` addresses, from the last listing in etcd.
    peers: Vec<SocketAddr>,
}

/// Start the link; `first` is an etcd handle already connected at start, if any.
pub fn spawn(
    cfg: FleetConfig,
    node: String,
    keep: usize,
    running: u64,
    first: Option<Etcd>,
    first_error: Option<String>,
) -> LinkHandle {
    let (state_tx, state) = watch::channel(LinkState {
        error: first_error,
        ..LinkState::default()
    });
    let (etcd_tx, etcd) = watch::channel(first.clone());
    let (in_tx, incoming) = mpsc::channel(64);
    let (running_tx, running_rx) = watch::channel(running);
    let (report_tx, report_rx) = watch::channel(None);
    let (view_tx, view) = watch::channel(String::new());
    let mut link = Link {
        cfg,
        node,
        keep,
        state: state_tx,
        etcd: etcd_tx,
        incoming: in_tx,
        running: running_rx,
        report: report_rx,
        view: view_tx,
        sent: running,
        peers: Vec::new(),
    };
    let task = tokio::spawn(async move { link.run(first).await });
    LinkHandle {
        state,
        etcd,
        incoming: Some(incoming),
        running: running_tx,
        report: report_tx,
        view,
        task,
    }
}

impl Link {
    fn running(&self) -> u64 {
        *self.running.borrow()
    }

    fn set_view(&self, connected: bool) {
        let v = PeerView {
            node: self.node.clone(),
            running: self.running(),
            connected,
        };
        self.view
            .send_replace(serde_json::to_string(&v).expect("a view serializes"));
    }

    async fn run(&mut self, mut first: Option<Etcd>) {
        let mut failures = 0u32;
        // The member to try first; after a session fails, the next one.
        let mut member = super::first_member(&self.cfg);
        // Cut off from etcd, the node asks its peers every second, also while it waits
        // for a member to answer (a member that drops packets takes seconds to give up on).
        let mut poll = tokio::time::interval(PEER_POLL);
        loop {
            let etcd = match first.take() {
                Some(e) => Ok(e),
                None => {
                    let cfg = self.cfg.clone();
                    let connect = Etcd::connect(&cfg, self.keep, self.running(), member);
                    tokio::pin!(connect);
                    loop {
                        tokio::select! {
                            r = &mut connect => break r.map(|(e, i)| {
                                member = i;
                                e
                            }),
                            _ = poll.tick(), if !self.state.borrow().connected => {
                                self.poll_peers_directly().await;
                            }
                        }
                    }
                }
            };
            let ended = match etcd {
                Ok(etcd) => {
                    self.etcd.send_replace(Some(etcd.clone()));
                    let e = self.session(&etcd).await;
                    member += 1;
                    e
                }
                Err(e) => Err(e),
            };
            let Err(e) = ended else { continue };
            failures += 1;
            // Logged when it begins and every minute after, not every second.
            if self.state.borrow().connected || failures % 60 == 1 {
                warn!(error = %e, "the fleet's etcd is out of reach; serving the revision this node runs, retrying every second");
            }
            self.state.send_modify(|s| {
                s.connected = false;
                s.error = Some(e.to_string());
            });
            self.set_view(false);
            let pause = tokio::time::sleep(Duration::from_secs(1));
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    _ = &mut pause => break,
                    _ = poll.tick() => self.poll_peers_directly().await,
                }
            }
        }
    }

    /// One session with etcd, until something fails.
    async fn session(&mut self, etcd: &Etcd) -> Result<(), FleetError> {
        let running = self.running();
        let mut client = etcd.client();
        let unavailable = |e: etcd_client::Error| etcd.unavailable(e, running);
        let lease = client
            .lease_grant(self.cfg.lease_s as i64, None)
            .await
            .map_err(unavailable)?
            .id();
        let (mut keeper, mut renewals) =
            client.lease_keep_alive(lease).await.map_err(unavailable)?;
        // Watch first, then read the head: nothing lands unseen in between.
        let mut watch = client
            .watch(etcd.keys.head(), None)
            .await
            .map_err(unavailable)?;
        let head = etcd.head(running).await?;
        let was = self.state.borrow().connected;
        self.state.send_modify(|s| {
            s.connected = true;
            s.error = None;
            s.head = Some(head);
        });
        if !was {
            info!(fleet = %etcd.keys.describe(), member = etcd.endpoint(), head, running, "connected to the fleet's etcd");
        }
        self.set_view(true);
        self.catch_up(etcd, head).await?;
        self.publish(etcd, lease).await?;
        let ttl = Duration::from_secs(self.cfg.lease_s);
        let mut renew = tokio::time::interval(ttl / 3);
        let mut renewed = tokio::time::Instant::now();
        let mut peers = tokio::time::interval(PEER_POLL);
        loop {
            // Renewals are sent on a tick and their answers read as they come: a member
            // that stops answering ends the session after two thirds of the lease, and never holds
            // up the watch meanwhile.
            tokio::select! {
                msg = watch.message() => {
                    let resp = msg.map_err(unavailable)?
                        .ok_or_else(|| etcd.unavailable("the watch ended", self.running()))?;
                    if resp.canceled() {
                        return Err(etcd.unavailable(format!("the watch was cancelled: {}", resp.cancel_reason()), self.running()));
                    }
                    for ev in resp.events() {
                        if ev.event_type() == EventType::Put
                            && let Some(kv) = ev.kv()
                            && let Some(id) = std::str::from_utf8(kv.value()).ok().and_then(|v| v.parse().ok())
                        {
                            self.state.send_modify(|s| s.head = Some(id));
                            self.catch_up(etcd, id).await?;
                        }
                    }
                }
                r = renewals.message() => match r.map_err(unavailable)? {
                    Some(r) if r.ttl() > 0 => renewed = tokio::time::Instant::now(),
                    _ => return Err(etcd.unavailable("the node's lease expired", self.running())),
                },
                _ = renew.tick() => {
                    if renewed.elapsed() > ttl * 2 / 3 {
                        return Err(etcd.unavailable(
                            format!("{} did not renew the node's lease for {:.1} s", etcd.endpoint(), renewed.elapsed().as_secs_f64()),
                            self.running(),
                        ));
                    }
                    keeper.keep_alive().await.map_err(unavailable)?;
                }
                Ok(()) = self.report.changed() => {
                    self.set_view(true);
                    self.publish(etcd, lease).await?;
                }
                _ = peers.tick() => self.read_peers(etcd).await?,
            }
        }
    }

    /// Hand every revision after the newest sent up to `head` to the loop, oldest first.
    /// Revisions already removed (past `revisions_kept`) are passed over.
    async fn catch_up(&mut self, etcd: &Etcd, head: u64) -> Result<(), FleetError> {
        let from = self.sent.max(self.running()) + 1;
        let from = from.max((head + 1).saturating_sub(self.keep as u64));
        for id in from..=head {
            match etcd.get(id, self.running()).await {
                // An import's history: recorded, never run.
                Ok(rev) if rev.history_only => self.sent = id,
                Ok(rev) => {
                    if self.incoming.send(rev).await.is_err() {
                        return Ok(());
                    }
                    self.sent = id;
                }
                Err(FleetError::NoRevision(_)) if id < head => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn publish(&self, etcd: &Etcd, lease: i64) -> Result<(), FleetError> {
        let report = self.report.borrow().clone();
        match report {
            Some(r) => etcd.publish(&r, lease, self.running()).await,
            None => Ok(()),
        }
    }

    /// Read the peers' status in etcd: the newest revision a live peer runs.
    async fn read_peers(&mut self, etcd: &Etcd) -> Result<(), FleetError> {
        let nodes = etcd.nodes(self.running()).await?;
        let others: Vec<&FleetNode> = nodes.iter().filter(|n| n.node != self.node).collect();
        self.peers = others.iter().filter_map(|n| n.advertise).collect();
        let newest = others.iter().map(|n| n.running).max();
        self.note_newest(newest);
        Ok(())
    }

    /// Cut off from etcd: ask each peer known from the last listing what it runs; only a
    /// peer that reaches etcd itself counts.
    async fn poll_peers_directly(&mut self) {
        let mut asks = tokio::task::JoinSet::new();
        for addr in self.peers.clone() {
            asks.spawn(ask_peer(addr));
        }
        let mut newest = None;
        while let Some(answer) = asks.join_next().await {
            if let Ok(Some(v)) = answer
                && v.connected
                && v.node != self.node
            {
                newest = newest.max(Some(v.running));
            }
        }
        self.note_newest(newest);
    }

    fn note_newest(&mut self, newest: Option<u64>) {
        let running = self.running();
        let now = now_ms();
        self.state.send_if_modified(|s| {
            let next = match (newest, s.peer_newest) {
                (Some(n), _) if n <= running => None,
                (Some(n), Some(p)) if p.revision == n => Some(p),
                (Some(n), _) => Some(PeerNewest {
                    revision: n,
                    since_ms: now,
                }),
                (None, _) => None,
            };
            let changed = next != s.peer_newest;
            s.peer_newest = next;
            changed
        });
    }
}

/// `GET /fleet` from a peer, within `PEER_TIMEOUT`; `None` on any failure.
async fn ask_peer(addr: SocketAddr) -> Option<PeerView> {
    let ask = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /fleet HTTP/1.0\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.take(PEER_ANSWER_BYTES as u64)
            .read_to_end(&mut buf)
            .await
            .ok()?;
        let text = String::from_utf8(buf).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then_some(())?;
        serde_json::from_str(body).ok()
    };
    tokio::time::timeout(PEER_TIMEOUT, ask).await.ok().flatten()
}
