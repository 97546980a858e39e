//! The daemon's TOML configuration: parsing, defaults, and validation with the location
//! of every mistake. Nothing is applied from a file that does not validate whole.

use std::{
    collections::HashSet,
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use thiserror::Error;
use toml::{
    Spanned,
    de::{DeTable, DeValue},
};

use crate::ring::is_prime;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `FILE:LINE:COLUMN: message`, then the line with a caret under the offending key or
    /// value, as rustc shows its errors.
    #[error("{path}:{line}:{column}: {message}\n{excerpt}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
        /// The source line and the caret line, behind a gutter (no trailing newline).
        excerpt: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum XdpModeCfg {
    /// Driver mode; the default, and what line rate needs.
    #[default]
    Native,
    /// The kernel's generic path: only when asked for.
    Generic,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Interfaces the balancer attaches to.
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub xdp_mode: XdpModeCfg,
    /// Fall back to generic mode (logged) when native attach fails.
    #[serde(default)]
    pub generic_fallback: bool,
    /// bpffs directory holding this instance's maps and links.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Where `/metrics` (Prometheus text format) is served. Loopback by default.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: std::net::SocketAddr,
    /// The control API's Unix socket (owner-only), for `lbctl`.
    #[serde(default = "default_api_socket")]
    pub api_socket: PathBuf,
    /// Where configuration revisions are kept (history, diff, rollback).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How many revisions to keep.
    #[serde(default = "default_revisions_kept")]
    pub revisions_kept: usize,
    /// Fleet mode: the VIPs and their revisions live in etcd, shared by every node of the
    /// fleet; this file keeps only what is the node's own. Absent: file mode.
    #[serde(default)]
    pub fleet: Option<FleetConfig>,
}

/// `[daemon.fleet]`: where the fleet's configuration lives and how to reach it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// The fleet's name: every node with the same name (and prefix) runs the same VIPs.
    pub name: String,
    /// This node's name in the fleet; the host name when absent.
    pub node: Option<String>,
    /// etcd's client URLs (`http://` or, with TLS, `https://`).
    pub endpoints: Vec<String>,
    /// The key prefix under which fleets are kept.
    #[serde(default = "default_fleet_prefix")]
    pub prefix: String,
    /// How long a node may take to apply a new revision before, if a peer already runs
    /// it, the node withdraws its routes as one left behind.
    #[serde(default = "default_fleet_grace_ms")]
    pub grace_ms: u64,
    /// How long the node's published status outlives the node (an etcd lease, in s).
    #[serde(default = "default_fleet_lease_s")]
    pub lease_s: u64,
    /// TLS: the CA that signs etcd's certificates (PEM).
    pub ca: Option<PathBuf>,
    /// TLS client authentication: certificate and key (PEM), both or neither.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// etcd authentication: the user, with its password read from `password_file` (never
    /// written in this file, never logged).
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Where peers reach this node's `/fleet` (its metrics listener by default): a node
    /// cut off from etcd asks its peers whether it was left behind.
    pub advertise: Option<std::net::SocketAddr>,
}

fn default_fleet_prefix() -> String {
    "/lbd".to_string()
}
fn default_fleet_grace_ms() -> u64 {
    3000
}
fn default_fleet_lease_s() -> u64 {
    10
}

fn default_api_socket() -> PathBuf {
    PathBuf::from("/run/lbd.sock")
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/lbd")
}
fn default_revisions_kept() -> usize {
    100
}

fn default_metrics_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9469))
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/lb")
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    /// Next hop when the kernel's FIB has no answer (e.g. "02:00:00:00:00:fe").
    pub gateway_mac: Option<String>,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Connection table size (entries).
    #[serde(default = "default_flows")]
    pub flows: u32,
    /// Slots of all VIPs' rings together.
    #[serde(default = "default_ring_capacity")]
    pub ring_capacity: u32,
    /// IP-in-IP outer source prefix for IPv4 (host bits come from the flow hash).
    #[serde(default = "default_src4")]
    pub encap_source_v4: String,
    #[serde(default = "default_src6")]
    pub encap_source_v6: String,
    /// Use bpf_fib_lookup for next hops (off: always the gateway MAC).
    #[serde(default = "yes")]
    pub fib: bool,
    /// Connection-table entries each CPU may create per second before new flows are
    /// forwarded without being remembered (a flood's bound; docs/dataplane.md, "SYN and
    /// ACK floods"). 0: the dataplane's default.
    #[serde(default)]
    pub new_flow_rate: u64,
    /// The burst of `new_flow_rate` (the bucket's size). 0: the default.
    #[serde(default)]
    pub new_flow_burst: u64,
    /// Bare SYNs each CPU looks up in the connection table per second; above it a SYN is
    /// placed without reading the table. 0: the default.
    #[serde(default)]
    pub syn_lookup_rate: u64,
    /// The burst of `syn_lookup_rate`. 0: the default.
    #[serde(default)]
    pub syn_lookup_burst: u64,
}

impl DataplaneConfig {
    /// `LB_NEW_RATE`'s values, in its index order (lb_common::NEW_RATE_PER_SEC, ...).
    pub fn new_rate(&self) -> [u64; 4] {
        let mut r = [0; 4];
        r[lb_common::NEW_RATE_PER_SEC] = self.new_flow_rate;
        r[lb_common::NEW_RATE_BURST] = self.new_flow_burst;
        r[lb_common::SYN_LOOKUP_PER_SEC] = self.syn_lookup_rate;
        r[lb_common::SYN_LOOKUP_BURST] = self.syn_lookup_burst;
        r
    }
}

