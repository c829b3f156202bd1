//! kube-proxy-rs: a drop-in replacement for Kubernetes' kube-proxy.
//!
//! Functional core, imperative shell: sources feed a pure model
//! ([`model`]); each backend renders it into desired kernel state as pure code
//! ([`iptables::render`], [`iptables::state`]) and small appliers do the I/O
//! ([`iptables::apply`]); [`sync`] coalesces changes and applies only diffs.

pub mod backend;
pub mod cli;
pub mod config;
pub mod ctlimits;
pub mod hcnode;
pub mod health;
pub mod http;
pub mod iptables;
pub mod ipvs;
pub mod metrics;
pub mod model;
pub mod node;
pub mod run;
pub mod source;
pub mod sync;
pub mod xtables;
