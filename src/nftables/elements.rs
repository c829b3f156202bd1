//! What one service port adds to the ruleset (pure): map and set elements,
//! the dispatch chains they point at, and, for session affinity only, a few
//! chains and sets of its own. The decisions are iptables mode's (same
//! endpoint choice, masquerading, REJECT/DROP), so both modes answer every
//! packet alike.

use super::layout::{nf_family, proto, Entry, MapId, NftConfig, Pick, DROP, REJECT};
use crate::model::{categorize, Endpoint, Family, ServicePort};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use std::net::IpAddr;

/// One element: a key, and the value when the set is a map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    pub map: MapId,
    pub key: String,
    pub value: Option<String>,
}

/// A chain a service port owns (session affinity), with its rules.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OwnedChain {
    pub name: String,
    pub rules: Vec<String>,
}

/// A dynamic set a service port owns (session affinity): clients seen
/// lately by one endpoint, forgotten after the affinity timeout.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OwnedSet {
    pub name: String,
    pub timeout: u32,
}

/// Everything one service port adds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contribution {
    pub elements: Vec<Element>,
    /// Shared dispatch chains the elements jump to.
    pub dispatch: Vec<(Pick, usize)>,
    pub sets: Vec<OwnedSet>,
    /// In creation order: endpoint chains before the chains that jump to them.
    pub chains: Vec<OwnedChain>,
}

fn hash8(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let mut s = base32::encode(base32::Alphabet::Rfc4648 { padding: false }, &h.finalize());
    s.truncate(12);
    s.to_ascii_lowercase()
}

/// The address of a VIP tuple key.
fn vip_ip(key: &str) -> &str {
    key.split(" . ").next().unwrap_or_default()
}

/// `ip . proto . port`: a VIP tuple key.
fn vip_key(ip: &IpAddr, sp: &ServicePort) -> String {
    format!("{ip} . {} . {}", proto(sp.key.protocol), sp.port)
}

fn nodeport_key(sp: &ServicePort, np: u16) -> String {
    format!("{} . {np}", proto(sp.key.protocol))
}

/// The element of an endpoint as a map value: `ip . port`.
fn ep_value(ep: &Endpoint) -> String {
    format!("{} . {}", ep.ip, ep.port)
}

/// Affinity chain and set names of one service port. The timeout is part
/// of the names: a new timeout makes new sets (a set in use cannot be
/// changed or deleted in place), and the old ones go once unused.
struct AffinityNames {
    port_hash: String,
}

impl AffinityNames {
    fn of(sp: &ServicePort, timeout: u32) -> Self {
        AffinityNames {
            port_hash: hash8(&[
                &sp.name_string(),
                sp.key.protocol.lower(),
                &timeout.to_string(),
            ]),
        }
    }

    /// The chain that picks among `pick`'s endpoints, remembering clients.
    fn pick_chain(&self, local: bool) -> String {
        let kind = if local { "l" } else { "c" };
        format!("affinity-{kind}-{}", self.port_hash)
    }

    /// The chain (and set) of one endpoint.
    fn endpoint(&self, ep: &Endpoint) -> String {
        format!(
            "affinity-ep-{}",
            hash8(&[&self.port_hash, &ep.addr_string()])
        )
    }
}

