//! "Large cluster mode", as upstream kube-proxy's iptables proxier has it.
//!
//! When one family programs more than [`LARGE_CLUSTER_ENDPOINTS`] endpoints,
//! the per-endpoint rules are rendered without their `-m comment`: both rules
//! of every KUBE-SEP chain, and the rules of KUBE-SVC/KUBE-SVL chains that
//! jump to a KUBE-SEP chain (the session-affinity checks and the random
//! split). Every other rule keeps its comment (KUBE-SERVICES, KUBE-NODEPORTS,
//! KUBE-EXT, KUBE-FW, the masquerade rule of a KUBE-SVC chain, filter rules).
//! That makes the nat table markedly smaller, which matters most with legacy
//! iptables, where every restore rewrites the whole table.
//!
//! The mode is a pure function of the model, decided afresh on every sync
//! (and by `render`) before any service port is rendered. A sync that flips it
//! re-renders and rewrites every chain, so the kernel never keeps a mix of
//! both styles beyond that one sync.

use super::render::RenderConfig;
use crate::model::{Family, ServicePort, ServicePortKey};
use std::collections::BTreeMap;

/// More endpoints than this in one family turns large cluster mode on
/// (upstream's `largeClusterEndpointsThreshold`).
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// Endpoints counted as upstream counts them: every endpoint of every
/// programmed service port, whatever its conditions (ready, serving,
/// terminating) and wherever it runs. The model already keeps only this
/// family's endpoints, deduplicated by `ip:port`; ports without a ClusterIP
/// of this family are not programmed and do not count.
pub fn total_endpoints<'a>(ports: impl IntoIterator<Item = &'a ServicePort>) -> usize {
    ports
        .into_iter()
        .filter(|p| p.cluster_ip.is_some())
        .map(|p| p.endpoints.len())
        .sum()
}

/// Whether `total` endpoints put a family in large cluster mode.
pub fn is_large(total: usize) -> bool {
    total > LARGE_CLUSTER_ENDPOINTS
}

/// Decides the mode of `cfg.family()` for a sync of `ports` (the whole desired
/// state, all families) and stores it in `cfg`. Answers true when the mode
/// changed: every chain must then be rendered and written again.
pub fn update_mode(cfg: &mut RenderConfig, ports: &BTreeMap<ServicePortKey, ServicePort>) -> bool {
    let family = cfg.family();
    let total = total_endpoints(ports.values().filter(|p| p.key.family == family));
    set_mode(cfg, total)
}

/// [`update_mode`] for a known total; logs a change once, at info.
pub fn set_mode(cfg: &mut RenderConfig, total: usize) -> bool {
    let large = is_large(total);
    if large == cfg.large_cluster {
        return false;
    }
    cfg.large_cluster = large;
    let family = match cfg.family() {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    };
    if large {
        tracing::info!(
            family,
            endpoints = total,
            threshold = LARGE_CLUSTER_ENDPOINTS,
            "large cluster mode on: {family} has {total} endpoints, more than {LARGE_CLUSTER_ENDPOINTS}; per-endpoint rules lose their comments"
        );
    } else {
        tracing::info!(
            family,
            endpoints = total,
            threshold = LARGE_CLUSTER_ENDPOINTS,
            "large cluster mode off: {family} has {total} endpoints, at most {LARGE_CLUSTER_ENDPOINTS}; per-endpoint rules get their comments back"
        );
    }
    true
}

/// `-m comment --comment <text> ` for a per-endpoint rule, or nothing in
/// large cluster mode (where `text` is never built). The text is printed as
/// given (quote it if it has spaces).
pub(crate) fn endpoint_comment(cfg: &RenderConfig, text: impl FnOnce() -> String) -> String {
    if cfg.large_cluster {
        String::new()
    } else {
        format!("-m comment --comment {} ", text())
    }
}

#[cfg(test)]
mod tests;
