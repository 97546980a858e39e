//! What the controller reports as it decides: transitions, timings and its state, for the
//! daemon's metrics. A trait, so the controller needs no metrics library and tests need none.

use std::{net::IpAddr, time::Duration};

use crate::{backend::State, controller::VipState};

pub trait Observer: Send + Sync {
    /// A health check passed in `latency`.
    fn check_passed(&self, _vip: &str, _backend: IpAddr, _latency: Duration) {}
    /// A backend entered state `to`.
    fn transition(&self, _vip: &str, _backend: IpAddr, _to: State) {}
    /// A ring was computed in `build` and its changes written in `write`.
    fn ring_written(&self, _build: Duration, _write: Duration) {}
    /// The VIPs and backends as they are now (after every change).
    fn state(&self, _vips: &[VipState]) {}
}