fn default_mtu() -> u16 {
    1500
}
fn default_flows() -> u32 {
    lb_common::DEFAULT_FLOWS
}
fn default_ring_capacity() -> u32 {
    lb_common::DEFAULT_RING_CAPACITY
}
fn default_src4() -> String {
    "172.16.0.0/16".into()
}
fn default_src6() -> String {
    "fd00:1b::/96".into()
}
fn yes() -> bool {
    true
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            gateway_mac: None,
            mtu: default_mtu(),
            flows: default_flows(),
            ring_capacity: default_ring_capacity(),
            encap_source_v4: default_src4(),
            encap_source_v6: default_src6(),
            fib: true,
            new_flow_rate: 0,
            new_flow_burst: 0,
            syn_lookup_rate: 0,
            syn_lookup_burst: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl std::fmt::Display for Protocol {
    /// The configuration file's word.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerCfg {
    #[default]
    Maglev,
    RoundRobin,
    Random,
    LeastConn,
    SourceHash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ForwardCfg {
    #[default]
    Ipip,
    L2dsr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NoBackend {
    #[default]
    Drop,
    Pass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Primary,
    Backup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    #[default]
    Tcp,
    Http,
    /// HTTP over TLS (the certificate is not verified).
    Https,
    Udp,
    /// No checks: backends are always up (unless disabled).
    None,
}

/// Health check settings; a VIP's are the defaults for its backends.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    pub kind: Option<CheckKind>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    /// Port to probe (default: the VIP's port).
    pub port: Option<u16>,
    /// HTTP: path, expected status, Host header.
    pub path: Option<String>,
    pub expect_status: Option<u16>,
    pub host: Option<String>,
    /// UDP: what to send, and what the answer must start with (any answer if unset).
    pub send: Option<String>,
    pub expect: Option<String>,
    /// A backend slower than this (moving average) is degraded: no new flows.
    pub max_latency_ms: Option<u64>,
    /// A backend failing more than this share of its recent probes is degraded.
    pub max_error_rate: Option<f64>,
    /// HAProxy agent-check: a TCP port on the backend that answers with its own state
    /// ("up", "down", "drain", "maint", a weight like "75%").
    pub agent_port: Option<u16>,
    /// After a backend comes back up, its weight ramps from near zero to full over this
    /// many milliseconds (slow start), so a cold backend is not flooded.
    pub slow_start_ms: Option<u64>,
}

/// Health settings with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub kind: CheckKind,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
    pub port: u16,
    pub path: String,
    pub expect_status: u16,
    pub host: Option<String>,
    pub send: String,
    pub expect: Option<String>,
    pub max_latency_ms: Option<u64>,
    pub max_error_rate: Option<f64>,
    pub agent_port: Option<u16>,
    pub slow_start_ms: Option<u64>,
}

impl HealthConfig {
    /// `self` over `base` (a backend's override over its VIP's settings).
    pub fn over(&self, base: &HealthConfig) -> HealthConfig {
        HealthConfig {
            kind: self.kind.or(base.kind),
            interval_ms: self.interval_ms.or(base.interval_ms),
            timeout_ms: self.timeout_ms.or(base.timeout_ms),
            rise: self.rise.or(base.rise),
            fall: self.fall.or(base.fall),
            port: self.port.or(base.port),
            path: self.path.clone().or_else(|| base.path.clone()),
            expect_status: self.expect_status.or(base.expect_status),
            host: self.host.clone().or_else(|| base.host.clone()),
            send: self.send.clone().or_else(|| base.send.clone()),
            expect: self.expect.clone().or_else(|| base.expect.clone()),
            max_latency_ms: self.max_latency_ms.or(base.max_latency_ms),
            max_error_rate: self.max_error_rate.or(base.max_error_rate),
            agent_port: self.agent_port.or(base.agent_port),
            slow_start_ms: self.slow_start_ms.or(base.slow_start_ms),
        }
    }

    pub fn resolve(&self, vip_port: u16) -> Health {
        Health {
            kind: self.kind.unwrap_or_default(),
            interval_ms: self.interval_ms.unwrap_or(1000),
            timeout_ms: self.timeout_ms.unwrap_or(500),
            rise: self.rise.unwrap_or(2),
            fall: self.fall.unwrap_or(3),
            port: self
                .port
                .unwrap_or(if vip_port == 0 { 80 } else { vip_port }),
            path: self.path.clone().unwrap_or_else(|| "/".into()),
            expect_status: self.expect_status.unwrap_or(200),
            host: self.host.clone(),
            send: self.send.clone().unwrap_or_else(|| "ping".into()),
            expect: self.expect.clone(),
            max_latency_ms: self.max_latency_ms,
            max_error_rate: self.max_error_rate,
            agent_port: self.agent_port,
            slow_start_ms: self.slow_start_ms,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub address: IpAddr,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Next-hop MAC for L2 DSR.
    pub mac: Option<String>,
    #[serde(default)]
    pub role: Role,
    /// Start drained (no new flows) or disabled (down for the dataplane).
    #[serde(default)]
    pub drain: bool,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub health: HealthConfig,
}

fn default_weight() -> u32 {
    100
}

pub const MAX_WEIGHT: u32 = 65_535;

/// The connection table's size: at least one entry per CPU's LRU list, and what the
/// kernel can allocate as one map.
pub const MIN_FLOWS: u32 = 1024;
pub const MAX_FLOWS: u32 = 1 << 27;
/// LB_RINGS slots: 4 bytes each, one array.
pub const MAX_RING_CAPACITY: u32 = 1 << 28;

/// VIPs one node can hold: ids 1..MAX_VIPS (0 marks "no VIP" in the maps).
pub const MAX_VIP_COUNT: u32 = lb_common::MAX_VIPS - 1;
/// Backends over all VIPs: ids 1..MAX_BACKENDS (0 marks "no backend").
pub const MAX_BACKEND_COUNT: u32 = lb_common::MAX_BACKENDS - 1;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    pub name: String,
    pub address: IpAddr,
    /// 0: every port.
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub scheduler: SchedulerCfg,
    #[serde(default)]
    pub forward: ForwardCfg,
    #[serde(default = "default_ring_size")]
    pub ring_size: u32,
    #[serde(default)]
    pub no_backend: NoBackend,
    /// Backups serve while fewer primaries than this are usable.
    #[serde(default = "one")]
    pub min_primaries: u32,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default, rename = "backend")]
    pub backends: Vec<Spanned<BackendConfig>>,
    /// Announce this VIP's address (when `[announce]` is on and it qualifies).
    #[serde(default = "yes")]
    pub announce: bool,
    /// Overrides `[announce] min_backends` for this VIP.
    #[serde(default)]
    pub announce_min_backends: Option<u32>,
    /// Passive failure detection: what the VIP's traffic shows about its backends.
    #[serde(default)]
    pub passive: PassiveConfig,
}

/// `[vip.passive]`: a backend whose SYNs stop being followed by the clients' handshakes
/// while its siblings' are is marked down at once (the active checks' rise brings it back).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PassiveConfig {
    #[serde(default)]
    pub enabled: bool,
    /// The SYNs judged: those of this long a window.
    #[serde(default = "default_passive_window_ms")]
    pub window_ms: u64,
    /// How long a SYN is given to be answered before it counts against its backend: more
    /// than the clients' round trip (p99).
    #[serde(default = "default_passive_handshake_ms")]
    pub handshake_ms: u64,
    /// Fewer SYNs than this in the window (for the backend, and for its siblings together)
    /// is too few to judge.
    #[serde(default = "default_passive_min_syns")]
    pub min_syns: u64,
    /// Down when the backend's share of answered SYNs falls below this fraction of its
    /// siblings'.
    #[serde(default = "default_passive_ratio")]
    pub ratio: f64,
}

