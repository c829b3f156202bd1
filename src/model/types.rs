//! The node-local model: what every backend renders. Plain data, no I/O.

use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;

/// Transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// Lower-case name as iptables (`-p tcp`) and upstream's chain hashing use it.
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// Upper-case name as the Kubernetes API spells it.
    pub fn upper(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

/// IP family. A dual-stack Service yields one set of service ports per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn of_net(net: &IpNet) -> Family {
        Family::of(&net.addr())
    }

    /// Upstream's `addressType` for EndpointSlices of this family.
    pub fn address_type(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub fn host_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// `namespace/name:portName`, printed as upstream's `ServicePortName.String()`:
/// the `:portName` suffix is left out when the port has no name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port: String,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
        }
    }
}

/// `namespace/name` of a Service: the unit of change tracking.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Identity of one programmed service port: name, protocol and family.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortKey {
    pub name: ServicePortName,
    pub protocol: Protocol,
    pub family: Family,
}

/// One backend of a service port, with the port resolved for this endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Runs on this node (node name equals ours). The node name and zone
    /// themselves are not kept: nothing reads them after this.
    pub is_local: bool,
    /// Zones this endpoint is hinted for (EndpointSlice `hints.forZones`).
    pub zone_hints: Vec<String>,
}

impl Endpoint {
    /// `ip:port` as upstream prints it (`[v6]:port` for IPv6): part of KUBE-SEP hashing.
    pub fn addr_string(&self) -> String {
        match self.ip {
            IpAddr::V4(ip) => format!("{}:{}", ip, self.port),
            IpAddr::V6(ip) => format!("[{}]:{}", ip, self.port),
        }
    }
}

/// Everything a backend needs to program one service port of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub key: ServicePortKey,
    /// ClusterIP of this family (absent for a single-stack service of the other family).
    pub cluster_ip: Option<IpAddr>,
    pub port: u16,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout: Option<u32>,
    pub external_policy_local: bool,
    pub internal_policy_local: bool,
    pub health_check_node_port: Option<u16>,
    /// This node's zone when the Service asks for topology-aware routing
    /// (`trafficDistribution: PreferClose` or topology-mode Auto).
    pub topology_zone: Option<String>,
    /// Deduplicated, sorted by (ip, port).
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    pub fn name_string(&self) -> String {
        self.key.name.to_string()
    }

    /// Has any "external" destination: NodePort, externalIPs, load balancer IPs.
    pub fn has_external(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// Externally-reached traffic uses only local endpoints.
    pub fn external_local(&self) -> bool {
        self.external_policy_local && self.has_external()
    }
}

/// What this node knows about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeContext {
    pub node_name: String,
    pub zone: Option<String>,
    /// `--service-proxy-name`: serve only Services labelled with it.
    pub service_proxy_name: Option<String>,
}
