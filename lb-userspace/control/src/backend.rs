//! One backend's life: its configuration, the operator's word (admin), the backend's own
//! word (agent-check) and the health checks' verdicts, combined into the state an operator
//! sees and the flags the dataplane needs. `observe` is the state machine: a probe result
//! in, a transition out when anything visible changed.

use std::{
    collections::VecDeque,
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

use crate::{
    config::{BackendConfig, Health, MAX_WEIGHT},
    probe::{AgentSays, parse_agent},
};

/// How many probe results the error rate looks back over.
pub const ERROR_WINDOW: usize = 20;
/// The error rate is judged only once this many results are in.
const ERROR_RATE_MIN_SAMPLES: usize = 5;
/// Weight of the newest latency sample in the moving average.
const LATENCY_SMOOTHING: f64 = 0.3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    Enabled,
    /// No new flows; established flows stay.
    Draining,
    /// Down for the dataplane: established flows are rescheduled.
    Disabled,
}

impl Admin {
    pub fn of(b: &BackendConfig) -> Admin {
        if b.disabled {
            Admin::Disabled
        } else if b.drain {
            Admin::Draining
        } else {
            Admin::Enabled
        }
    }
}

/// The state an operator sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Up,
    Down,
    Degraded,
    Draining,
    Disabled,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Up,
        State::Down,
        State::Degraded,
        State::Draining,
        State::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Degraded => "degraded",
            State::Draining => "draining",
            State::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a backend is in its state, one wording per cause (the REASON of `lbctl health`, and
/// the `by ...` of a transition's event): set by the configuration (the file, a reload, an
/// API change), whether the backend was added, drained, disabled or enabled.
pub const REASON_CONFIGURATION: &str = "configuration";
/// Found marked down in the pinned maps when the daemon started (it was down before the
/// restart); up again after `rise` passed checks.
pub const REASON_DOWN_BEFORE_RESTART: &str = "down before the restart";

/// What changed in a backend that the dataplane must learn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    /// Marked down for the dataplane before and after (a draining backend that fails its
    /// checks stays "draining" for the operator but its flows must move).
    pub was_down: bool,
    pub now_down: bool,
    pub reason: String,
}

impl Transition {
    /// The state an operator sees changed (not only the dataplane's down flag).
    pub fn visible(&self) -> bool {
        self.from != self.to
    }
}

#[derive(Debug, Clone)]
pub struct BackendState {
    pub cfg: BackendConfig,
    pub id: u32,
    pub health: Health,
    pub live: Liveness,
    pub admin: Admin,
    pub degraded: bool,
    /// Consecutive successes / failures toward rise / fall.
    pub ok_streak: u32,
    pub fail_streak: u32,
    pub latency_ms: Option<f64>,
    pub recent: VecDeque<bool>,
    pub since: SystemTime,
    pub reason: String,
    pub last_check: Option<SystemTime>,
    /// The backend's own word (agent-check), sticky until it says otherwise.
    pub agent: AgentSays,
    /// When it last came up, for slow start.
    pub up_since: Option<Instant>,
}

impl BackendState {
    /// A backend newly configured: up unless it was found marked down in pinned maps (and
    /// is health-checked, so that something will bring it back).
    pub fn new(cfg: BackendConfig, id: u32, health: Health, down: bool) -> Self {
        BackendState {
            admin: Admin::of(&cfg),
            cfg,
            id,
            live: if down { Liveness::Down } else { Liveness::Up },
            health,
            degraded: false,
            ok_streak: 0,
            fail_streak: 0,
            latency_ms: None,
            recent: VecDeque::new(),
            since: SystemTime::now(),
            reason: match down {
                true => REASON_DOWN_BEFORE_RESTART,
                false => REASON_CONFIGURATION,
            }
            .into(),
            last_check: None,
            agent: AgentSays::default(),
            up_since: None,
        }
    }

    /// The operator's word first, then the backend's agent, then the health checks.
    pub fn state(&self) -> State {
        if self.admin == Admin::Disabled || self.agent.maint {
            State::Disabled
        } else if self.admin == Admin::Draining || self.agent.drain {
            State::Draining
        } else if self.live == Liveness::Down || self.agent.down {
            State::Down
        } else if self.degraded {
            State::Degraded
        } else {
            State::Up
        }
    }

    /// Weight in the ring now: configured, scaled by the agent's percentage and by the
    /// slow-start ramp after a recovery.
    pub fn weight(&self) -> u32 {
        self.weight_at(Instant::now())
    }

    pub fn weight_at(&self, now: Instant) -> u32 {
        let mut w = self.cfg.weight as u64 * self.agent.weight_pct.unwrap_or(100) as u64 / 100;
        if let (Some(since), Some(ramp)) = (self.up_since, self.health.slow_start_ms) {
            let done = now.saturating_duration_since(since).as_millis() as u64;
            if done < ramp && w > 0 {
                w = (w * done / ramp).max(1);
            }
        }
        w.min(MAX_WEIGHT as u64) as u32
    }

