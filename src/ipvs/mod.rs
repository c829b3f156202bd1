//! The IPVS backend (`--proxy-mode ipvs`): every VIP bound to the dummy link
//! kube-ipvs0, one IPVS virtual server per VIP:port with NAT real servers,
//! and a small set of ipset-driven iptables rules around them.
//!
//! Pure: [`wire`] (netlink attributes), [`desired`] (model -> desired state
//! and the diff), [`state`] (incremental desired state), [`ipset`],
//! [`iptables_rules`] (the iptables payload), [`sysctl`] (plan), [`render`]
//! (text for `render`). I/O: [`netlink`] (IPVS over generic netlink),
//! [`link`] (rtnetlink), [`ipset`]'s appliers (ipset restore, and entry
//! changes over netlink); [`backend`] ties them to the sync loop.

pub mod backend;
pub mod desired;
pub mod ipset;
pub mod iptables_rules;
pub mod link;
pub mod netlink;
pub mod render;
pub mod state;
pub mod sysctl;
pub mod wire;

pub use backend::{IpvsBackend, IpvsSettings};
