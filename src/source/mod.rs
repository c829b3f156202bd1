//! Sources of truth: the API server (watch) and a directory of manifests.

pub mod dir;
pub mod kube;
pub mod store;

pub use store::{Store, Update};

/// What a source sends to the sync loop.
#[derive(Debug)]
pub enum SourceMsg {
    Update(Update),
    /// The source delivered its complete initial state for a kind.
    Synced(Kind),
    /// What this node's Node object says.
    Node(NodeInfo),
}

/// The parts of this node's Node object the proxy uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
    /// False while the node is being deleted (or drained by the autoscaler):
    /// `/healthz` then fails so load balancers stop sending traffic here.
    pub eligible: bool,
    /// Primary addresses: InternalIP, else ExternalIP, one per family.
    pub primary_ips: Vec<std::net::IpAddr>,
    /// Every InternalIP and ExternalIP: addresses an externalIP may not take.
    pub addresses: Vec<std::net::IpAddr>,
}

impl NodeInfo {
    pub fn of(node: &k8s_openapi::api::core::v1::Node) -> Self {
        let zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("topology.kubernetes.io/zone"))
            .filter(|z| !z.is_empty())
            .cloned();
        let deleting = node.metadata.deletion_timestamp.is_some();
        let to_be_deleted = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == "ToBeDeletedByClusterAutoscaler"));
        let addrs = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        let mut primary_ips: Vec<std::net::IpAddr> = Vec::new();
        let mut addresses: Vec<std::net::IpAddr> = Vec::new();
        for kind in ["InternalIP", "ExternalIP"] {
            for a in addrs.into_iter().flatten().filter(|a| a.type_ == kind) {
                if let Ok(ip) = a.address.parse::<std::net::IpAddr>() {
                    if !primary_ips.iter().any(|p| p.is_ipv4() == ip.is_ipv4()) {
                        primary_ips.push(ip);
                    }
                    if !addresses.contains(&ip) {
                        addresses.push(ip);
                    }
                }
            }
        }
        NodeInfo {
            zone,
            eligible: !deleting && !to_be_deleted,
            primary_ips,
            addresses,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Services,
    EndpointSlices,
}

/// Where objects come from: `--source dir:PATH`, or the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Dir(std::path::PathBuf),
    ApiServer,
}

impl std::str::FromStr for SourceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("dir:") {
            if p.is_empty() {
                return Err("dir: needs a path, e.g. dir:/etc/kube-proxy-rs/objects".into());
            }
            Ok(SourceSpec::Dir(p.into()))
        } else if s == "apiserver" || s == "kube" {
            Ok(SourceSpec::ApiServer)
        } else {
            Err(format!("unknown source {s:?}: use dir:PATH or apiserver"))
        }
    }
}
