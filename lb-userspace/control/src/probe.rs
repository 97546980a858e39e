//! What a probe or a backend's agent reported: the input of the backend state machine.
//! Probes only measure; verdicts (rise, fall, degraded) are the controller's.

use std::time::{Duration, Instant};

/// One probe's outcome for backend `backend_id` of VIP `vip`.
#[derive(Debug, Clone)]
pub struct Probe {
    pub vip: String,
    pub backend_id: u32,
    pub result: Result<Duration, String>,
    /// When the result was known: the start of the failover clock.
    pub at: Instant,
    /// An agent-check answer rather than a health check.
    pub agent: Option<Result<String, String>>,
}

/// What a backend's agent said (HAProxy's agent-check words; unknown words are ignored,
/// as HAProxy does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgentSays {
    /// Weight in percent of the configured weight, if given.
    pub weight_pct: Option<u32>,
    pub up: bool,
    pub down: bool,
    pub drain: bool,
    pub maint: bool,
}

pub fn parse_agent(line: &str) -> AgentSays {
    let mut a = AgentSays::default();
    for word in line
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
    {
        let w = word.to_ascii_lowercase();
        match w.as_str() {
            "up" | "ready" => a.up = true,
            "down" | "fail" | "failed" | "stopped" => a.down = true,
            "drain" => a.drain = true,
            "maint" => a.maint = true,
            _ => {
                if let Some(p) = w.strip_suffix('%').and_then(|p| p.parse::<u32>().ok()) {
                    a.weight_pct = Some(p.min(256));
                }
            }
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_words() {
        assert_eq!(
            parse_agent("75%"),
            AgentSays {
                weight_pct: Some(75),
                ..Default::default()
            }
        );
        assert_eq!(
            parse_agent("up, 50%\n"),
            AgentSays {
                weight_pct: Some(50),
                up: true,
                ..Default::default()
            }
        );
        assert!(parse_agent("DRAIN").drain);
        assert!(parse_agent("down #reason").down);
        assert!(parse_agent("maint").maint);
        assert_eq!(parse_agent("hello"), AgentSays::default());
    }
}
