//! Per-Service health check servers on `healthCheckNodePort`
//! (`externalTrafficPolicy: Local` LoadBalancers): cloud load balancers and
//! MetalLB-style setups probe them to send traffic only to nodes with endpoints.
//! 200 with the local endpoint count when this node has some, 503 otherwise.

use crate::backend::Ports;
use crate::http::Shared;
use crate::model::{categorize, ServiceKey};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Router;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What one health check port reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HcTarget {
    pub service: ServiceKey,
    pub local_endpoints: usize,
}

/// Health check ports wanted by the model, with their local endpoint counts
/// (distinct local endpoint IPs over all ports and families of the Service).
pub fn desired(ports: &Ports) -> BTreeMap<u16, HcTarget> {
    let mut ips: BTreeMap<u16, (ServiceKey, BTreeSet<IpAddr>)> = BTreeMap::new();
    for sp in ports.values() {
        let Some(hc) = sp.health_check_node_port else {
            continue;
        };
        let key = ServiceKey {
            namespace: sp.key.name.namespace.clone(),
            name: sp.key.name.name.clone(),
        };
        let entry = ips.entry(hc).or_insert_with(|| (key, BTreeSet::new()));
        entry.1.extend(categorize(sp).local.iter().map(|e| e.ip));
    }
    ips.into_iter()
        .map(|(port, (service, set))| {
            (
                port,
                HcTarget {
                    service,
                    local_endpoints: set.len(),
                },
            )
        })
        .collect()
}

/// The body and status a health check port answers with.
pub fn answer(t: &HcTarget, proxy_healthy: bool) -> (StatusCode, String) {
    let ok = t.local_endpoints > 0 && proxy_healthy;
    let body = format!(
        "{{\"service\": {{\"namespace\": \"{}\", \"name\": \"{}\"}}, \"localEndpoints\": {}, \"serviceProxyHealthy\": {}}}",
        t.service.namespace, t.service.name, t.local_endpoints, proxy_healthy
    );
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body,
    )
}

type Slot = Arc<Mutex<HcTarget>>;

struct Running {
    task: tokio::task::JoinHandle<()>,
    slot: Slot,
}

/// The running health check servers, started and stopped to match the model.
pub struct HcServers {
    shared: Arc<Shared>,
    running: HashMap<u16, Running>,
    /// Ports that failed to bind, so each failure is logged once.
    failed: BTreeSet<u16>,
}

async fn handle(State((slot, shared)): State<(Slot, Arc<Shared>)>) -> Response {
    let t = slot.lock().unwrap().clone();
    let (code, body) = answer(&t, shared.health.is_healthy(SystemTime::now()));
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .header("x-content-type-options", "nosniff")
        .body(body.into())
        .expect("static headers are valid")
}

fn bind(port: u16) -> std::io::Result<std::net::TcpListener> {
    // Dual-stack where IPv6 exists, IPv4 otherwise.
    std::net::TcpListener::bind(("::", port))
        .or_else(|_| std::net::TcpListener::bind(("0.0.0.0", port)))
}

impl HcServers {
    pub fn new(shared: Arc<Shared>) -> Self {
        HcServers {
            shared,
            running: HashMap::new(),
            failed: BTreeSet::new(),
        }
    }

    /// Must be called inside the tokio runtime.
    pub fn apply(&mut self, want: BTreeMap<u16, HcTarget>) {
        self.running.retain(|port, r| {
            let keep = want.contains_key(port);
            if !keep {
                r.task.abort();
                tracing::info!(port, "health check server stopped");
            }
            keep
        });
        self.failed.retain(|p| want.contains_key(p));
        for (port, target) in want {
            if let Some(r) = self.running.get(&port) {
                *r.slot.lock().unwrap() = target;
                continue;
            }
            let listener = match bind(port).and_then(|l| {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            }) {
                Ok(l) => l,
                Err(e) => {
                    if self.failed.insert(port) {
                        tracing::error!(port, service = %target.service, error = %e, "cannot serve healthCheckNodePort");
                    }
                    continue;
                }
            };
            self.failed.remove(&port);
            tracing::info!(port, service = %target.service, "health check server started");
            let slot: Slot = Arc::new(Mutex::new(target));
            let router = Router::new()
                .fallback(handle)
                .with_state((slot.clone(), self.shared.clone()));
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            });
            self.running.insert(port, Running { task, slot });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn port(local: &[bool], hc: Option<u16>, family: Family, base: &str) -> ServicePort {
        let cip = if family == Family::V4 {
            "10.96.0.1"
        } else {
            "fd00::96"
        };
        let eps = local
            .iter()
            .enumerate()
            .map(|(i, l)| Endpoint {
                is_local: *l,
                ..crate::model::fixtures::endpoint(&format!("{base}{}", i + 1), 8080)
            })
            .collect();
        let mut p =
            crate::model::fixtures::service_port("ns", "lb", "", Protocol::Tcp, cip, 80, eps);
        p.node_port = Some(30080);
        p.external_policy_local = true;
        p.health_check_node_port = hc;
        p
    }

    #[test]
    fn counts_local_endpoints_per_health_check_port() {
        let mut ports = Ports::new();
        for p in [
            port(&[true, false, true], Some(32000), Family::V4, "10.0.0."),
            port(&[true], Some(32000), Family::V6, "fd00::"),
            port(&[true], None, Family::V4, "10.1.0."),
        ] {
            let mut p = p;
            if p.health_check_node_port.is_none() {
                p.key.name.name = "other".into();
            }
            ports.insert(p.key.clone(), p);
        }
        let d = desired(&ports);
        assert_eq!(d.len(), 1);
        assert_eq!(d[&32000].local_endpoints, 3);
        let (code, body) = answer(&d[&32000], true);
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body, "{\"service\": {\"namespace\": \"ns\", \"name\": \"lb\"}, \"localEndpoints\": 3, \"serviceProxyHealthy\": true}");
        assert_eq!(answer(&d[&32000], false).0, StatusCode::SERVICE_UNAVAILABLE);
        let none = HcTarget {
            service: d[&32000].service.clone(),
            local_endpoints: 0,
        };
        assert_eq!(answer(&none, true).0, StatusCode::SERVICE_UNAVAILABLE);
    }
}