    /// Still ramping up after a recovery.
    pub fn ramping(&self, now: Instant) -> bool {
        matches!((self.up_since, self.health.slow_start_ms),
            (Some(t), Some(r)) if now.saturating_duration_since(t).as_millis() < r as u128)
    }

    /// May take new flows.
    pub fn usable(&self) -> bool {
        self.state() == State::Up && self.weight() > 0
    }

    /// Marked down in the dataplane: its flows move. Independent of the state shown: a
    /// draining backend that fails its checks is down for the dataplane too.
    pub fn dataplane_down(&self) -> bool {
        self.admin == Admin::Disabled
            || self.agent.maint
            || self.live == Liveness::Down
            || self.agent.down
    }

    pub fn error_rate(&self) -> f64 {
        if self.recent.is_empty() {
            return 0.0;
        }
        self.recent.iter().filter(|ok| !**ok).count() as f64 / self.recent.len() as f64
    }

    /// Take the configuration of a reload: the file is the source of truth for admin state,
    /// so a reload that drains, disables or enables the backend takes effect.
    pub fn reconfigure(&mut self, cfg: BackendConfig, health: Health) -> Option<Transition> {
        let (from, was_down) = (self.state(), self.dataplane_down());
        self.admin = Admin::of(&cfg);
        self.cfg = cfg;
        self.health = health;
        let to = self.state();
        (to != from).then(|| {
            self.since = SystemTime::now();
            self.reason = REASON_CONFIGURATION.into();
            Transition {
                from,
                to,
                was_down,
                now_down: self.dataplane_down(),
                reason: REASON_CONFIGURATION.into(),
            }
        })
    }

    /// A health-check result: count it toward rise/fall and the latency and error-rate
    /// limits. Returns a transition when the state shown or the dataplane's flag changed.
    pub fn observe(
        &mut self,
        result: &Result<Duration, String>,
        now: Instant,
    ) -> Option<Transition> {
        let (from, was_down) = (self.state(), self.dataplane_down());
        self.last_check = Some(SystemTime::now());
        self.recent.push_back(result.is_ok());
        while self.recent.len() > ERROR_WINDOW {
            self.recent.pop_front();
        }
        let mut reason = None;
        match result {
            Ok(lat) => {
                let ms = lat.as_secs_f64() * 1000.0;
                self.latency_ms = Some(self.latency_ms.map_or(ms, |avg| {
                    (1.0 - LATENCY_SMOOTHING) * avg + LATENCY_SMOOTHING * ms
                }));
                self.ok_streak += 1;
                self.fail_streak = 0;
                if self.live == Liveness::Down && self.ok_streak >= self.health.rise {
                    self.live = Liveness::Up;
                    self.up_since = self.health.slow_start_ms.map(|_| now);
                    reason = Some(format!("{} checks passed", self.ok_streak));
                }
            }
            Err(e) => {
                self.fail_streak += 1;
                self.ok_streak = 0;
                if self.live == Liveness::Up && self.fail_streak >= self.health.fall {
                    self.live = Liveness::Down;
                    reason = Some(format!("{} checks failed, last: {e}", self.fail_streak));
                }
            }
        }
        let slow = matches!((self.health.max_latency_ms, self.latency_ms),
            (Some(max), Some(avg)) if avg > max as f64);
        let failing = self.health.max_error_rate.is_some_and(|max| {
            self.recent.len() >= ERROR_RATE_MIN_SAMPLES && self.error_rate() > max
        });
        if self.degraded != (slow || failing) {
            self.degraded = slow || failing;
            reason.get_or_insert_with(|| {
                if slow {
                    format!(
                        "latency {:.1} ms above {} ms",
                        self.latency_ms.unwrap_or(0.0),
                        self.health.max_latency_ms.unwrap_or(0)
                    )
                } else if failing {
                    format!(
                        "error rate {:.0}% above {:.0}%",
                        self.error_rate() * 100.0,
                        self.health.max_error_rate.unwrap_or(0.0) * 100.0
                    )
                } else {
                    "back within thresholds".into()
                }
            });
        }
        self.settle(from, was_down, reason)
    }

    /// What the traffic shows (passive detection): the backend stops answering while its
    /// siblings answer. Down at once; only the active checks' rise brings it back.
    pub fn observe_traffic(&mut self, reason: String) -> Option<Transition> {
        if self.live == Liveness::Down {
            return None;
        }
        let (from, was_down) = (self.state(), self.dataplane_down());
        self.live = Liveness::Down;
        self.ok_streak = 0;
        self.settle(from, was_down, Some(reason))
    }

