//! Which endpoints each traffic policy uses (upstream's endpoint categorization).

use super::types::{Endpoint, ServicePort};

/// Endpoints a service port sends traffic to, split by traffic policy.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Categorized<'a> {
    /// Used by `Cluster` policy: ready endpoints, else serving+terminating ones.
    pub cluster: Vec<&'a Endpoint>,
    /// Used by `Local` policy: ready local endpoints, else serving+terminating local ones.
    pub local: Vec<&'a Endpoint>,
    /// Union of the two, in endpoint order: every endpoint some rule may DNAT to.
    pub all_reachable: Vec<&'a Endpoint>,
    /// Some endpoint anywhere can serve; without it the service REJECTs.
    pub has_any: bool,
}

/// Traffic uses cluster-wide endpoints for some destination.
/// (Externally reachable ports always do: their EXT chain sends pod and
/// node-local sources to the cluster-policy chain, whatever the policies.)
pub fn uses_cluster_endpoints(sp: &ServicePort) -> bool {
    !sp.internal_policy_local || sp.has_external()
}

/// Traffic uses node-local endpoints for some destination.
pub fn uses_local_endpoints(sp: &ServicePort) -> bool {
    sp.internal_policy_local || sp.external_local()
}

/// Topology hints apply only when every ready endpoint carries hints and some
/// ready endpoint is hinted for this node's zone (otherwise traffic could
/// blackhole), as upstream decides.
pub fn can_use_topology(eps: &[Endpoint], zone: &str) -> bool {
    let mut for_zone = false;
    for e in eps.iter().filter(|e| e.ready) {
        if e.zone_hints.is_empty() {
            return false;
        }
        for_zone |= e.zone_hints.iter().any(|h| h == zone);
    }
    for_zone
}

pub fn categorize(sp: &ServicePort) -> Categorized<'_> {
    let eps = &sp.endpoints;
    let serving_terminating = |e: &&Endpoint| e.serving && e.terminating;
    let mut c = Categorized::default();
    if uses_cluster_endpoints(sp) {
        let zone = sp
            .topology_zone
            .as_deref()
            .filter(|z| can_use_topology(eps, z));
        c.cluster = eps
            .iter()
            .filter(|e| e.ready && zone.is_none_or(|z| e.zone_hints.iter().any(|h| h == z)))
            .collect();
        if c.cluster.is_empty() {
            c.cluster = eps.iter().filter(serving_terminating).collect();
        }
        c.has_any = !c.cluster.is_empty();
    }
    if !uses_local_endpoints(sp) {
        c.all_reachable = c.cluster.clone();
        return c;
    }
    let local_ready: Vec<&Endpoint> = eps.iter().filter(|e| e.is_local && e.ready).collect();
    c.has_any |= eps.iter().any(|e| e.ready || (e.serving && e.terminating));
    c.local = if local_ready.is_empty() {
        eps.iter()
            .filter(|e| e.is_local && e.serving && e.terminating)
            .collect()
    } else {
        local_ready
    };
    c.all_reachable = eps
        .iter()
        .filter(|e| {
            c.cluster.iter().any(|x| std::ptr::eq(*x, *e))
                || c.local.iter().any(|x| std::ptr::eq(*x, *e))
        })
        .collect();
    c
}
