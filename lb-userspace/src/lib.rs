//! The control plane's library: loading the dataplane, building rings, writing maps.

pub mod api;
pub mod batch;
pub mod cli;
pub mod clidoc;
pub mod config;
pub mod controller;
pub mod ctl;
pub mod daemon;
pub mod dataplane;
pub mod decap;
pub mod demo;
pub mod edit;
pub mod health;
pub mod lab;
pub mod metrics;
pub mod model;
pub mod programs;
pub mod ring;
pub mod service;
pub mod store;