impl Default for PassiveConfig {
    fn default() -> Self {
        PassiveConfig {
            enabled: false,
            window_ms: default_passive_window_ms(),
            handshake_ms: default_passive_handshake_ms(),
            min_syns: default_passive_min_syns(),
            ratio: default_passive_ratio(),
        }
    }
}

fn default_passive_window_ms() -> u64 {
    60
}
fn default_passive_handshake_ms() -> u64 {
    30
}
fn default_passive_min_syns() -> u64 {
    5
}
fn default_passive_ratio() -> f64 {
    0.25
}

fn default_ring_size() -> u32 {
    lb_common::DEFAULT_RING_SIZE
}
fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    #[serde(default, rename = "vip")]
    pub vips: Vec<Spanned<VipConfig>>,
    #[serde(default)]
    pub announce: AnnounceConfig,
}

/// Route announcements through a BIRD on this node: lbd owns only the files of static
/// routes BIRD includes; the operator owns bird.conf (peers, ASN, BFD, timers). Off while
/// neither file is set. Changes with a reload, like VIPs.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AnnounceConfig {
    /// The include file of IPv4 routes (`route VIP/32 blackhole;` lines) for a static
    /// protocol with `ipv4;`.
    pub routes_v4: Option<PathBuf>,
    /// The same for IPv6 (`/128`), for a static protocol with `ipv6;`.
    pub routes_v6: Option<PathBuf>,
    /// BIRD's control socket, for `birdc configure` after a file changed.
    #[serde(default = "default_bird_socket")]
    pub bird_socket: PathBuf,
    /// The birdc program.
    #[serde(default = "default_birdc")]
    pub birdc: PathBuf,
    /// A VIP is announced only with at least this many usable backends (a serving backup
    /// pool counts). Per VIP: `announce_min_backends`.
    #[serde(default = "one")]
    pub min_backends: u32,
    /// Node maintenance (`lbctl node drain`): every route withdrawn; the dataplane keeps
    /// forwarding what still arrives.
    #[serde(default)]
    pub maintenance: bool,
}

impl AnnounceConfig {
    pub fn enabled(&self) -> bool {
        self.routes_v4.is_some() || self.routes_v6.is_some()
    }
}

fn default_bird_socket() -> PathBuf {
    PathBuf::from("/run/bird/bird.ctl")
}

