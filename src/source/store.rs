//! The objects the sources delivered, joined Service <- EndpointSlices.

use crate::model::build::SERVICE_NAME_LABEL;
use crate::model::ServiceKey;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{BTreeMap, BTreeSet};

/// A change delivered by a source.
#[derive(Debug, Clone)]
pub enum Update {
    Service(Box<Service>),
    ServiceDeleted(ServiceKey),
    Slice(Box<EndpointSlice>),
    SliceDeleted(ServiceKey),
    /// A complete listing of Services (after a (re)list).
    ReplaceServices(Vec<Service>),
    /// A complete listing of EndpointSlices.
    ReplaceSlices(Vec<EndpointSlice>),
    /// A (re)list of a kind begins: the objects that follow (as `Service` or
    /// `Slice`) are its complete contents, up to `ListDone`. Streaming a
    /// listing object by object keeps only one decoded object in memory at a
    /// time instead of the whole list.
    ListBegin(super::Kind),
    /// The listing is complete: objects of the kind it did not name are gone.
    ListDone(super::Kind),
}

/// The last state of every object, kept packed: each object is stored as
/// compact JSON without the fields the proxy never reads, and decoded again
/// only for the Services a sync rebuilds. At 10,000 Services x 5 endpoints
/// the decoded k8s-openapi objects took ~100 MB; packed they take ~15 MB,
/// and decoding the handful of Services a change touches costs microseconds.
#[derive(Debug, Default)]
pub struct Store {
    services: BTreeMap<ServiceKey, Packed>,
    /// Slices by their own namespace/name, with the name of the Service they
    /// belong to (in the slice's namespace).
    slices: BTreeMap<ServiceKey, (Option<Box<str>>, Packed)>,
    /// (Service, name of one of its slices): the slices of a Service are
    /// adjacent. A set of pairs, not a set per Service: a Service has one
    /// slice or a few, and a `BTreeSet` each took ~0.5 kB per Service.
    by_service: BTreeSet<(ServiceKey, String)>,
    /// Keys seen since `ListBegin`, per kind being listed.
    listing_services: Option<BTreeSet<ServiceKey>>,
    listing_slices: Option<BTreeSet<ServiceKey>>,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ServiceKey {
    ServiceKey {
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        name: meta.name.clone().unwrap_or_default(),
    }
}

/// The Service a slice belongs to (by the `kubernetes.io/service-name` label).
pub fn slice_owner(slice: &EndpointSlice) -> Option<ServiceKey> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ServiceKey {
        namespace: slice
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: name.clone(),
    })
}

/// The keys a listing did not name.
fn unseen<'a>(
    keys: impl Iterator<Item = &'a ServiceKey>,
    seen: &BTreeSet<ServiceKey>,
) -> Vec<ServiceKey> {
    keys.filter(|k| !seen.contains(*k)).cloned().collect()
}

/// One object as compact JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Packed(Box<[u8]>);

impl Packed {
    fn of<T: serde::Serialize>(o: &T) -> Packed {
        // Serializing a k8s-openapi object into memory cannot fail: every
        // field is plain data with string map keys.
        Packed(
            serde_json::to_vec(o)
                .expect("k8s objects serialize")
                .into_boxed_slice(),
        )
    }

    fn open<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        key: &ServiceKey,
    ) -> Result<T, String> {
        serde_json::from_slice(&self.0)
            .map_err(|e| format!("{what} {key}: stored copy does not decode: {e}"))
    }
}

