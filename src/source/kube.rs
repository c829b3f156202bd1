//! Watches Services and EndpointSlices on the API server (kube-rs watcher:
//! list+watch, relist on expiry (410), backoff on errors).

use super::{Kind, SourceMsg, Update};
use crate::model::build::SERVICE_PROXY_NAME_LABEL;
use crate::model::ServiceKey;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use std::time::Duration;
use tokio::sync::mpsc;

/// Label selector for the Services this proxy serves, as upstream builds it.
pub fn service_selector(service_proxy_name: Option<&str>) -> String {
    let proxy = match service_proxy_name {
        Some(name) => format!("{SERVICE_PROXY_NAME_LABEL}={name}"),
        None => format!("!{SERVICE_PROXY_NAME_LABEL}"),
    };
    format!("{proxy},!service.kubernetes.io/headless")
}

fn key_of<K: Resource>(o: &K) -> ServiceKey {
    ServiceKey {
        namespace: o.meta().namespace.clone().unwrap_or_default(),
        name: o.meta().name.clone().unwrap_or_default(),
    }
}

/// Retry delays of a failed watch: 0.5 s doubling to at most 10 s, each
/// jittered to 50-100 % so nodes do not retry in step. Shorter than
/// client-go's 30 s cap (jittered up to 60 s), so changes made around an API
/// server outage reach the kernel within seconds of its return; API Priority
/// and Fairness protects a recovering server from the extra retries.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
    seed: u64,
    /// When the last retry delay was handed out: the stream resets the
    /// backoff on every good event, which must not undo it while a watch
    /// keeps failing right after each relist.
    last_error: Option<std::time::Instant>,
}

/// Errors this recent keep the backoff growing across successful events.
const BACKOFF_QUIET: Duration = Duration::from_secs(30);

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

impl Default for WatchBackoff {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64 ^ u64::from(std::process::id()))
            .unwrap_or(1)
            | 1;
        WatchBackoff {
            next: BACKOFF_MIN,
            seed,
            last_error: None,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // xorshift64: enough randomness for jitter.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let frac = 0.5 + (self.seed % 1000) as f64 / 2000.0;
        let d = self.next.mul_f64(frac);
        self.next = (self.next * 2).min(BACKOFF_MAX);
        self.last_error = Some(std::time::Instant::now());
        Some(d)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        if self.last_error.is_none_or(|t| t.elapsed() >= BACKOFF_QUIET) {
            self.next = BACKOFF_MIN;
        }
    }
}

