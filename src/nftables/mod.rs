//! The nftables backend (`--proxy-mode nftables`): a chain-free layout in
//! tables of its own (`ip kube-proxy-rs`, `ip6 kube-proxy-rs`). Services and
//! endpoints are map elements, so a change is a handful of element updates
//! in one transaction, whatever the cluster size.
//!
//! Pure: [`layout`] (the fixed chains, sets and maps), [`elements`] (what
//! one service port adds), [`state`] (desired state and the transaction of
//! a sync). I/O: [`crate::xtables::nft`] (`nft -f -`, `nft -t list`);
//! [`backend`] ties them to the sync loop.

pub mod backend;
pub mod elements;
pub mod layout;
pub mod state;

pub use backend::NftablesBackend;