/// Drops what no part of the proxy reads (bookkeeping metadata but a
/// Service's UID and creationTimestamp, the Service's selector and
/// conditions, endpoints' target references), so
/// that the packed copy is small and an update that changes only those
/// fields is not a change.
fn strip_meta(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    meta.managed_fields = None;
    meta.resource_version = None;
    meta.uid = None;
    meta.generation = None;
    meta.creation_timestamp = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

fn strip_service(mut svc: Service) -> Service {
    // A Service's age and UID decide which of two claims on the same
    // externalIP/LoadBalancer IP wins (model::ownership); they never change
    // for one object, so keeping them adds no changes.
    let (uid, created) = (
        svc.metadata.uid.take(),
        svc.metadata.creation_timestamp.take(),
    );
    strip_meta(&mut svc.metadata);
    svc.metadata.uid = uid;
    svc.metadata.creation_timestamp = created;
    if let Some(spec) = svc.spec.as_mut() {
        spec.selector = None;
    }
    if let Some(status) = svc.status.as_mut() {
        status.conditions = None;
    }
    svc
}

fn strip_slice(mut slice: EndpointSlice) -> EndpointSlice {
    strip_meta(&mut slice.metadata);
    // Only the trigger-time annotation is read, before the store sees it.
    slice.metadata.annotations = None;
    for e in &mut slice.endpoints {
        e.target_ref = None;
        e.deprecated_topology = None;
    }
    slice
}

impl Store {
    /// The Service as stored (stripped of what the proxy does not read).
    /// An error (a stored copy that does not decode) is to be handled like a
    /// Service that fails validation: its previous rules stay.
    pub fn service(&self, key: &ServiceKey) -> Option<Result<Service, String>> {
        Some(self.services.get(key)?.open("Service", key))
    }

    /// Whether a listing of either kind is in progress: the store then holds
    /// a mix of old and new objects, not worth programming.
    pub fn listing(&self) -> bool {
        self.listing_services.is_some() || self.listing_slices.is_some()
    }

    pub fn listing_kind(&self, kind: super::Kind) -> bool {
        match kind {
            super::Kind::Services => self.listing_services.is_some(),
            super::Kind::EndpointSlices => self.listing_slices.is_some(),
        }
    }

    pub fn service_keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.services.keys()
    }

    pub fn slices_of(&self, key: &ServiceKey) -> Result<Vec<EndpointSlice>, String> {
        self.by_service
            .range((key.clone(), String::new())..)
            .take_while(|(owner, _)| owner == key)
            .map(|(_, name)| ServiceKey {
                namespace: key.namespace.clone(),
                name: name.clone(),
            })
            .filter_map(|k| Some(self.slices.get(&k)?.1.open("EndpointSlice", &k)))
            .collect()
    }

    pub fn len(&self) -> (usize, usize) {
        (self.services.len(), self.slices.len())
    }

    /// Applies an update; returns the Services whose inputs changed.
    pub fn apply(&mut self, update: Update) -> BTreeSet<ServiceKey> {
        let mut dirty = BTreeSet::new();
        match update {
            Update::Service(svc) => {
                if let Some(seen) = self.listing_services.as_mut() {
                    seen.insert(key_of(&svc.metadata));
                }
                self.put_service(*svc, &mut dirty)
            }
            Update::ServiceDeleted(key) => {
                if self.services.remove(&key).is_some() {
                    dirty.insert(key);
                }
            }
            Update::Slice(slice) => {
                if let Some(seen) = self.listing_slices.as_mut() {
                    seen.insert(key_of(&slice.metadata));
                }
                self.put_slice(*slice, &mut dirty)
            }
            Update::ListBegin(super::Kind::Services) => {
                self.listing_services = Some(BTreeSet::new());
            }
            Update::ListBegin(super::Kind::EndpointSlices) => {
                self.listing_slices = Some(BTreeSet::new());
            }
            Update::ListDone(super::Kind::Services) => match self.listing_services.take() {
                Some(seen) => self.retain_services(&seen, &mut dirty),
                None => tracing::warn!("end of a Service listing that never began; ignored"),
            },
            Update::ListDone(super::Kind::EndpointSlices) => match self.listing_slices.take() {
                Some(seen) => self.retain_slices(&seen, &mut dirty),
                None => tracing::warn!("end of an EndpointSlice listing that never began; ignored"),
            },
            Update::SliceDeleted(key) => self.remove_slice(&key, &mut dirty),
            Update::ReplaceServices(list) => {
                let mut seen = BTreeSet::new();
                for svc in list {
                    seen.insert(key_of(&svc.metadata));
                    self.put_service(svc, &mut dirty);
                }
                self.retain_services(&seen, &mut dirty);
            }
            Update::ReplaceSlices(list) => {
                let mut seen = BTreeSet::new();
                for slice in list {
                    seen.insert(key_of(&slice.metadata));
                    self.put_slice(slice, &mut dirty);
                }
                self.retain_slices(&seen, &mut dirty);
            }
        }
        dirty
    }

    fn retain_services(&mut self, seen: &BTreeSet<ServiceKey>, dirty: &mut BTreeSet<ServiceKey>) {
        for k in unseen(self.services.keys(), seen) {
            self.services.remove(&k);
            dirty.insert(k);
        }
    }

    fn retain_slices(&mut self, seen: &BTreeSet<ServiceKey>, dirty: &mut BTreeSet<ServiceKey>) {
        for k in unseen(self.slices.keys(), seen) {
            self.remove_slice(&k, dirty);
        }
    }

    fn put_service(&mut self, svc: Service, dirty: &mut BTreeSet<ServiceKey>) {
        let key = key_of(&svc.metadata);
        let packed = Packed::of(&strip_service(svc));
        if self.services.get(&key) != Some(&packed) {
            self.services.insert(key.clone(), packed);
            dirty.insert(key);
        }
    }

    fn put_slice(&mut self, slice: EndpointSlice, dirty: &mut BTreeSet<ServiceKey>) {
        let key = key_of(&slice.metadata);
        let owner = slice_owner(&slice);
        let packed = Packed::of(&strip_slice(slice));
        if self.slices.get(&key).map(|s| &s.1) == Some(&packed) {
            return;
        }
        // The owner may change if the label changed: unlink from the old one.
        self.remove_slice(&key, dirty);
        let owner_name = owner.map(|owner| {
            self.by_service.insert((owner.clone(), key.name.clone()));
            let name = owner.name.clone().into_boxed_str();
            dirty.insert(owner);
            name
        });
        self.slices.insert(key, (owner_name, packed));
    }

    fn remove_slice(&mut self, key: &ServiceKey, dirty: &mut BTreeSet<ServiceKey>) {
        if let Some((Some(owner_name), _)) = self.slices.remove(key) {
            // A slice belongs to a Service of its own namespace.
            let owner = ServiceKey {
                namespace: key.namespace.clone(),
                name: owner_name.into(),
            };
            let link = (owner, key.name.clone());
            self.by_service.remove(&link);
            dirty.insert(link.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Kind;

    fn svc(name: &str, ip: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": "7", "uid": "u-1",
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}",
                                         "service.kubernetes.io/topology-mode": "Auto"}},
            "spec": {"clusterIP": ip, "selector": {"app": name},
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]},
                       "conditions": [{"type": "X", "status": "True", "reason": "R", "message": "",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap()
    }

    fn slice(name: &str, owner: &str, ip: &str) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": "3",
                         "labels": {SERVICE_NAME_LABEL: owner},
                         "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "x"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": true},
                           "targetRef": {"kind": "Pod", "name": "p", "namespace": "ns"}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap()
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[test]
    fn objects_come_back_without_what_the_proxy_never_reads() {
        let mut st = Store::default();
        st.apply(Update::Service(Box::new(svc("a", "10.0.0.1"))));
        st.apply(Update::Slice(Box::new(slice("a-1", "a", "10.1.0.1"))));
        let s = st.service(&key("a")).unwrap().unwrap();
        assert_eq!(
            s.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(s.spec.as_ref().unwrap().selector, None);
        assert_eq!(s.metadata.resource_version, None);
        // Kept: they rank claims on the same VIP (model::ownership).
        assert_eq!(s.metadata.uid.as_deref(), Some("u-1"));
        let ann = s.metadata.annotations.unwrap();
        assert_eq!(ann.len(), 1, "{ann:?}");
        let status = s.status.unwrap();
        assert!(status.conditions.is_none());
        assert_eq!(
            status.load_balancer.unwrap().ingress.unwrap()[0]
                .ip
                .as_deref(),
            Some("192.0.2.9")
        );
        let sl = st.slices_of(&key("a")).unwrap();
        assert_eq!(sl.len(), 1);
        assert_eq!(sl[0].endpoints[0].addresses, vec!["10.1.0.1"]);
        assert!(sl[0].endpoints[0].target_ref.is_none());
        assert!(sl[0].metadata.annotations.is_none());
    }

    #[test]
    fn a_change_only_in_bookkeeping_fields_is_not_a_change() {
        let mut st = Store::default();
        assert_eq!(
            st.apply(Update::Service(Box::new(svc("a", "10.0.0.1"))))
                .len(),
            1
        );
        let mut again = svc("a", "10.0.0.1");
        again.metadata.resource_version = Some("8".into());
        again.spec.as_mut().unwrap().selector = None;
        assert!(st.apply(Update::Service(Box::new(again))).is_empty());
        assert_eq!(
            st.apply(Update::Service(Box::new(svc("a", "10.0.0.2")))),
            [key("a")].into()
        );
    }

    #[test]
    fn a_streamed_listing_replaces_what_it_did_not_name() {
        let mut st = Store::default();
        for n in ["a", "b"] {
            st.apply(Update::Service(Box::new(svc(n, "10.0.0.1"))));
            st.apply(Update::Slice(Box::new(slice(
                &format!("{n}-1"),
                n,
                "10.1.0.1",
            ))));
        }
        // A relist that names a (unchanged) and a's slice with a new address.
        assert!(st.apply(Update::ListBegin(Kind::Services)).is_empty());
        assert!(st
            .apply(Update::Service(Box::new(svc("a", "10.0.0.1"))))
            .is_empty());
        // b is only gone once the listing is complete.
        assert!(st.service(&key("b")).is_some());
        assert_eq!(
            st.apply(Update::ListDone(Kind::Services)),
            [key("b")].into()
        );
        assert!(st.service(&key("b")).is_none());
        st.apply(Update::ListBegin(Kind::EndpointSlices));
        assert_eq!(
            st.apply(Update::Slice(Box::new(slice("a-1", "a", "10.1.0.2")))),
            [key("a")].into()
        );
        assert_eq!(
            st.apply(Update::ListDone(Kind::EndpointSlices)),
            [key("b")].into()
        );
        assert_eq!(st.len(), (1, 1));
        // Outside a listing, objects are simply added.
        st.apply(Update::Service(Box::new(svc("c", "10.0.0.3"))));
        assert_eq!(st.len(), (2, 1));
        // An end without a beginning removes nothing.
        assert!(st.apply(Update::ListDone(Kind::Services)).is_empty());
        assert_eq!(st.len(), (2, 1));
    }

    #[test]
    fn slices_follow_their_service_label() {
        let mut st = Store::default();
        let names = |st: &Store, svc: &str| -> Vec<String> {
            st.slices_of(&key(svc))
                .unwrap()
                .into_iter()
                .map(|s| s.metadata.name.unwrap())
                .collect()
        };
        // Services whose names share a prefix keep their slices apart.
        for (slice_name, owner) in [("a-2", "a"), ("a-1", "a"), ("ab-1", "ab"), ("a-b-1", "a-b")] {
            st.apply(Update::Slice(Box::new(slice(
                slice_name, owner, "10.1.0.1",
            ))));
        }
        assert_eq!(names(&st, "a"), ["a-1", "a-2"]);
        assert_eq!(names(&st, "ab"), ["ab-1"]);
        assert_eq!(names(&st, "a-b"), ["a-b-1"]);
        assert!(names(&st, "b").is_empty());
        // Relabelled: both Services change.
        assert_eq!(
            st.apply(Update::Slice(Box::new(slice("a-2", "ab", "10.1.0.1")))),
            [key("a"), key("ab")].into()
        );
        assert_eq!(names(&st, "a"), ["a-1"]);
        assert_eq!(names(&st, "ab"), ["a-2", "ab-1"]);
        assert_eq!(
            st.apply(Update::SliceDeleted(key("a-2"))),
            [key("ab")].into()
        );
        assert_eq!(names(&st, "ab"), ["ab-1"]);
        // A slice in another namespace is another Service's.
        let mut other = slice("a-3", "a", "10.1.0.1");
        other.metadata.namespace = Some("other".into());
        st.apply(Update::Slice(Box::new(other)));
        assert_eq!(names(&st, "a"), ["a-1"]);
        assert_eq!(st.len(), (0, 4));
    }
}