fn default_birdc() -> PathBuf {
    PathBuf::from("birdc")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// "a.b.c.d/len" or "x::/len": (address, prefix length).
pub fn parse_prefix(s: &str) -> Option<(IpAddr, u8)> {
    let (a, l) = s.split_once('/')?;
    let addr: IpAddr = a.parse().ok()?;
    let len: u8 = l.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

/// `at!["vip", i, "backend", j, "weight"]`: a path into the document, for [`Mistake`].
macro_rules! at {
    ($($seg:expr),* $(,)?) => {
        vec![$(Seg::from($seg)),*]
    };
}

/// Source lines longer than this (in characters) are shown in part, around the column.
const EXCERPT_WIDTH: usize = 100;

impl ConfigError {
    /// An error at `span` of `src`, located and shown as rustc shows its own.
    fn invalid(path: &Path, src: &str, span: Range<usize>, message: &str) -> ConfigError {
        let (line, column, excerpt) = excerpt(src, span);
        ConfigError::Invalid {
            path: path.to_path_buf(),
            line,
            column,
            message: message.to_string(),
            excerpt,
        }
    }
}

/// The largest char boundary of `s` at or before `at`.
fn char_floor(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The line and column (1-based, in characters) where `span` starts, and that line with
/// carets under the span (to the end of the line at most), behind a gutter:
///
/// ```text
///    |
/// 12 | weight = 70000
///    |          ^^^^^
/// ```
///
/// Control characters are shown as U+FFFD, so the excerpt cannot forge log or terminal
/// lines, and a long line is cut around the column.
fn excerpt(src: &str, span: Range<usize>) -> (usize, usize, String) {
    let start = char_floor(src, span.start);
    let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = src[start..].find('\n').map_or(src.len(), |i| start + i);
    let text = src[line_start..line_end].trim_end_matches('\r');
    let end = char_floor(
        src,
        span.end.clamp(start, (line_start + text.len()).max(start)),
    );
    let line = src[..start].matches('\n').count() + 1;
    let before = src[line_start..start].chars().count();
    let column = before + 1;
    let chars: Vec<char> = text.chars().collect();
    let width = src[start..end].chars().count().max(1);
    // The part shown: all of a short line; of a long one, a window from a little before
    // the column.
    let from = match chars.len() > EXCERPT_WIDTH {
        true => before.saturating_sub(EXCERPT_WIDTH / 4),
        false => 0,
    };
    let to = chars.len().min(from + EXCERPT_WIDTH);
    let cut = |yes: bool| if yes { "..." } else { "" };
    let shown: String = chars[from..to]
        .iter()
        .map(|&c| match c.is_control() && c != '\t' {
            true => '\u{FFFD}',
            false => c,
        })
        .collect();
    // Tabs stay tabs under the line, so the carets line up however they are expanded.
    let pad: String = cut(from > 0).replace('.', " ")
        + &chars[from..before.min(chars.len()).max(from)]
            .iter()
            .map(|&c| if c == '\t' { '\t' } else { ' ' })
            .collect::<String>();
    let carets = "^".repeat(width.min((to + 1).saturating_sub(before)).max(1));
    let gutter = " ".repeat(line.to_string().len());
    let excerpt = format!(
        "{gutter} |\n{line} | {}{shown}{}\n{gutter} | {pad}{carets}",
        cut(from > 0),
        cut(to < chars.len()),
    );
    (line, column, excerpt)
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&src, path)
    }

    /// Parse and validate; errors carry the file, line and column of the offending key or
    /// value, and show that line with a caret under it.
    pub fn parse(src: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(src)
            .map_err(|e| ConfigError::invalid(path, src, e.span().unwrap_or(0..0), e.message()))?;
        cfg.validate().map_err(|m| {
            // The same parser as `from_str`'s, so a text that got this far parses again.
            let span = toml::de::DeTable::parse(src)
                .map(|doc| m.span(&doc))
                .unwrap_or(0..0);
            ConfigError::invalid(path, src, span, &m.message)
        })?;
        Ok(cfg)
    }

    /// Semantic checks: what is wrong and how to fix it, and the key it is about.
    fn validate(&self) -> Result<(), Mistake> {
        if self.daemon.interfaces.is_empty() {
            return Err(Mistake::new(
                at!["daemon", "interfaces"],
                "[daemon] interfaces is empty: name the NIC(s) to attach to",
            ));
        }
        let mut ifaces = HashSet::new();
        for (k, i) in self.daemon.interfaces.iter().enumerate() {
            if bad_interface(i) || !ifaces.insert(i) {
                return Err(Mistake::new(
                    at!["daemon", "interfaces", k],
                    format!(
                        "[daemon] interfaces: {i:?} is empty, too long, path-like or listed twice: name each NIC once"
                    ),
                ));
            }
        }
        if let Some(f) = &self.daemon.fleet {
            validate_fleet(f)?;
        }
        if self.daemon.api_socket.is_file() {
            return Err(Mistake::new(
                at!["daemon", "api_socket"],
                format!(
                    "[daemon] api_socket {} is an existing regular file, which lbd would replace: choose a socket path",
                    self.daemon.api_socket.display()
                ),
            ));
        }
        let d = &self.dataplane;
        if !(MIN_FLOWS..=MAX_FLOWS).contains(&d.flows) {
            return Err(Mistake::new(
                at!["dataplane", "flows"],
                format!(
                    "[dataplane] flows {} is out of range {MIN_FLOWS}..={MAX_FLOWS} (the connection table's entries)",
                    d.flows
                ),
            ));
        }
        if d.ring_capacity == 0 || d.ring_capacity > MAX_RING_CAPACITY {
            return Err(Mistake::new(
                at!["dataplane", "ring_capacity"],
                format!(
                    "[dataplane] ring_capacity {} is out of range 1..={MAX_RING_CAPACITY} (LB_RINGS slots for all VIPs together)",
                    d.ring_capacity
                ),
            ));
        }
        if let Some(mac) = &d.gateway_mac
            && parse_mac(mac).is_none()
        {
            return Err(Mistake::new(
                at!["dataplane", "gateway_mac"],
                format!("[dataplane] gateway_mac {mac:?} is not a MAC like 02:00:00:00:00:01"),
            ));
        }
        if d.mtu < 576 {
            return Err(Mistake::new(
                at!["dataplane", "mtu"],
                format!("[dataplane] mtu {} is below 576", d.mtu),
            ));
        }
        match parse_prefix(&d.encap_source_v4) {
            Some((IpAddr::V4(_), len)) if len >= 16 => {}
            _ => {
                return Err(Mistake::new(
                    at!["dataplane", "encap_source_v4"],
                    format!(
                        "[dataplane] encap_source_v4 {:?} must be an IPv4 prefix of /16 or longer",
                        d.encap_source_v4
                    ),
                ));
            }
        }
        match parse_prefix(&d.encap_source_v6) {
            Some((IpAddr::V6(_), len)) if len >= 96 => {}
            _ => {
                return Err(Mistake::new(
                    at!["dataplane", "encap_source_v6"],
                    format!(
                        "[dataplane] encap_source_v6 {:?} must be an IPv6 prefix of /96 or longer",
                        d.encap_source_v6
                    ),
                ));
            }
        }
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        let mut ring_total: u64 = 0;
        for (i, v) in self.vips.iter().enumerate() {
            let v = v.get_ref();
            validate_passive(i, &v.passive)?;
            if v.name.is_empty() || v.name.chars().any(|c| c.is_control()) {
                return Err(Mistake::new(
                    at!["vip", i, "name"],
                    format!(
                        "VIP name {:?} is empty or holds a control character (a newline would forge log lines): use letters, digits, '-', '_', '.'",
                        v.name
                    ),
                ));
            }
            if let Some(what) = unusable(v.address) {
                return Err(Mistake::new(
                    at!["vip", i, "address"],
                    format!(
                        "VIP {:?}: address {} is {what}: clients cannot reach it",
                        v.name, v.address
                    ),
                ));
            }
            if !names.insert(v.name.clone()) {
                return Err(Mistake::new(
                    at!["vip", i, "name"],
                    format!("VIP name {:?} is used twice: names must be unique", v.name),
                ));
            }
            if !keys.insert((v.address, v.port, v.protocol)) {
                return Err(Mistake::new(
                    at!["vip", i, "address"],
                    format!(
                        "VIP {:?}: {} port {} {} is already defined by another VIP",
                        v.name, v.address, v.port, v.protocol
                    ),
                ));
            }
            if !is_prime(v.ring_size) || v.ring_size < 101 {
                return Err(Mistake::new(
                    at!["vip", i, "ring_size"],
                    format!(
                        "VIP {:?}: ring_size {} must be a prime of at least 101 (65537 is the default)",
                        v.name, v.ring_size
                    ),
                ));
            }
            ring_total += v.ring_size as u64;
            let mut addrs = HashSet::new();
            for (j, b) in v.backends.iter().enumerate() {
                let b = b.get_ref();
                let address = at!["vip", i, "backend", j, "address"];
                if let Some(what) = unusable(b.address) {
                    return Err(Mistake::new(
                        address,
                        format!("VIP {:?}: backend {} is {what}", v.name, b.address),
                    ));
                }
                if b.address == v.address {
                    return Err(Mistake::new(
                        address,
                        format!(
                            "VIP {:?}: backend {} is the VIP's own address: packets would loop",
                            v.name, b.address
                        ),
                    ));
                }
                if !addrs.insert(b.address) {
                    return Err(Mistake::new(
                        address,
                        format!("VIP {:?}: backend {} is listed twice", v.name, b.address),
                    ));
                }
                if b.weight > MAX_WEIGHT {
                    return Err(Mistake::new(
                        at!["vip", i, "backend", j, "weight"],
                        format!(
                            "VIP {:?}: backend {} weight {} is out of range 0..={MAX_WEIGHT}",
                            v.name, b.address, b.weight
                        ),
                    ));
                }
                if v.address.is_ipv6() && b.address.is_ipv4() && v.forward == ForwardCfg::Ipip {
                    return Err(Mistake::new(
                        address,
                        format!(
                            "VIP {:?}: IPv6 VIP with IPv4 backend {}: IPv6-in-IPv4 is not supported, use an IPv6 backend address",
                            v.name, b.address
                        ),
                    ));
                }
                match (&b.mac, v.forward) {
                    (None, ForwardCfg::L2dsr) => {
                        // Not set: the backend's table, where it is missing.
                        return Err(Mistake::new(
                            at!["vip", i, "backend", j, "mac"],
                            format!(
                                "VIP {:?}: backend {} needs mac = \"..\" for forward = \"l2dsr\"",
                                v.name, b.address
                            ),
                        ));
                    }
                    (Some(m), _) if parse_mac(m).is_none() => {
                        return Err(Mistake::new(
                            at!["vip", i, "backend", j, "mac"],
                            format!(
                                "VIP {:?}: backend {} mac {m:?} is not a MAC like 02:00:00:00:00:01",
                                v.name, b.address
                            ),
                        ));
                    }
                    _ => {}
                }
                let h = b.health.over(&v.health).resolve(v.port);
                check_health(&h).map_err(|(keys, m)| {
                    // The backend's own setting, else the VIP's it inherits; a default is
                    // reported at the backend's table.
                    let mut paths = keys.iter().flat_map(|&k| {
                        [
                            at!["vip", i, "backend", j, "health", k],
                            at!["vip", i, "health", k],
                        ]
                    });
                    let first = paths.next().unwrap_or_else(|| at!["vip", i, "backend", j]);
                    paths.fold(
                        Mistake::new(
                            first,
                            format!("VIP {:?}: backend {}: {m}", v.name, b.address),
                        ),
                        Mistake::or,
                    )
                })?;
            }
            let with_weight = v.backends.iter().filter(|b| b.get_ref().weight > 0).count();
            if (v.ring_size as usize) < with_weight * 100 {
                return Err(Mistake::new(
                    at!["vip", i, "ring_size"],
                    format!(
                        "VIP {:?}: ring_size {} is below 100 slots per backend ({with_weight} backends): choose a larger prime",
                        v.name, v.ring_size
                    ),
                ));
            }
        }
        if ring_total > d.ring_capacity as u64 {
            return Err(Mistake::new(
                at!["dataplane", "ring_capacity"],
                format!(
                    "[dataplane] ring_capacity {} is below the VIPs' ring sizes together ({ring_total}): raise it",
                    d.ring_capacity
                ),
            ));
        }
        if self.vips.len() as u32 > MAX_VIP_COUNT {
            // The first VIP past the limit.
            return Err(Mistake::new(
                at!["vip", MAX_VIP_COUNT as usize],
                format!(
                    "{} VIPs: at most {MAX_VIP_COUNT} (LB_VIPS ids; id 0 means none): remove some",
                    self.vips.len()
                ),
            ));
        }
        let backends: usize = self.vips.iter().map(|v| v.get_ref().backends.len()).sum();
        if backends as u32 > MAX_BACKEND_COUNT {
            // The first backend past the limit.
            let first_over = self
                .vips
                .iter()
                .enumerate()
                .flat_map(|(i, v)| (0..v.get_ref().backends.len()).map(move |j| (i, j)))
                .nth(MAX_BACKEND_COUNT as usize)
                .map(|(i, j)| at!["vip", i, "backend", j])
                .unwrap_or_default();
            return Err(Mistake::new(
                first_over,
                format!(
                    "{backends} backends over all VIPs: at most {MAX_BACKEND_COUNT} (LB_BACKENDS slots; slot 0 means none): remove some"
                ),
            ));
        }
        Ok(())
    }
}

/// A step of a path into the document: a key, or an index into an array (of tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg {
    Key(&'static str),
    Index(usize),
}

impl From<&'static str> for Seg {
    fn from(key: &'static str) -> Seg {
        Seg::Key(key)
    }
}