/// Runs the watches until the receiver goes away.
pub async fn run(
    client: Client,
    service_proxy_name: Option<String>,
    node_name: String,
    tx: mpsc::Sender<SourceMsg>,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node_cfg = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let node_stream = watcher::watcher(nodes, node_cfg)
        .backoff(WatchBackoff::default())
        .applied_objects();
    let node_tx = tx.clone();
    tokio::spawn(async move {
        futures::pin_mut!(node_stream);
        let mut last: Option<super::NodeInfo> = None;
        while let Some(n) = node_stream.next().await {
            match n {
                Ok(n) => {
                    let info = super::NodeInfo::of(&n);
                    if last.as_ref() != Some(&info) {
                        last = Some(info.clone());
                        if node_tx.send(SourceMsg::Node(info)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "node watch error; retrying"),
            }
        }
    });
    let services: Api<Service> = Api::all(client.clone());
    let slices: Api<EndpointSlice> = Api::all(client);
    let svc_cfg =
        watcher::Config::default().labels(&service_selector(service_proxy_name.as_deref()));
    let svc_stream = watcher::watcher(services, svc_cfg).backoff(WatchBackoff::default());
    let slice_stream =
        watcher::watcher(slices, watcher::Config::default()).backoff(WatchBackoff::default());
    let a = pump(
        svc_stream,
        Kind::Services,
        tx.clone(),
        |s| Update::Service(Box::new(s)),
        Update::ServiceDeleted,
    );
    let b = pump(
        slice_stream,
        Kind::EndpointSlices,
        tx,
        |s| Update::Slice(Box::new(s)),
        Update::SliceDeleted,
    );
    tokio::join!(a, b);
}

/// Drops what the proxy never reads but the API server sends with every
/// object: managedFields and kubectl's last-applied copy of the object. At
/// 10,000 Services they are a large share of the memory the watch holds.
fn slim<K: kube::ResourceExt>(mut o: K) -> K {
    o.managed_fields_mut().clear();
    o.annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
    o
}

async fn pump<K, S>(
    stream: S,
    kind: Kind,
    tx: mpsc::Sender<SourceMsg>,
    apply: fn(K) -> Update,
    delete: fn(ServiceKey) -> Update,
) where
    K: Resource + Clone,
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    futures::pin_mut!(stream);
    // A listing is streamed to the store object by object (not buffered):
    // only one decoded object is in memory at a time.
    let mut listed = 0usize;
    let mut error_logged = false;
    while let Some(ev) = stream.next().await {
        let msg = match ev {
            Ok(Event::Init) => {
                listed = 0;
                Some(SourceMsg::Update(Update::ListBegin(kind)))
            }
            Ok(Event::InitApply(o)) => {
                listed += 1;
                Some(SourceMsg::Update(apply(slim(o))))
            }
            Ok(Event::InitDone) => {
                tracing::info!(?kind, objects = listed, "listed");
                if tx
                    .send(SourceMsg::Update(Update::ListDone(kind)))
                    .await
                    .is_err()
                {
                    return;
                }
                Some(SourceMsg::Synced(kind))
            }
            Ok(Event::Apply(o)) => Some(SourceMsg::Update(apply(slim(o)))),
            Ok(Event::Delete(o)) => Some(SourceMsg::Update(delete(key_of(&o)))),
            Err(e) => {
                // The watcher relists by itself (410 Gone included) with backoff.
                if !error_logged {
                    tracing::warn!(?kind, error = %e, "watch failed; retrying with backoff, rules stay as they are");
                    error_logged = true;
                }
                None
            }
        };
        if let Some(m) = msg {
            if error_logged {
                tracing::info!(?kind, "watch recovered");
                error_logged = false;
            }
            if tx.send(m).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slim_drops_managed_fields_and_last_applied_only() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}",
                                "service.kubernetes.io/topology-mode": "Auto"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"clusterIP": "10.96.0.10"}
        }))
        .unwrap();
        let s = slim(svc);
        assert!(s.metadata.managed_fields.unwrap_or_default().is_empty());
        let ann = s.metadata.annotations.unwrap();
        assert_eq!(ann.len(), 1);
        assert_eq!(ann["service.kubernetes.io/topology-mode"], "Auto");
    }

    #[test]
    fn watch_backoff_grows_jittered_caps_and_resets() {
        use kube::runtime::utils::Backoff;
        let mut b = WatchBackoff::default();
        let d: Vec<Duration> = b.by_ref().take(8).collect();
        assert!(d[0] >= Duration::from_millis(250) && d[0] <= Duration::from_millis(500));
        assert!(d.iter().all(|x| *x <= BACKOFF_MAX));
        assert!(
            d[7] >= BACKOFF_MAX / 2,
            "capped at 10 s, jittered down to half"
        );
        b.reset();
        assert!(
            b.next().unwrap() >= BACKOFF_MAX / 2,
            "a good event right after an error does not reset the delay"
        );
        b.last_error = Some(std::time::Instant::now() - BACKOFF_QUIET);
        b.reset();
        assert!(b.next().unwrap() <= BACKOFF_MIN, "quiet for 30 s: reset");
    }

    #[test]
    fn selectors() {
        assert_eq!(
            service_selector(None),
            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
        );
        assert_eq!(
            service_selector(Some("rs")),
            "service.kubernetes.io/service-proxy-name=rs,!service.kubernetes.io/headless"
        );
    }
}
