//! lbd's control API, version 1: newline-delimited JSON over a Unix socket
//! (`docs/api.md` is the wire contract).
//!
//! A request is one JSON object on one line,
//! `{"v":1,"op":"backend.set","args":{"vip":"web","address":"198.18.0.21","drain":true},"base_revision":7}`,
//! and so is its answer: `{"v":1,"ok":true,"revision":8,"data":...}` or
//! `{"v":1,"ok":false,"error":{"code":"not_found","message":"..."}}`.
//!
//! - [`Request`]: every operation, one variant each, tagged on the wire by `op`; an
//!   [`Envelope`] adds the version and `base_revision`. The daemon decodes a line with
//!   [`Envelope::from_line`], whose [`DecodeError`] says whether the line was not JSON, of
//!   another version, an unknown operation or bad arguments.
//! - [`Reply`]: the answer, [`Answer`] or [`ApiError`] (with an [`ErrorCode`]); the `data`
//!   of each operation is one of the types in [`data`] ([`Status`], [`VipRow`], ...).
//! - [`Client`]: the synchronous client `lbctl` uses.
//!
//! Only serde, serde_json and thiserror: `lbctl` builds on stable Rust without the eBPF
//! toolchain.

mod client;
pub mod data;
mod reply;
mod request;

pub use client::{Client, ClientError};
pub use data::{
    Announce, BackendCounters, BackendRow, BackendState, ConfigText, Diff, Disagreement, EventRow,
    ExportedMeta, ExportedRevision, FleetBackend, FleetNode, FleetStatus, Forward, Membership,
    MetricsText, Protocol, Refusal, RevisionMeta, Role, Scheduler, Stats, Status, Validity,
    VipCounters, VipRow, disagreements,
};
pub use reply::{Answer, ApiError, ErrorCode, Reply};
pub use request::{DEFAULT_EVENT_LIMIT, DecodeError, Envelope, Op, Request, RollbackTarget};

/// The API version this crate speaks: `v` of every request and answer.
pub const VERSION: u32 = 1;

/// `Display` for a unit-variant enum: its serde name, the word on the wire.
macro_rules! display_as_serialized {
    ($($t:ty),* $(,)?) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match serde_json::to_value(self) {
                    Ok(serde_json::Value::String(s)) => f.write_str(&s),
                    _ => Err(std::fmt::Error),
                }
            }
        }
    )*};
}
pub(crate) use display_as_serialized;

/// `FromStr` for a unit-variant enum: its serde name, so `"round_robin".parse()` works and
/// a wrong word's error lists the right ones.
macro_rules! parse_as_deserialized {
    ($($t:ty),* $(,)?) => {$(
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                serde_json::from_value(serde_json::Value::String(s.to_string()))
                    .map_err(|e| e.to_string())
            }
        }
    )*};
}
pub(crate) use parse_as_deserialized;

#[cfg(test)]
mod tests;
