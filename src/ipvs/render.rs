//! `render --proxy-mode ipvs`: the desired IPVS state as text (pure).

use super::desired::IpvsConfig;
use super::ipset::{self, SetEntries};
use super::iptables_rules;
use super::state::Aggregate;
use super::wire::ServiceId;
use super::IpvsSettings;
use crate::model::{Family, ServicePort};
use crate::xtables::jumps;
use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

fn addr_port(ip: &IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Virtual servers, kube-ipvs0 addresses, ipsets and iptables payloads for
/// `ports`, with NodePorts on `node_ips` (filtered by --nodeport-addresses).
pub fn render(ports: &[ServicePort], s: &IpvsSettings, node_ips: &[IpAddr]) -> String {
    let cfg = IpvsConfig {
        scheduler: s.scheduler.clone(),
        node_ips: node_ips
            .iter()
            .filter(|ip| {
                s.nodeport_addresses.is_empty()
                    || s.nodeport_addresses.iter().any(|n| n.contains(*ip))
            })
            .copied()
            .collect(),
        drain_timeout: s.drain_timeout,
        host_addresses: node_ips.iter().copied().collect(),
        primary_ips: vec![],
    };
    let mut agg = Aggregate::default();
    for p in ports {
        agg.set(&p.key, Some(p), &cfg);
    }
    let mut out = String::new();
    out.push_str("# IPVS virtual servers (as ipvsadm -Ln lists them)\n");
    out.push_str(
        "# Prot LocalAddress:Port Scheduler Flags\n#   -> RemoteAddress:Port Forward Weight\n",
    );
    let ids: BTreeSet<&ServiceId> = agg.service_ids().collect();
    for id in ids {
        let Some((vs, dests)) = agg.service(id) else {
            continue;
        };
        let flags = vs
            .persistence
            .map(|t| format!(" persistent {t}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{}  {} {}{flags}",
            id.protocol.upper(),
            addr_port(&id.addr, id.port),
            vs.scheduler
        );
        for d in dests {
            let _ = writeln!(
                out,
                "  -> {:<28} Masq    {}",
                addr_port(&d.addr, d.port),
                d.weight
            );
        }
    }
    out.push_str("# kube-ipvs0 addresses\n");
    for a in agg.addresses() {
        let _ = writeln!(out, "{a}/{}", Family::of(&a).host_prefix());
    }
    for g in &s.families {
        let f = g.family;
        let entries = agg.entries(f);
        if f == Family::V6 && entries.is_empty() {
            continue;
        }
        out.push_str(&format!("# ipset restore -exist payload ({f:?})\n"));
        out.push_str(&ipset::restore_text(f, &SetEntries::new(), &entries));
        let tool = if f == Family::V4 {
            "iptables"
        } else {
            "ip6tables"
        };
        out.push_str(&format!("# {tool}-restore --noflush payload\n"));
        out.push_str(&iptables_rules::render(
            g,
            &agg.nonempty(f),
            &agg.out_filter(f),
        ));
        out.push_str(&jumps::describe(tool, &jumps::ipvs_mode()));
    }
    out
}