impl From<usize> for Seg {
    fn from(index: usize) -> Seg {
        Seg::Index(index)
    }
}

/// What a validation error says, and the keys it is about: paths into the document, in
/// order of preference.
struct Mistake {
    at: Vec<Vec<Seg>>,
    message: String,
}

impl Mistake {
    fn new(at: Vec<Seg>, message: impl Into<String>) -> Mistake {
        Mistake {
            at: vec![at],
            message: message.into(),
        }
    }

    /// Also `at`, if the file does not set the paths before it.
    fn or(mut self, at: Vec<Seg>) -> Mistake {
        self.at.push(at);
        self
    }

    /// Where to point: the value at the first path the file sets all the way; if it sets
    /// none (a default is at fault), the deepest table on the way of the first, such as the
    /// `[[vip.backend]]` that would hold the key.
    fn span(&self, doc: &Spanned<DeTable<'_>>) -> Range<usize> {
        let found: Vec<(Range<usize>, bool)> = self.at.iter().map(|p| locate(doc, p)).collect();
        found
            .iter()
            .find(|(_, whole)| *whole)
            .or(found.first())
            .map(|(span, _)| span.clone())
            .unwrap_or(0..0)
    }
}

/// The span of what `path` names (a value; a table's header), and whether the file sets
/// all of it; if not, the span of the deepest part that is set.
fn locate(doc: &Spanned<DeTable<'_>>, path: &[Seg]) -> (Range<usize>, bool) {
    let mut span = doc.span();
    let mut here: Option<&Spanned<DeValue<'_>>> = None;
    for seg in path {
        let next = match (here, *seg) {
            (None, Seg::Key(k)) => doc.get_ref().get(k),
            (None, Seg::Index(_)) => None,
            (Some(v), Seg::Key(k)) => v.get_ref().get(k),
            (Some(v), Seg::Index(i)) => v.get_ref().get(i),
        };
        match next {
            Some(v) => {
                span = v.span();
                here = Some(v);
            }
            None => return (span, false),
        }
    }
    (span, true)
}

/// The keys to blame, most likely first, and what is wrong.
fn check_health(h: &Health) -> Result<(), (&'static [&'static str], String)> {
    if h.interval_ms < 50 || h.timeout_ms == 0 || h.timeout_ms > h.interval_ms {
        let keys: &[&str] = match h.interval_ms < 50 {
            true => &["interval_ms"],
            false => &["timeout_ms", "interval_ms"],
        };
        return Err((
            keys,
            format!(
                "health interval_ms {} / timeout_ms {}: need interval >= 50 ms and 0 < timeout <= interval",
                h.interval_ms, h.timeout_ms
            ),
        ));
    }
    if h.rise == 0 || h.fall == 0 {
        let keys: &[&str] = match h.rise == 0 {
            true => &["rise"],
            false => &["fall"],
        };
        return Err((keys, "health rise and fall must be at least 1".into()));
    }
    if let Some(r) = h.max_error_rate
        && !(0.0..=1.0).contains(&r)
    {
        return Err((
            &["max_error_rate"],
            format!("health max_error_rate {r} must be between 0 and 1"),
        ));
    }
    if matches!(h.kind, CheckKind::Http | CheckKind::Https) && !h.path.starts_with('/') {
        return Err((
            &["path"],
            format!("health path {:?} must start with /", h.path),
        ));
    }
    // Sent raw on the wire: a CR or LF would inject headers into the check's request.
    let control = |t: &&String| t.chars().any(|c| c.is_control());
    let (path, host): (&[&str], &[&str]) = (&["path"], &["host"]);
    if let Some((keys, bad)) = [(path, Some(&h.path)), (host, h.host.as_ref())]
        .into_iter()
        .find_map(|(k, t)| t.filter(control).map(|t| (k, t)))
    {
        return Err((
            keys,
            format!(
                "health path or host {bad:?} holds a control character (CR, LF, ...): remove it"
            ),
        ));
    }
    if h.kind != CheckKind::None && h.port == 0 {
        return Err((
            &["port"],
            "health port 0 cannot be probed: set a port".into(),
        ));
    }
    if matches!(h.kind, CheckKind::Http | CheckKind::Https)
        && !(100..=599).contains(&h.expect_status)
    {
        return Err((
            &["expect_status"],
            format!(
                "health expect_status {} is not an HTTP status (100..=599)",
                h.expect_status
            ),
        ));
    }
    Ok(())
}