/// The contribution of one service port to its family's ruleset.
pub fn contribution(sp: &ServicePort, cfg: &NftConfig) -> Contribution {
    let mut c = Contribution::default();
    let Some(cluster_ip) = sp.cluster_ip else {
        return c;
    };
    let cat = categorize(sp);
    let has_endpoints = cat.has_any;
    let has_local = has_endpoints && !cat.local.is_empty();
    let has_internal = if sp.internal_policy_local {
        has_local
    } else {
        has_endpoints
    };
    let has_external = if sp.external_policy_local {
        has_local
    } else {
        has_endpoints
    };
    let uses_fw = has_endpoints
        && !sp.load_balancer_ips.is_empty()
        && !sp.load_balancer_source_ranges.is_empty();
    let unreachable = if has_endpoints { DROP } else { REJECT };
    let affinity = sp.affinity_timeout.map(|t| (AffinityNames::of(sp, t), t));

    let mut el = |map: MapId, key: String, value: Option<String>| {
        c.elements.push(Element { map, key, value });
    };
    // A dispatch over `eps` for `key` into `pick`'s maps.
    let mut groups: Vec<(Pick, String, &[&Endpoint])> = Vec::new();

    // ClusterIP.
    let cip = vip_key(&cluster_ip, sp);
    if has_internal {
        let (entry, pick, eps) = if sp.internal_policy_local {
            (Entry::ClusterIpLocal, Pick::Local, &cat.local)
        } else {
            (Entry::ClusterIp, Pick::Cluster, &cat.cluster)
        };
        el(
            MapId::Vips,
            cip.clone(),
            Some(format!("goto {}", entry.chain())),
        );
        groups.push((pick, cip.clone(), eps));
    } else {
        el(
            MapId::NoEndpointInternal,
            cip.clone(),
            Some(unreachable.to_string()),
        );
    }

    // externalIPs and load balancer IPs.
    let external_entry = if sp.external_policy_local {
        Entry::ExternalLocal
    } else {
        Entry::External
    };
    let firewall_entry = if sp.external_policy_local {
        Entry::FirewallLocal
    } else {
        Entry::Firewall
    };
    let allow_from_node = sp
        .load_balancer_source_ranges
        .iter()
        .any(|n| cfg.node_ips.iter().any(|ip| n.contains(ip)));
    let externals = sp
        .external_ips
        .iter()
        .map(|ip| (ip, false))
        .chain(sp.load_balancer_ips.iter().map(|ip| (ip, true)));
    for (ip, is_lb) in externals {
        let key = vip_key(ip, sp);
        if has_endpoints {
            let entry = if is_lb && uses_fw {
                firewall_entry
            } else {
                external_entry
            };
            el(
                MapId::Vips,
                key.clone(),
                Some(format!("goto {}", entry.chain())),
            );
            groups.push((Pick::Cluster, key.clone(), &cat.cluster));
            if sp.external_policy_local && has_external {
                groups.push((Pick::Local, key.clone(), &cat.local));
            }
        }
        if is_lb && uses_fw {
            el(MapId::FirewallVips, key.clone(), None);
            for n in allowed_sources(sp, allow_from_node) {
                el(MapId::FirewallAllow, format!("{key} . {n}"), None);
            }
        }
        if !has_external {
            el(
                MapId::NoEndpointExternal,
                key,
                Some(unreachable.to_string()),
            );
        }
    }

    // NodePort.
    if let Some(np) = sp.node_port {
        let key = nodeport_key(sp, np);
        if has_endpoints {
            let entry = if sp.external_policy_local {
                Entry::NodePortLocal
            } else {
                Entry::NodePort
            };
            el(
                MapId::NodePorts,
                key.clone(),
                Some(format!("goto {}", entry.chain())),
            );
            groups.push((Pick::NodePortCluster, key.clone(), &cat.cluster));
            if sp.external_policy_local && has_external {
                groups.push((Pick::NodePortLocal, key.clone(), &cat.local));
            }
        }
        if !has_external {
            el(
                MapId::NoEndpointNodePorts,
                key,
                Some(unreachable.to_string()),
            );
        }
    }

    // A pod reaching itself through the Service is masqueraded.
    for ep in &cat.all_reachable {
        el(MapId::Hairpin, format!("{} . {}", ep.ip, ep.ip), None);
    }

    // Which of the cluster and local endpoint lists an affinity chain serves.
    let mut affinity_used = [false, false];
    for (pick, key, eps) in groups {
        if eps.is_empty() {
            continue;
        }
        let target = match &affinity {
            Some((names, _)) => {
                let local = matches!(pick, Pick::Local | Pick::NodePortLocal);
                affinity_used[usize::from(local)] = true;
                names.pick_chain(local)
            }
            None => {
                if !c.dispatch.contains(&(pick, eps.len())) {
                    c.dispatch.push((pick, eps.len()));
                }
                // The endpoint maps are per protocol: their key leaves it out.
                let bare = match pick {
                    Pick::Cluster | Pick::Local => format!("{} . {}", vip_ip(&key), sp.port),
                    Pick::NodePortCluster | Pick::NodePortLocal => {
                        key.rsplit(" . ").next().unwrap_or_default().to_string()
                    }
                };
                for (i, ep) in eps.iter().enumerate() {
                    c.elements.push(Element {
                        map: pick.eps(sp.key.protocol),
                        key: format!("{bare} . {i}"),
                        value: Some(ep_value(ep)),
                    });
                }
                pick.chain(eps.len())
            }
        };
        c.elements.push(Element {
            map: pick.groups(),
            key,
            value: Some(format!("goto {target}")),
        });
    }

    if let Some((names, timeout)) = &affinity {
        let lists = [&cat.cluster[..], &cat.local[..]];
        affinity_objects(sp, lists, affinity_used, names, *timeout, &mut c);
    }
    c.elements.sort();
    c.elements.dedup();
    c
}

