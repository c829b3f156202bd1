//! The chains and jumps that do not depend on any Service: KUBE-POSTROUTING,
//! KUBE-MARK-MASQ, KUBE-FORWARD, KUBE-FIREWALL, the tail of KUBE-SERVICES, and
//! (the jumps from the built-in chains are [`crate::xtables::jumps`]'s). Pure.

use super::names::*;
use super::render::{Chain, RenderConfig, Shared, Table};
use crate::model::Family;

/// The fixed chains (same for every sync), by table.
pub fn render_fixed(cfg: &RenderConfig) -> Vec<Chain> {
    let mark = cfg.masq.mark();
    let random_fully = if cfg.masq.random_fully {
        " --random-fully"
    } else {
        ""
    };
    let mut out = vec![
        Chain {
            table: Table::Nat,
            name: KUBE_POSTROUTING.into(),
            rules: vec![
                format!("-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN"),
                format!("-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}"),
                format!(
                    "-A {KUBE_POSTROUTING} -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE{random_fully}"
                ),
            ],
        },
        Chain {
            table: Table::Nat,
            name: KUBE_MARK_MASQ.into(),
            rules: vec![format!("-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}")],
        },
        Chain {
            table: Table::Filter,
            name: KUBE_FORWARD.into(),
            rules: vec![
                format!(
                    "-A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark}/{mark} -j ACCEPT"
                ),
                format!(
                    "-A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
                ),
            ],
        },
    ];
    let mut firewall = Vec::new();
    if cfg.localhost_nodeports && cfg.family() == Family::V4 {
        firewall.push(format!(
            "-A {KUBE_FIREWALL} -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
        ));
    }
    out.push(Chain {
        table: Table::Filter,
        name: KUBE_FIREWALL.into(),
        rules: firewall,
    });
    out
}

/// The rules that end a shared chain, after every service's rules.
pub fn shared_tail(s: Shared, cfg: &RenderConfig) -> Vec<String> {
    if s != Shared::NatServices {
        return vec![];
    }
    let c = "\"kubernetes service nodeports; NOTE: this must be the last rule in this chain\"";
    let Some(ips) = crate::node::nodeport_ips(&cfg.nodeport_addresses, &cfg.node_ips) else {
        return vec![format!(
            "-A {KUBE_SERVICES} -m comment --comment {c} -m addrtype --dst-type LOCAL -j {KUBE_NODEPORTS}"
        )];
    };
    ips.into_iter()
        .map(|ip| {
            format!("-A {KUBE_SERVICES} -m comment --comment {c} -d {ip} -j {KUBE_NODEPORTS}")
        })
        .collect()
}