/// An address no client sends to or no backend can be: unspecified, broadcast, multicast.
fn unusable(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if matches!(ip, IpAddr::V4(a) if a.is_broadcast()) {
        Some("broadcast")
    } else {
        None
    }
}

/// `value`, the setting `what` found at `at`, within `range`; `hint` (may be empty) is said
/// after the range.
fn in_range(
    at: Vec<Seg>,
    what: &str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
    hint: &str,
) -> Result<(), Mistake> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(Mistake::new(
        at,
        format!(
            "{what} {value} is out of range {}..={}{hint}",
            range.start(),
            range.end()
        ),
    ))
}

/// `[vip.passive]` of VIP `i`.
fn validate_passive(i: usize, p: &PassiveConfig) -> Result<(), Mistake> {
    let bad =
        |key: &'static str, what: String| Err(Mistake::new(at!["vip", i, "passive", key], what));
    let range = |key: &'static str, value, range, hint| {
        let what = format!("[vip.passive] {key}");
        in_range(at!["vip", i, "passive", key], &what, value, range, hint)
    };
    range("window_ms", p.window_ms, 20..=60_000, "")?;
    range(
        "handshake_ms",
        p.handshake_ms,
        1..=10_000,
        " (more than the clients' round trip)",
    )?;
    if p.min_syns == 0 {
        return bad(
            "min_syns",
            "[vip.passive] min_syns must be at least 1".into(),
        );
    }
    if !(p.ratio > 0.0 && p.ratio <= 1.0) {
        return bad(
            "ratio",
            format!(
                "[vip.passive] ratio {} must be above 0 and at most 1",
                p.ratio
            ),
        );
    }
    Ok(())
}

/// A fleet or node name goes into etcd keys: letters, digits, `.`, `_`, `-`.
fn bad_name(name: &str) -> bool {
    name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn validate_fleet(f: &FleetConfig) -> Result<(), Mistake> {
    let at = |key: &'static str| at!["daemon", "fleet", key];
    if bad_name(&f.name) {
        return Err(Mistake::new(
            at("name"),
            format!(
                "[daemon.fleet] name {:?}: use 1 to 64 letters, digits, '.', '_' or '-'",
                f.name
            ),
        ));
    }
    if let Some(n) = &f.node
        && bad_name(n)
    {
        return Err(Mistake::new(
            at("node"),
            format!("[daemon.fleet] node {n:?}: use 1 to 64 letters, digits, '.', '_' or '-'"),
        ));
    }
    if f.endpoints.is_empty() {
        return Err(Mistake::new(
            at("endpoints"),
            "[daemon.fleet] endpoints is empty: list etcd's client URLs, like \"http://10.0.0.1:2379\"",
        ));
    }
    for (k, e) in f.endpoints.iter().enumerate() {
        let tls = e.starts_with("https://");
        if !(tls || e.starts_with("http://"))
            || e.split_once("://").is_none_or(|(_, h)| h.is_empty())
        {
            return Err(Mistake::new(
                at!["daemon", "fleet", "endpoints", k],
                format!("[daemon.fleet] endpoint {e:?} is not a URL like \"http://10.0.0.1:2379\""),
            ));
        }
        if tls != f.endpoints[0].starts_with("https://") {
            return Err(Mistake::new(
                at!["daemon", "fleet", "endpoints", k],
                "[daemon.fleet] endpoints mix http:// and https://: use one scheme for all",
            ));
        }
    }
    if !f.prefix.starts_with('/')
        || f.prefix.len() > 256
        || f.prefix
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(Mistake::new(
            at("prefix"),
            format!(
                "[daemon.fleet] prefix {:?} must begin with '/' and hold no spaces",
                f.prefix
            ),
        ));
    }
    in_range(
        at("grace_ms"),
        "[daemon.fleet] grace_ms",
        f.grace_ms,
        100..=600_000,
        "",
    )?;
    in_range(
        at("lease_s"),
        "[daemon.fleet] lease_s",
        f.lease_s,
        2..=3600,
        "",
    )?;
    if f.cert.is_some() != f.key.is_some() {
        return Err(Mistake::new(
            at(if f.cert.is_some() { "cert" } else { "key" }),
            "[daemon.fleet] cert and key go together: set both for client certificates, or neither",
        ));
    }
    if f.user.is_some() != f.password_file.is_some() {
        return Err(Mistake::new(
            at(if f.user.is_some() {
                "user"
            } else {
                "password_file"
            }),
            "[daemon.fleet] user and password_file go together (the password is read from the file, never written here)",
        ));
    }
    let tls = f.endpoints[0].starts_with("https://");
    if !tls && (f.ca.is_some() || f.cert.is_some()) {
        return Err(Mistake::new(
            at(if f.ca.is_some() { "ca" } else { "cert" }),
            "[daemon.fleet] ca and cert are for TLS: use https:// endpoints",
        ));
    }
    Ok(())
}