/// The sources a load balancer with source ranges lets in: its ranges, and
/// its own IPs when the node is in a range (traffic the node sends to them).
/// An interval set refuses overlapping elements, and CIDRs overlap only by
/// one holding the other: those held by another are left out.
fn allowed_sources(sp: &ServicePort, allow_from_node: bool) -> Vec<IpNet> {
    let mut nets: Vec<IpNet> = sp.load_balancer_source_ranges.clone();
    if allow_from_node {
        nets.extend(sp.load_balancer_ips.iter().map(|ip| IpNet::from(*ip)));
    }
    nets.retain(|n| Family::of_net(n) == sp.key.family);
    crate::node::widest(&nets)
}

/// Session affinity as upstream's nftables mode does it: one dynamic set
/// of recent clients per endpoint, checked before the random pick.
fn affinity_objects(
    sp: &ServicePort,
    lists: [&[&Endpoint]; 2],
    used: [bool; 2],
    names: &AffinityNames,
    timeout: u32,
    c: &mut Contribution,
) {
    let nf = nf_family(sp.key.family);
    let mut endpoint_chains: Vec<OwnedChain> = Vec::new();
    for (i, eps) in lists.into_iter().enumerate() {
        if !used[i] || eps.is_empty() {
            continue;
        }
        let mut rules = Vec::new();
        for ep in eps {
            let e = names.endpoint(ep);
            rules.push(format!("{nf} saddr @{e} goto {e}"));
            if !endpoint_chains.iter().any(|c| c.name == e) {
                let dst = match ep.ip {
                    IpAddr::V4(ip) => format!("{ip}:{}", ep.port),
                    IpAddr::V6(ip) => format!("[{ip}]:{}", ep.port),
                };
                endpoint_chains.push(OwnedChain {
                    name: e.clone(),
                    rules: vec![format!(
                        "update @{e} {{ {nf} saddr }} meta l4proto {} dnat {nf} to {dst}",
                        proto(sp.key.protocol)
                    )],
                });
                c.sets.push(OwnedSet {
                    name: e.clone(),
                    timeout,
                });
            }
        }
        let picks: Vec<String> = eps
            .iter()
            .enumerate()
            .map(|(i, ep)| format!("{i} : goto {}", names.endpoint(ep)))
            .collect();
        rules.push(format!(
            "numgen random mod {} vmap {{ {} }}",
            eps.len(),
            picks.join(", ")
        ));
        c.chains.push(OwnedChain {
            name: names.pick_chain(i == 1),
            rules,
        });
    }
    // Endpoint chains first: the pick chains jump to them.
    let picks = std::mem::take(&mut c.chains);
    c.chains = endpoint_chains.into_iter().chain(picks).collect();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::numbered;

    #[test]
    fn overlapping_source_ranges_become_the_widest() {
        let mut sp = numbered(0, 1);
        sp.load_balancer_ips = vec!["10.0.0.3".parse().unwrap()];
        sp.load_balancer_source_ranges = ["10.1.0.0/16", "0.0.0.0/0", "10.1.2.0/24", "10.1.0.0/16"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let got = allowed_sources(&sp, true);
        assert_eq!(got, vec!["0.0.0.0/0".parse::<IpNet>().unwrap()]);
        sp.load_balancer_source_ranges = vec![
            "10.1.0.0/16".parse().unwrap(),
            "10.1.2.0/24".parse().unwrap(),
        ];
        let got: Vec<String> = allowed_sources(&sp, true)
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(got, ["10.0.0.3/32", "10.1.0.0/16"]);
    }
}
