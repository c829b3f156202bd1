//! What both modes' rules share about masquerading one IP family: which
//! traffic is "local" (pod ranges), masquerade-all, the mark bit and
//! `--random-fully` (pure).

use crate::cli::Settings;
use crate::model::Family;
use ipnet::IpNet;

/// The masquerade knobs of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade {
    pub family: Family,
    /// `--cluster-cidr` ranges of this family: pod traffic is "local".
    pub cluster_cidrs: Vec<IpNet>,
    pub masquerade_all: bool,
    /// `--iptables-masquerade-bit` (default 14 -> mark 0x4000).
    pub masquerade_bit: u8,
    /// Kernel supports MASQUERADE --random-fully.
    pub random_fully: bool,
}

impl Masquerade {
    pub fn new(family: Family) -> Self {
        Masquerade {
            family,
            cluster_cidrs: vec![],
            masquerade_all: false,
            masquerade_bit: 14,
            random_fully: true,
        }
    }

    /// The mark that asks KUBE-POSTROUTING to masquerade, e.g. `0x4000`.
    pub fn mark(&self) -> String {
        format!("{:#x}", 1u32 << self.masquerade_bit)
    }

    /// One per family the settings enable, IPv4 first.
    pub fn per_family(s: &Settings) -> Vec<Masquerade> {
        [(Family::V4, s.ipv4), (Family::V6, s.ipv6)]
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(family, _)| Masquerade {
                cluster_cidrs: s
                    .cluster_cidrs
                    .iter()
                    .filter(|n| Family::of_net(n) == family)
                    .cloned()
                    .collect(),
                masquerade_all: s.masquerade_all,
                masquerade_bit: s.masquerade_bit,
                ..Masquerade::new(family)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_follows_the_bit() {
        let mut m = Masquerade::new(Family::V4);
        assert_eq!(m.mark(), "0x4000");
        m.masquerade_bit = 0;
        assert_eq!(m.mark(), "0x1");
    }
}
