//! What the iptables and ipvs backends share about iptables: the binaries
//! behind the [`Kernel`] trait and flavour detection ([`kernel`]), every
//! `KUBE-*` chain name ([`names`]), the jumps from the built-in chains
//! ([`jumps`]), chain reading and deletion ([`chains`]), the masquerade
//! settings and mark ([`masq`]), the nft binary ([`nft`]: nftables mode's,
//! and every mode's way to remove nftables tables), and the one fake
//! iptables kernel of the unit tests.

pub mod chains;
pub mod jumps;
pub mod kernel;
pub mod masq;
pub mod names;
pub mod nfnl;
pub mod nft;
pub mod nft_dump;

#[cfg(test)]
pub mod fake;

pub use jumps::Jump;
pub use kernel::{detect_flavor, IptablesFlavor, Kernel, KernelFactory, SystemIptables, Table};
pub use masq::Masquerade;
