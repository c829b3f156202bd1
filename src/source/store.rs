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
}

#[derive(Debug, Default)]
pub struct Store {
    services: BTreeMap<ServiceKey, Service>,
    /// Slices by their own namespace/name.
    slices: BTreeMap<ServiceKey, EndpointSlice>,
    /// Service -> names of its slices.
    by_service: BTreeMap<ServiceKey, BTreeSet<ServiceKey>>,
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

impl Store {
    pub fn service(&self, key: &ServiceKey) -> Option<&Service> {
        self.services.get(key)
    }

    pub fn service_keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.services.keys()
    }

    pub fn slices_of(&self, key: &ServiceKey) -> Vec<&EndpointSlice> {
        self.by_service
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
            .collect()
    }

    pub fn len(&self) -> (usize, usize) {
        (self.services.len(), self.slices.len())
    }

    /// Applies an update; returns the Services whose inputs changed.
    pub fn apply(&mut self, update: Update) -> BTreeSet<ServiceKey> {
        let mut dirty = BTreeSet::new();
        match update {
            Update::Service(svc) => self.put_service(*svc, &mut dirty),
            Update::ServiceDeleted(key) => {
                if self.services.remove(&key).is_some() {
                    dirty.insert(key);
                }
            }
            Update::Slice(slice) => self.put_slice(*slice, &mut dirty),
            Update::SliceDeleted(key) => self.remove_slice(&key, &mut dirty),
            Update::ReplaceServices(list) => {
                let mut seen = BTreeSet::new();
                for svc in list {
                    seen.insert(key_of(&svc.metadata));
                    self.put_service(svc, &mut dirty);
                }
                let gone: Vec<ServiceKey> = self
                    .services
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for k in gone {
                    self.services.remove(&k);
                    dirty.insert(k);
                }
            }
            Update::ReplaceSlices(list) => {
                let mut seen = BTreeSet::new();
                for slice in list {
                    seen.insert(key_of(&slice.metadata));
                    self.put_slice(slice, &mut dirty);
                }
                let gone: Vec<ServiceKey> = self
                    .slices
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for k in gone {
                    self.remove_slice(&k, &mut dirty);
                }
            }
        }
        dirty
    }

    fn put_service(&mut self, svc: Service, dirty: &mut BTreeSet<ServiceKey>) {
        let key = key_of(&svc.metadata);
        if self.services.get(&key) != Some(&svc) {
            self.services.insert(key.clone(), svc);
            dirty.insert(key);
        }
    }

    fn put_slice(&mut self, slice: EndpointSlice, dirty: &mut BTreeSet<ServiceKey>) {
        let key = key_of(&slice.metadata);
        if self.slices.get(&key) == Some(&slice) {
            return;
        }
        // The owner may change if the label changed: unlink from the old one.
        self.remove_slice(&key, dirty);
        if let Some(owner) = slice_owner(&slice) {
            self.by_service
                .entry(owner.clone())
                .or_default()
                .insert(key.clone());
            dirty.insert(owner);
        }
        self.slices.insert(key, slice);
    }

    fn remove_slice(&mut self, key: &ServiceKey, dirty: &mut BTreeSet<ServiceKey>) {
        if let Some(old) = self.slices.remove(key) {
            if let Some(owner) = slice_owner(&old) {
                if let Some(set) = self.by_service.get_mut(&owner) {
                    set.remove(key);
                    if set.is_empty() {
                        self.by_service.remove(&owner);
                    }
                }
                dirty.insert(owner);
            }
        }
    }
}
