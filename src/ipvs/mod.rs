//! The IPVS backend (`--proxy-mode ipvs`): every VIP bound to the dummy link
//! kube-ipvs0, one IPVS virtual server per VIP:port with NAT real servers,
//! and a small set of ipset-driven iptables rules around them.
//!
//! Pure: [`wire`] (netlink attributes), [`desired`] (model -> desired state
//! and the diff), [`state`] (incremental desired state), [`ipset`],
//! [`iptables_rules`] (the iptables payload), [`sysctl`] (plan), [`render`] (text for `render`),
//! [`ipset_wire`] (ipset entry changes as netfilter netlink messages).
//! I/O: [`netlink`] (IPVS over generic netlink), [`link`] (rtnetlink),
//! [`apply`] (ipset restore, and entry changes over [`ipset_nl`]);
//! [`backend`] ties them to the sync loop.

pub mod apply;
pub mod backend;
pub mod desired;
pub mod ipset;
pub mod ipset_nl;
pub mod ipset_wire;
pub mod iptables_rules;
pub mod link;
pub mod netlink;
pub mod render;
pub mod state;
pub mod sysctl;
pub mod wire;

pub use backend::{IpvsBackend, IpvsSettings};
