//! The IPVS backend (`--proxy-mode ipvs`). The netlink wire format is in
//! [`wire`] (pure, byte-tested). Selecting ipvs mode is refused with a clear
//! error at startup until the backend's applier and its QEMU-guest tests land.

pub mod desired;
pub mod wire;