fn bad_interface(name: &str) -> bool {
    name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[daemon]
interfaces = ["eth0"]

[[vip]]
name = "web"
address = "198.18.100.1"
port = 80

[[vip.backend]]
address = "198.18.0.21"

[[vip.backend]]
address = "198.18.0.22"
weight = 50
role = "backup"
"#;

    fn err(src: &str) -> String {
        Config::parse(src, Path::new("lb.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::parse(GOOD, Path::new("lb.toml")).unwrap();
        let v = c.vips[0].get_ref();
        assert_eq!(v.ring_size, 65537);
        assert_eq!(v.backends[0].get_ref().weight, 100);
        assert_eq!(v.backends[1].get_ref().role, Role::Backup);
        assert_eq!(c.daemon.xdp_mode, XdpModeCfg::Native);
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let e = err(
            "[daemon]\ninterfaces = [\"eth0\"]\n[[vip]]\nname = \"x\"\naddress = \"not-an-ip\"\n",
        );
        assert!(e.starts_with("lb.toml:5:"), "{e}");
        assert!(e.contains("invalid IP address"), "{e}");
    }

    #[test]
    fn semantic_errors_point_at_the_key() {
        let bad = GOOD.replace("weight = 50", "weight = 70000");
        let e = err(&bad);
        assert!(e.starts_with("lb.toml:15:10:"), "{e}");
        assert!(e.contains("weight 70000 is out of range"), "{e}");
        let e = err(&GOOD.replace("port = 80", "port = 80\nring_size = 65536"));
        assert!(e.contains("must be a prime"), "{e}");
        let e = err(&GOOD.replace("address = \"198.18.0.22\"", "address = \"198.18.0.21\""));
        assert!(e.contains("listed twice"), "{e}");
        let e = err(&GOOD.replace("port = 80", "port = 80\nbogus = 1"));
        assert!(e.contains("unknown field"), "{e}");
    }
}

#[cfg(test)]
mod example {
    /// The annotated example in the repository stays valid.
    #[test]
    fn example_config_is_valid() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/lb.example.toml");
        let c = super::Config::load(&path).unwrap();
        assert_eq!(c.vips.len(), 2);
    }
}

#[cfg(test)]
mod located {
    #[test]
    fn node_wide_errors_point_at_their_line() {
        let src = "[daemon]\ninterfaces = [\"eth0\"]\n\n[dataplane]\nflows = 4096\nmtu = 100\n";
        let e = super::Config::parse(src, std::path::Path::new("lb.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("lb.toml:6:7: [dataplane] mtu 100"), "{e}");
    }
}

#[cfg(test)]
mod refused {
    /// What `lbd check` passed and `run` then failed on, or what lied: each refused, with a
    /// message naming the key.
    #[test]
    fn nonsense_is_refused_with_its_key() {
        let base = "[daemon]\ninterfaces = [\"eth0\"]\n\n[dataplane]\n@DP@\n[[vip]]\nname = \"@NAME@\"\naddress = \"@VIP@\"\nport = 80\n[vip.health]\nkind = \"http\"\n@HEALTH@\n[[vip.backend]]\naddress = \"@BE@\"\n";
        let good = [
            ("@DP@", ""),
            ("@NAME@", "web"),
            ("@VIP@", "198.18.100.1"),
            ("@HEALTH@", ""),
            ("@BE@", "198.18.0.21"),
        ];
        let render = |field: &str, value: &str| {
            good.iter().fold(base.to_string(), |t, (k, v)| {
                t.replace(k, if *k == field { value } else { v })
            })
        };
        let parse = |t: &str| super::Config::parse(t, std::path::Path::new("lb.toml"));
        assert!(parse(&render("", "")).is_ok());
        for (field, value, says) in [
            ("@DP@", "flows = 0", "flows 0"),
            ("@DP@", "flows = 4294967295", "flows 4294967295"),
            ("@DP@", "ring_capacity = 0", "ring_capacity 0"),
            ("@NAME@", "", "VIP name \"\""),
            ("@NAME@", "we\\nb", "control character"),
            ("@NAME@", "we\\u0000b", "control character"),
            ("@VIP@", "0.0.0.0", "unspecified"),
            ("@VIP@", "255.255.255.255", "broadcast"),
            ("@VIP@", "224.0.0.1", "multicast"),
            ("@BE@", "198.18.100.1", "VIP's own address"),
            ("@BE@", "0.0.0.0", "unspecified"),
            (
                "@HEALTH@",
                "path = \"/x\\r\\nX-Evil: 1\"",
                "control character",
            ),
            ("@HEALTH@", "host = \"a\\nb\"", "control character"),
            ("@HEALTH@", "port = 0", "port 0"),
            ("@HEALTH@", "expect_status = 0", "expect_status 0"),
        ] {
            let e = parse(&render(field, value))
                .expect_err(&format!("{field} = {value} was accepted"))
                .to_string();
            assert!(e.contains(says), "{field} = {value}: {e}");
        }
        for ifaces in ["[\"\"]", "[\"eth0\", \"eth0\"]", "[\"../x\"]"] {
            let t = render("", "").replace("[\"eth0\"]", ifaces);
            let e = parse(&t).expect_err(ifaces).to_string();
            assert!(e.contains("[daemon] interfaces"), "{ifaces}: {e}");
        }
    }
}

#[cfg(test)]
mod pointed {
    //! Every validation error points at the offending key or value, and shows its line with
    //! carets under it, as rustc does.

    use std::path::Path;

    const BASE: &str = r#"[daemon]
interfaces = ["eth0", "eth1"]

[dataplane]
mtu = 1500

[[vip]]
name = "web"
address = "198.18.100.1"
port = 80
ring_size = 65537

[vip.health]
interval_ms = 1000

[[vip.backend]]
address = "198.18.0.21"
weight = 100

[[vip.backend]]
address = "198.18.0.22"
health = { timeout_ms = 300 }
"#;

    /// The error for `BASE` with `from` replaced by `to`: its first line, and the excerpt's
    /// source and caret lines (without the gutter).
    fn error(from: &str, to: &str) -> (String, String, String) {
        assert!(BASE.contains(from), "{from}");
        let text = BASE.replacen(from, to, 1);
        let e = super::Config::parse(&text, Path::new("lb.toml"))
            .expect_err(to)
            .to_string();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 4, "{e}");
        let (line_no, _) = lines[2].split_once(" | ").expect(&e);
        let gutter = " ".repeat(line_no.len());
        assert_eq!(lines[1], format!("{gutter} |"), "{e}");
        let caret = lines[3]
            .strip_prefix(&format!("{gutter} | "))
            .expect(&e)
            .to_string();
        let (_, source) = lines[2].split_once(" | ").unwrap();
        (lines[0].to_string(), source.to_string(), caret)
    }

    /// `FILE:LINE:COLUMN:` of the first line, the source line shown, and the carets.
    #[track_caller]
    fn points(from: &str, to: &str, at: &str, source: &str, caret: &str, says: &str) {
        let (first, shown, carets) = error(from, to);
        assert!(first.starts_with(&format!("lb.toml:{at}: ")), "{first}");
        assert!(first.contains(says), "{first}");
        assert_eq!(shown, source, "{first}");
        assert_eq!(carets, caret, "{first}");
    }

    #[test]
    fn the_base_is_valid() {
        super::Config::parse(BASE, Path::new("lb.toml")).unwrap();
    }

    #[test]
    fn a_backends_weight() {
        points(
            "weight = 100",
            "weight = 70000",
            "18:10",
            "weight = 70000",
            "         ^^^^^",
            "backend 198.18.0.21 weight 70000 is out of range 0..=65535",
        );
    }

    #[test]
    fn a_vips_ring_size() {
        points(
            "ring_size = 65537",
            "ring_size = 65536",
            "11:13",
            "ring_size = 65536",
            "            ^^^^^",
            "ring_size 65536 must be a prime",
        );
        // Set but too small for its backends: the value.
        points(
            "ring_size = 65537",
            "ring_size = 101",
            "11:13",
            "ring_size = 101",
            "            ^^^",
            "below 100 slots per backend",
        );
        // The rings together over the capacity: the capacity.
        points(
            "mtu = 1500",
            "ring_capacity = 65536",
            "5:17",
            "ring_capacity = 65536",
            "                ^^^^^",
            "ring_capacity 65536 is below the VIPs' ring sizes together (65537)",
        );
    }

    #[test]
    fn a_health_interval_where_it_is_set() {
        // The VIP's, inherited by every backend.
        points(
            "interval_ms = 1000",
            "interval_ms = 10",
            "14:15",
            "interval_ms = 10",
            "              ^^",
            "health interval_ms 10 / timeout_ms 500",
        );
        // The backend's own inline override.
        points(
            "health = { timeout_ms = 300 }",
            "health = { timeout_ms = 3000 }",
            "22:25",
            "health = { timeout_ms = 3000 }",
            "                        ^^^^",
            "backend 198.18.0.22: health interval_ms 1000 / timeout_ms 3000",
        );
        // A timeout left at its default over a short interval: the interval that was set.
        points(
            "interval_ms = 1000",
            "interval_ms = 100",
            "14:15",
            "interval_ms = 100",
            "              ^^^",
            "timeout_ms 500",
        );
        // A key of a `[vip.backend.health]` table.
        points(
            "health = { timeout_ms = 300 }",
            "[vip.backend.health]\nrise = 0",
            "23:8",
            "rise = 0",
            "       ^",
            "rise and fall must be at least 1",
        );
    }

    #[test]
    fn a_vip_address() {
        points(
            "address = \"198.18.100.1\"",
            "address = \"224.0.0.1\"",
            "9:11",
            "address = \"224.0.0.1\"",
            "          ^^^^^^^^^^^",
            "VIP \"web\": address 224.0.0.1 is multicast",
        );
        // Not an IP address at all: the parser's own error, at the value as well.
        points(
            "address = \"198.18.100.1\"",
            "address = \"nope\"",
            "9:11",
            "address = \"nope\"",
            "          ^^^^^^",
            "invalid IP address",
        );
    }

    #[test]
    fn a_dataplane_key() {
        points(
            "mtu = 1500",
            "mtu = 100",
            "5:7",
            "mtu = 100",
            "      ^^^",
            "[dataplane] mtu 100 is below 576",
        );
        points(
            "mtu = 1500",
            "mtu = 1500\ngateway_mac = \"02:00\"",
            "6:15",
            "gateway_mac = \"02:00\"",
            "              ^^^^^^^",
            "[dataplane] gateway_mac \"02:00\" is not a MAC",
        );
        // An unknown key: the key itself.
        points(
            "mtu = 1500",
            "mtu = 1500\nmut = 1",
            "6:1",
            "mut = 1",
            "^^^",
            "unknown field `mut`",
        );
    }

    #[test]
    fn a_daemon_key() {
        // The one interface that is wrong, not the list.
        points(
            "[\"eth0\", \"eth1\"]",
            "[\"eth0\", \"eth0\"]",
            "2:23",
            "interfaces = [\"eth0\", \"eth0\"]",
            "                      ^^^^^^",
            "[daemon] interfaces: \"eth0\" is empty, too long, path-like or listed twice",
        );
        points(
            "[\"eth0\", \"eth1\"]",
            "[]",
            "2:14",
            "interfaces = []",
            "             ^^",
            "[daemon] interfaces is empty",
        );
    }

    #[test]
    fn a_backend_without_its_key_points_at_its_table() {
        let (first, shown, carets) = error("port = 80", "port = 80\nforward = \"l2dsr\"");
        assert!(first.starts_with("lb.toml:17:1: "), "{first}");
        assert!(first.contains("needs mac"), "{first}");
        assert_eq!(
            (shown.as_str(), carets.as_str()),
            ("[[vip.backend]]", "^^^^^^^^^^^^^^^")
        );
    }

    #[test]
    fn tabs_long_lines_and_control_characters_keep_the_caret_in_place() {
        let (first, shown, carets) = error("weight = 100", "\tweight =\t70000");
        assert!(first.starts_with("lb.toml:18:11: "), "{first}");
        assert_eq!(shown, "\tweight =\t70000");
        assert_eq!(carets, "\t        \t^^^^^");
        // A long inline line is cut around the column.
        let long = format!(
            "health = {{ path = \"/{}\", timeout_ms = 0 }}",
            "x".repeat(200)
        );
        let (first, shown, carets) = error("health = { timeout_ms = 300 }", &long);
        assert!(first.starts_with("lb.toml:22:237: "), "{first}");
        assert!(
            shown.starts_with("...") && shown.contains("timeout_ms = 0"),
            "{shown}"
        );
        assert_eq!(
            shown.chars().position(|c| c == '0'),
            carets.chars().position(|c| c == '^'),
            "{shown}\n{carets}"
        );
        // A CR before the newline is not shown; a bare control character is U+FFFD.
        let crlf = BASE.replace('\n', "\r\n").replace("mtu = 1500", "mtu = 1");
        let e = super::Config::parse(&crlf, Path::new("lb.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("5 | mtu = 1\n  |       ^"), "{e:?}");
        let e = super::Config::parse("[daemon]\ninterfaces = [\"\u{7}\"]\n", Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\u{7}') && e.contains('\u{FFFD}'), "{e:?}");
    }
}

#[cfg(test)]
mod excerpt_props {
    use proptest::prelude::*;

    proptest! {
        /// Any span of any text: a line and column inside it, and no panic.
        #[test]
        fn any_span_of_any_text_is_shown(text in "\\PC{0,200}|[a\t\r\n\u{7}é]{0,40}", a in 0usize..300, b in 0usize..300) {
            let (line, column, excerpt) = super::excerpt(&text, a..b);
            prop_assert!(line >= 1 && line <= text.matches('\n').count() + 1);
            prop_assert!(column >= 1);
            prop_assert_eq!(excerpt.lines().count(), 3, "{:?}", excerpt);
            prop_assert!(excerpt.ends_with('^'), "{:?}", excerpt);
        }
    }
}