    /// An agent-check answer: the backend's own view of its state and weight. As in HAProxy,
    /// an unreachable agent changes nothing (the health checks decide), and unknown words
    /// are ignored. Returns a transition when the state, the flag or the weight changed.
    pub fn observe_agent(&mut self, line: &str) -> Option<Transition> {
        let says = parse_agent(line);
        let (from, was_down, weight_before) = (self.state(), self.dataplane_down(), self.weight());
        if says.up {
            self.agent.down = false;
            self.agent.drain = false;
            self.agent.maint = false;
        }
        self.agent.down |= says.down;
        self.agent.drain |= says.drain;
        self.agent.maint |= says.maint;
        if says.weight_pct.is_some() {
            self.agent.weight_pct = says.weight_pct;
        }
        let weight_after = self.weight();
        let reason = match weight_before == weight_after {
            true => format!("agent: {line}"),
            false => format!("agent: {line} (weight {weight_before} -> {weight_after})"),
        };
        match self.settle(from, was_down, Some(reason.clone())) {
            Some(t) => Some(t),
            // Same state, new weight: the ring changes, the state does not.
            None if weight_before != weight_after => Some(Transition {
                from,
                to: from,
                was_down,
                now_down: was_down,
                reason,
            }),
            None => None,
        }
    }

    fn settle(
        &mut self,
        from: State,
        was_down: bool,
        reason: Option<String>,
    ) -> Option<Transition> {
        let (to, now_down) = (self.state(), self.dataplane_down());
        if to == from && now_down == was_down {
            return None;
        }
        let reason = reason.unwrap_or_default();
        if to != from {
            self.since = SystemTime::now();
            self.reason = reason.clone();
        }
        Some(Transition {
            from,
            to,
            was_down,
            now_down,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    //! One wording per cause: what the configuration did always reads `configuration`,
    //! however it happened, and the documentation shows the same words.

    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn backend(extra: &str) -> (BackendConfig, Health) {
        let text = format!(
            "[daemon]\ninterfaces = [\"eth0\"]\n[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\n[[vip.backend]]\naddress = \"198.18.0.21\"\n{extra}\n"
        );
        let cfg = Config::parse(&text, Path::new("t.toml")).unwrap();
        let v = cfg.vips[0].get_ref();
        let b = v.backends[0].get_ref().clone();
        let h = b.health.over(&v.health).resolve(v.port);
        (b, h)
    }

    #[test]
    fn the_configuration_is_one_word_whatever_it_did() {
        let (plain, h) = backend("");
        let mut b = BackendState::new(plain.clone(), 1, h.clone(), false);
        assert_eq!(b.reason, REASON_CONFIGURATION, "added");
        for (extra, state) in [
            ("drain = true", State::Draining),
            ("disabled = true", State::Disabled),
            ("", State::Up),
        ] {
            let (cfg, h) = backend(extra);
            let t = b.reconfigure(cfg, h).expect(extra);
            assert_eq!(t.to, state, "{extra}");
            assert_eq!(
                (t.reason.as_str(), b.reason.as_str()),
                (REASON_CONFIGURATION, REASON_CONFIGURATION),
                "{extra}"
            );
        }
        // Added drained or disabled: the same word.
        for extra in ["drain = true", "disabled = true"] {
            let (cfg, h) = backend(extra);
            assert_eq!(
                BackendState::new(cfg, 1, h, false).reason,
                REASON_CONFIGURATION
            );
        }
        // Not the configuration's doing: its own word.
        let b = BackendState::new(plain, 1, h, true);
        assert_eq!(
            (b.state(), b.reason.as_str()),
            (State::Down, REASON_DOWN_BEFORE_RESTART)
        );
    }

    #[test]
    fn the_documented_health_table_uses_the_same_words() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/daemon.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let table: Vec<&str> = doc
            .lines()
            .skip_while(|l| !l.starts_with("$ lbctl health"))
            .skip(1)
            .take_while(|l| !l.starts_with("$ ") && !l.starts_with("```"))
            .collect();
        assert!(
            table.len() >= 2 && table[0].ends_with("REASON"),
            "{table:?}"
        );
        let column = table[0].find("REASON").unwrap();
        for row in &table[1..] {
            let reason = row.get(column..).unwrap_or_default();
            // Every cause the configuration has, in its one word; other causes name themselves.
            assert!(
                reason == REASON_CONFIGURATION
                    || reason == REASON_DOWN_BEFORE_RESTART
                    || reason.starts_with("agent: ")
                    || reason.contains(" checks ")
                    || reason.contains(" above ")
                    || reason == "back within thresholds",
                "docs/daemon.md shows the reason {reason:?}"
            );
        }
    }
}
