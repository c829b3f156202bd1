//! Keeps the desired service ports up to date as Services change. Pure.

use crate::backend::Ports;
use crate::model::{build_service, Built, NodeContext, ServiceKey, ServicePort, ServicePortKey};
use crate::source::Store;
use std::collections::{BTreeMap, BTreeSet};

/// Borrows each slice, as `build_service` takes them.
pub fn refs<T>(v: &[T]) -> Vec<&T> {
    v.iter().collect()
}

/// A service port before and after a rebuild (for conntrack cleanup).
pub type PortChange = (Option<ServicePort>, Option<ServicePort>);

/// Desired state, rebuilt per changed Service.
#[derive(Default)]
pub struct ModelCache {
    pub node: NodeContext,
    pub ports: Ports,
    by_service: BTreeMap<ServiceKey, Vec<ServicePortKey>>,
    /// Last error per Service, so each problem is logged once.
    errors: BTreeMap<ServiceKey, String>,
}

/// What a rebuild changed, and what to log about it.
#[derive(Debug, Default)]
pub struct Rebuild {
    pub changed: BTreeSet<ServicePortKey>,
    /// UDP service ports before and after (only UDP needs conntrack cleanup).
    pub changes: Vec<PortChange>,
    /// New problems (each names its object); repeats are not reported twice.
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl ModelCache {
    pub fn new(node: NodeContext) -> Self {
        ModelCache {
            node,
            ..Default::default()
        }
    }

    /// Rebuilds the given Services from the store.
    pub fn rebuild(&mut self, store: &Store, dirty: &BTreeSet<ServiceKey>) -> Rebuild {
        let mut out = Rebuild::default();
        for key in dirty {
            let built = store.service(key).map(|svc| {
                svc.and_then(|svc| {
                    let slices = store.slices_of(key)?;
                    build_service(&svc, &refs(&slices), &self.node)
                })
            });
            let new_ports: Vec<ServicePort> = match built {
                None => {
                    self.errors.remove(key);
                    vec![]
                }
                Some(Ok(b)) => {
                    if self.errors.remove(key).is_some() {
                        tracing::info!(service = %key, "service is valid again");
                    }
                    out.warnings.extend(b.warnings);
                    match b.built {
                        Built::Ports(p) => p,
                        Built::Ignored(_) => vec![],
                    }
                }
                Some(Err(e)) => {
                    // Keep whatever was programmed for it before.
                    if self.errors.get(key) != Some(&e) {
                        out.errors
                            .push(format!("{e}; skipped (previous rules, if any, kept)"));
                        self.errors.insert(key.clone(), e);
                    }
                    continue;
                }
            };
            let old_keys = self.by_service.remove(key).unwrap_or_default();
            let new_keys: Vec<ServicePortKey> = new_ports.iter().map(|p| p.key.clone()).collect();
            for k in &old_keys {
                if !new_keys.contains(k) {
                    let old = self.ports.remove(k);
                    out.changed.insert(k.clone());
                    if k.protocol == crate::model::Protocol::Udp {
                        out.changes.push((old, None));
                    }
                }
            }
            for p in new_ports {
                let old = self.ports.get(&p.key);
                if old != Some(&p) {
                    out.changed.insert(p.key.clone());
                    // Only UDP changes lead to conntrack cleanup: recording
                    // the others would copy every port at a full rebuild.
                    if p.key.protocol == crate::model::Protocol::Udp {
                        out.changes.push((old.cloned(), Some(p.clone())));
                    }
                    self.ports.insert(p.key.clone(), p);
                }
            }
            if !new_keys.is_empty() {
                self.by_service.insert(key.clone(), new_keys);
            }
        }
        out
    }
}
