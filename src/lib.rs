//! kube-proxy-rs: a drop-in replacement for Kubernetes' kube-proxy.
//!
//! Functional core, imperative shell: [`source`]s feed a pure model
//! ([`model`]); a [`backend::Backend`] ([`iptables`], [`ipvs`], [`nftables`]) renders it into
//! desired kernel state as pure code, and small appliers do the I/O (the
//! iptables ones shared in [`xtables`]); [`sync`] coalesces changes and
//! applies only diffs. Around them: [`health`], [`metrics`] and [`http`],
//! [`conntrack`] (table limits, stale UDP entries), [`node`] facts, and
//! [`run`], which wires it all from [`cli`] and [`config`].

pub mod backend;
pub mod cli;
pub mod config;
pub mod conntrack;
pub mod health;
pub mod http;
pub mod iptables;
pub mod ipvs;
pub mod metrics;
pub mod model;
pub mod nftables;
pub mod node;
pub mod run;
pub mod source;
pub mod sync;
pub mod xtables;
