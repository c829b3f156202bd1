//! Facts about this node read from the host (imperative shell).

use crate::model::Family;
use std::net::IpAddr;
use std::process::Command;

/// Addresses configured on this host's interfaces (`ip -o addr show`).
pub fn local_addresses() -> Vec<IpAddr> {
    let Ok(out) = Command::new("ip").args(["-o", "addr", "show"]).output() else {
        return vec![];
    };
    parse_ip_addr(&String::from_utf8_lossy(&out.stdout))
}

/// This node's own addresses, for the VIP ownership rules: every address on
/// its interfaces but ipvs mode's kube-ipvs0 (which holds the Service VIPs
/// themselves).
pub fn own_addresses() -> Vec<IpAddr> {
    let Ok(out) = Command::new("ip").args(["-o", "addr", "show"]).output() else {
        return vec![];
    };
    parse_own_addresses(&String::from_utf8_lossy(&out.stdout))
}

/// [`parse_ip_addr`] without the lines of kube-ipvs0.
pub fn parse_own_addresses(text: &str) -> Vec<IpAddr> {
    let skip = crate::ipvs::link::DUMMY_LINK;
    let kept: String = text
        .lines()
        .filter(|l| l.split_whitespace().nth(1) != Some(skip))
        .map(|l| format!("{l}\n"))
        .collect();
    parse_ip_addr(&kept)
}

/// Parses `ip -o addr show` lines: `2: eth0    inet 10.0.0.5/24 brd ... scope global eth0`.
pub fn parse_ip_addr(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        while let Some(tok) = it.next() {
            if tok == "inet" || tok == "inet6" {
                if let Some(addr) = it.next().and_then(|a| a.split('/').next()) {
                    if let Ok(ip) = addr.parse::<IpAddr>() {
                        out.push(ip);
                    }
                }
                break;
            }
        }
    }
    out
}

pub fn of_family(ips: &[IpAddr], family: Family) -> Vec<IpAddr> {
    ips.iter()
        .filter(|ip| Family::of(ip) == family)
        .cloned()
        .collect()
}

/// The node addresses NodePorts answer on, from `--nodeport-addresses`
/// (`nets`) and this node's addresses of the family: `None` means every
/// local address (no ranges given, or a /0 among them).
pub fn nodeport_ips(nets: &[ipnet::IpNet], node_ips: &[IpAddr]) -> Option<Vec<IpAddr>> {
    if nets.is_empty() || nets.iter().any(|n| n.prefix_len() == 0) {
        return None;
    }
    let mut ips: Vec<IpAddr> = node_ips
        .iter()
        .filter(|ip| nets.iter().any(|n| n.contains(*ip)))
        .copied()
        .collect();
    ips.sort();
    ips.dedup();
    Some(ips)
}

/// `--nodeport-addresses primary`: NodePorts of `family` follow the Node
/// object's primary IPs (`ips`, both families). Updates the family's ranges
/// and node addresses; true when they changed.
pub fn follow_primary(
    family: Family,
    ips: &[IpAddr],
    nets: &mut Vec<ipnet::IpNet>,
    node_ips: &mut Vec<IpAddr>,
) -> bool {
    let mine: Vec<IpAddr> = ips
        .iter()
        .filter(|ip| Family::of(ip) == family)
        .copied()
        .collect();
    let want: Vec<ipnet::IpNet> = mine.iter().map(|ip| ipnet::IpNet::from(*ip)).collect();
    if *nets == want {
        return false;
    }
    for ip in mine {
        if !node_ips.contains(&ip) {
            node_ips.push(ip);
        }
    }
    *nets = want;
    true
}

/// `nets` without those another one holds (CIDRs overlap only so), without
/// duplicates, sorted: what an nftables interval set accepts.
pub fn widest(nets: &[ipnet::IpNet]) -> Vec<ipnet::IpNet> {
    let mut all: Vec<ipnet::IpNet> = nets.iter().map(ipnet::IpNet::trunc).collect();
    all.sort_by_key(|n| (n.prefix_len(), n.addr()));
    all.dedup();
    let mut kept: Vec<ipnet::IpNet> = Vec::new();
    for n in all {
        if !kept.iter().any(|k| k.contains(&n)) {
            kept.push(n);
        }
    }
    kept.sort();
    kept
}

/// One sysctl to hold at a value, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    /// Relative to /proc/sys, e.g. `net/ipv4/vs/conntrack`.
    pub key: &'static str,
    pub value: &'static str,
    pub why: &'static str,
}

/// Writes a sysctl under /proc/sys, logging what changed.
pub fn set_sysctl(name: &str, value: &str) -> std::io::Result<()> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    let current = std::fs::read_to_string(&path)?;
    if current.trim() != value {
        std::fs::write(&path, value)?;
        tracing::info!(
            sysctl = name,
            from = current.trim(),
            to = value,
            "set sysctl"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodeports_follow_ranges_and_primary_ips() {
        let node: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "192.168.1.2".parse().unwrap()];
        assert_eq!(nodeport_ips(&[], &node), None);
        assert_eq!(nodeport_ips(&["0.0.0.0/0".parse().unwrap()], &node), None);
        assert_eq!(
            nodeport_ips(&["10.0.0.0/8".parse().unwrap()], &node),
            Some(vec!["10.0.0.5".parse().unwrap()])
        );
        let (mut nets, mut ips) = (vec![], node.clone());
        let primary: Vec<IpAddr> = vec!["10.0.0.9".parse().unwrap(), "fd00::9".parse().unwrap()];
        assert!(follow_primary(Family::V4, &primary, &mut nets, &mut ips));
        assert_eq!(nets, vec!["10.0.0.9/32".parse::<ipnet::IpNet>().unwrap()]);
        assert!(ips.contains(&"10.0.0.9".parse().unwrap()));
        assert!(
            !follow_primary(Family::V4, &primary, &mut nets, &mut ips),
            "unchanged"
        );
    }

    #[test]
    fn widest_leaves_out_held_ranges() {
        let nets: Vec<ipnet::IpNet> = [
            "10.244.0.0/16",
            "10.0.0.0/8",
            "10.0.0.0/8",
            "192.168.0.0/16",
        ]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
        let got: Vec<String> = widest(&nets).iter().map(|n| n.to_string()).collect();
        assert_eq!(got, ["10.0.0.0/8", "192.168.0.0/16"]);
    }

    #[test]
    fn parses_addresses() {
        let text = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n1: lo    inet6 ::1/128 scope host \n2: eth0    inet 10.0.0.5/24 brd 10.0.0.255 scope global eth0\n";
        let ips = parse_ip_addr(text);
        assert_eq!(ips.len(), 3);
        assert_eq!(ips[2], "10.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(of_family(&ips, Family::V6).len(), 1);
        let with_vips = format!("{text}9: kube-ipvs0    inet 10.96.0.10/32 scope global kube-ipvs0\\       valid_lft forever\n");
        assert_eq!(parse_ip_addr(&with_vips).len(), 4);
        assert_eq!(parse_own_addresses(&with_vips), ips);
    }
}
