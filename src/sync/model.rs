//! Keeps the desired service ports up to date as Services change. Pure.

use crate::backend::Ports;
use crate::model::{
    build_service, Built, Family, NodeContext, Protocol, ServiceKey, ServicePort, ServicePortKey,
    ServicePortName,
};
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
    /// By key, so the ports of one Service are adjacent (keys order by
    /// namespace and name first).
    pub ports: Ports,
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
            let gone: Vec<ServicePortKey> = self
                .ports_of(key)
                .filter(|k| !new_ports.iter().any(|p| p.key == **k))
                .cloned()
                .collect();
            for k in gone {
                let old = self.ports.remove(&k);
                if k.protocol == Protocol::Udp {
                    out.changes.push((old, None));
                }
                out.changed.insert(k);
            }
            for p in new_ports {
                let old = self.ports.get(&p.key);
                if old != Some(&p) {
                    out.changed.insert(p.key.clone());
                    // Only UDP changes lead to conntrack cleanup: recording
                    // the others would copy every port at a full rebuild.
                    if p.key.protocol == Protocol::Udp {
                        out.changes.push((old.cloned(), Some(p.clone())));
                    }
                    self.ports.insert(p.key.clone(), p);
                }
            }
        }
        out
    }

    /// The keys of the programmed ports of one Service.
    fn ports_of<'a>(&'a self, key: &'a ServiceKey) -> impl Iterator<Item = &'a ServicePortKey> {
        // The least key of this Service: empty port name, then the least
        // protocol and family.
        let first = ServicePortKey {
            name: ServicePortName {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                port: String::new(),
            },
            protocol: Protocol::Tcp,
            family: Family::V4,
        };
        self.ports
            .range(first..)
            .map(|(k, _)| k)
            .take_while(move |k| k.name.namespace == key.namespace && k.name.name == key.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Update;
    use k8s_openapi::api::core::v1::Service;

    fn svc(name: &str, ip: &str, ports: serde_json::Value) -> Update {
        let s: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"clusterIP": ip, "ports": ports}
        }))
        .unwrap();
        Update::Service(Box::new(s))
    }

    fn names(m: &ModelCache) -> Vec<String> {
        m.ports
            .keys()
            .map(|k| format!("{}/{}", k.name, k.protocol.lower()))
            .collect()
    }

    #[test]
    fn a_rebuild_replaces_exactly_the_ports_of_its_service() {
        let mut store = Store::default();
        let mut m = ModelCache::new(NodeContext::default());
        let two = serde_json::json!([
            {"name": "http", "port": 80, "protocol": "TCP"},
            {"name": "dns", "port": 53, "protocol": "UDP"}
        ]);
        let one = serde_json::json!([{"name": "http", "port": 80, "protocol": "TCP"}]);
        let mut dirty = BTreeSet::new();
        dirty.extend(store.apply(svc("a", "10.0.0.1", two.clone())));
        dirty.extend(store.apply(svc("a-b", "10.0.0.2", two)));
        dirty.extend(store.apply(svc("ab", "10.0.0.3", serde_json::json!([{"port": 80}]))));
        assert_eq!(m.rebuild(&store, &dirty).changed.len(), 5);
        assert_eq!(
            names(&m),
            [
                "ns/a:dns/udp",
                "ns/a:http/tcp",
                "ns/a-b:dns/udp",
                "ns/a-b:http/tcp",
                "ns/ab/tcp"
            ]
        );
        // a loses its UDP port: only that one changes (and needs conntrack).
        let dirty = store.apply(svc("a", "10.0.0.1", one));
        let r = m.rebuild(&store, &dirty);
        assert_eq!(r.changed.len(), 1);
        assert_eq!(r.changes.len(), 1);
        assert!(r.changes[0].0.is_some() && r.changes[0].1.is_none());
        assert_eq!(
            names(&m),
            [
                "ns/a:http/tcp",
                "ns/a-b:dns/udp",
                "ns/a-b:http/tcp",
                "ns/ab/tcp"
            ]
        );
        // a-b goes away: its ports, and only those.
        let dirty = store.apply(Update::ServiceDeleted(ServiceKey {
            namespace: "ns".into(),
            name: "a-b".into(),
        }));
        assert_eq!(m.rebuild(&store, &dirty).changed.len(), 2);
        assert_eq!(names(&m), ["ns/a:http/tcp", "ns/ab/tcp"]);
    }
}
