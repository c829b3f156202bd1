//! The sync loop with a fake backend and tokio's paused clock: which syncs
//! run, when, full or not, and with which changed service ports.

use super::*;
use crate::backend::{Ports, SyncError, SyncStats};
use crate::cli::Settings;
use crate::model::{ServicePort, ServicePortKey};
use crate::node::Sysctl;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::net::IpAddr;
use std::sync::Mutex;

#[derive(Debug, Clone)]
struct Call {
    at: Clock,
    full: bool,
    changed: BTreeSet<ServicePortKey>,
    ok: bool,
}

#[derive(Default)]
struct Calls {
    syncs: Vec<Call>,
    /// The next this many syncs fail.
    fail_next: usize,
    /// What the periodic check answers (true: intact).
    damaged: bool,
    verifies: usize,
    /// The ports of the last sync.
    ports: Ports,
}

struct Fake(Arc<Mutex<Calls>>);

impl Backend for Fake {
    const MODE: &'static str = "fake";
    type Scan = ();

    fn new(_: &Settings) -> anyhow::Result<Self> {
        anyhow::bail!("built by the tests only")
    }
    fn sync(
        &mut self,
        ports: &Ports,
        changed: &BTreeSet<ServicePortKey>,
        full: bool,
    ) -> Result<SyncStats, SyncError> {
        let mut c = self.0.lock().unwrap();
        c.ports = ports.clone();
        let ok = c.fail_next == 0;
        c.fail_next = c.fail_next.saturating_sub(1);
        c.syncs.push(Call {
            at: Clock::now(),
            full,
            changed: changed.clone(),
            ok,
        });
        if ok {
            Ok(SyncStats {
                full,
                ..Default::default()
            })
        } else {
            Err(SyncError::restore(anyhow::anyhow!("restore failed")))
        }
    }
    fn verify_job(&self) -> Option<Job<bool>> {
        let calls = self.0.clone();
        Some(Box::new(move || {
            let mut c = calls.lock().unwrap();
            c.verifies += 1;
            Ok(!c.damaged)
        }))
    }
    fn scan_job(&self) -> Option<Job<()>> {
        None
    }
    fn apply_scan(&mut self, _: ()) -> bool {
        false
    }
    fn set_primary_ips(&mut self, _: &[IpAddr]) -> bool {
        false
    }
    fn cleanup(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    fn node_sysctls(_: &Settings) -> Vec<Sysctl> {
        vec![]
    }
    fn render_addresses(_: &Settings) -> Vec<IpAddr> {
        vec![]
    }
    fn render(_: &Settings, _: &[ServicePort], _: &[IpAddr]) -> String {
        String::new()
    }
}

fn service(name: &str, ip: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "type": "ClusterIP",
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
    }))
    .unwrap()
}

fn slice(svc: &str, ips: &[&str]) -> EndpointSlice {
    let endpoints: Vec<_> = ips
        .iter()
        .map(|ip| serde_json::json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{svc}-1"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .unwrap()
}

const MIN: Duration = Duration::from_secs(1);
const PERIOD: Duration = Duration::from_secs(30);

type Events = Arc<Mutex<Vec<(EventObject, &'static str, String)>>>;

struct Harness {
    calls: Arc<Mutex<Calls>>,
    events: Events,
    shared: Arc<Shared>,
    tx: mpsc::Sender<SourceMsg>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Harness {
    /// A loop over two listed Services (a and b), synced once (full).
    async fn start(full_resync_period: Duration) -> Harness {
        let calls = Arc::new(Mutex::new(Calls::default()));
        let (tx, rx) = mpsc::channel(64);
        let (stop, stopped) = oneshot::channel::<()>();
        let shared = Arc::new(Shared {
            health: crate::health::Health::new(2 * PERIOD),
            metrics: crate::metrics::Metrics::new(),
            proxy_mode: "fake",
        });
        let cfg = SyncConfig {
            min_sync_period: MIN,
            sync_period: PERIOD,
            full_resync_period,
            conntrack: false,
            ..Default::default()
        };
        let events: Events = Default::default();
        let sink: EventSink = {
            let events = events.clone();
            Arc::new(move |about, reason, note| events.lock().unwrap().push((about, reason, note)))
        };
        let task = tokio::spawn(run(
            Fake(calls.clone()),
            rx,
            NodeContext::default(),
            cfg,
            shared.clone(),
            Some(sink),
            async move {
                let _ = stopped.await;
            },
        ));
        let h = Harness {
            calls,
            events,
            shared,
            tx,
            stop: Some(stop),
            task,
        };
        h.send(Update::ReplaceServices(vec![
            service("a", "10.96.0.1"),
            service("b", "10.96.0.2"),
        ]))
        .await;
        h.send(Update::ReplaceSlices(vec![
            slice("a", &["10.244.0.1"]),
            slice("b", &["10.244.0.2"]),
        ]))
        .await;
        h.tx.send(SourceMsg::Synced(Kind::Services)).await.unwrap();
        h.tx.send(SourceMsg::Synced(Kind::EndpointSlices))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(h.syncs().len(), 1, "the first sync at once");
        assert!(h.syncs()[0].full);
        h
    }

    async fn send(&self, u: Update) {
        self.tx.send(SourceMsg::Update(u)).await.unwrap();
    }

    fn syncs(&self) -> Vec<Call> {
        self.calls.lock().unwrap().syncs.clone()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn changes_inside_min_sync_period_coalesce_into_one_sync() {
    let h = Harness::start(Duration::from_secs(3600)).await;
    let t0 = h.syncs()[0].at;
    for (i, svc) in ["a", "b", "a"].iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.send(Update::Slice(Box::new(slice(
            svc,
            &["10.244.0.9", &format!("10.244.1.{i}")],
        ))))
        .await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let syncs = h.syncs();
    assert_eq!(syncs.len(), 2, "three changes, one sync: {syncs:?}");
    let s = &syncs[1];
    assert!(!s.full);
    assert_eq!(s.changed.len(), 2, "both Services' ports: {:?}", s.changed);
    assert_eq!(s.at - t0, MIN, "at the end of the min-sync-period window");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_sync_makes_the_next_one_full_after_a_backoff() {
    let h = Harness::start(Duration::from_secs(3600)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.calls.lock().unwrap().fail_next = 1;
    h.send(Update::Slice(Box::new(slice("a", &["10.244.0.7"]))))
        .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let syncs = h.syncs();
    assert_eq!(syncs.len(), 3, "{syncs:?}");
    assert!(!syncs[1].full && !syncs[1].ok, "the incremental sync fails");
    assert!(syncs[2].full && syncs[2].ok, "the retry is full");
    assert_eq!(
        syncs[2].at - syncs[1].at,
        Duration::from_secs(2),
        "after the backoff"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_up_to_thirty_seconds() {
    let h = Harness::start(Duration::from_secs(3600)).await;
    h.calls.lock().unwrap().fail_next = 8;
    h.send(Update::Slice(Box::new(slice("a", &["10.244.0.7"]))))
        .await;
    tokio::time::sleep(Duration::from_secs(200)).await;
    let syncs = h.syncs();
    let gaps: Vec<u64> = syncs[1..]
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_secs())
        .collect();
    assert_eq!(gaps, [2, 4, 8, 16, 30, 30, 30, 30], "{syncs:?}");
    assert!(syncs.last().unwrap().ok && syncs.last().unwrap().full);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_damaged_kernel_found_by_the_periodic_check_gets_a_full_sync() {
    let h = Harness::start(Duration::from_secs(3600)).await;
    // The check runs on its own thread: wait (bounded, in real time) for
    // its answer at each step.
    let settle = |done: &dyn Fn() -> bool| {
        for _ in 0..400 {
            if done() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    tokio::time::sleep(PERIOD + Duration::from_millis(10)).await;
    settle(&|| h.calls.lock().unwrap().verifies >= 1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(h.calls.lock().unwrap().verifies >= 1);
    assert_eq!(h.syncs().len(), 1, "intact: no sync");
    h.calls.lock().unwrap().damaged = true;
    tokio::time::sleep(PERIOD).await;
    settle(&|| h.calls.lock().unwrap().verifies >= 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let syncs = h.syncs();
    assert!(syncs.len() >= 2, "{syncs:?}");
    assert!(syncs[1].full && syncs[1].changed.is_empty());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_full_resync_comes_every_full_resync_period() {
    let h = Harness::start(Duration::from_secs(60)).await;
    let t0 = h.syncs()[0].at;
    tokio::time::sleep(Duration::from_secs(125)).await;
    let syncs = h.syncs();
    let full: Vec<u64> = syncs
        .iter()
        .filter(|s| s.full)
        .map(|s| (s.at - t0).as_secs())
        .collect();
    // The check runs every sync period (30 s): the first tick at or past
    // 60 s after the last full sync asks for the next.
    assert_eq!(full, [0, 60, 120], "{syncs:?}");
    h.stop().await;
}

/// A Service claiming `ext` as externalIP on port 80.
fn claimer(name: &str, ip: &str, ext: &str) -> Service {
    let mut s = service(name, ip);
    s.spec.as_mut().unwrap().external_ips = Some(vec![ext.to_string()]);
    s
}

#[tokio::test(start_paused = true)]
async fn a_refused_claim_is_logged_evented_on_the_service_and_counted() {
    let h = Harness::start(Duration::from_secs(3600)).await;
    // evil claims a's ClusterIP tuple (10.96.0.1:80/TCP).
    h.send(Update::Service(Box::new(claimer(
        "evil",
        "10.96.0.9",
        "10.96.0.1",
    ))))
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let evil_ports: Vec<_> = {
        let c = h.calls.lock().unwrap();
        c.ports
            .values()
            .filter(|p| p.key.name.name == "evil")
            .cloned()
            .collect()
    };
    assert_eq!(evil_ports.len(), 1);
    assert!(evil_ports[0].external_ips.is_empty(), "{evil_ports:?}");
    let events = h.events.lock().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    let (about, reason, note) = &events[0];
    assert_eq!(
        *about,
        EventObject::Service {
            key: crate::model::ServiceKey {
                namespace: "default".into(),
                name: "evil".into()
            },
            uid: Some("uid-evil".into())
        }
    );
    assert_eq!(*reason, report::VIP_CONFLICT_REASON);
    assert!(
        note.contains("default/evil") && note.contains("ClusterIP of Service default/a"),
        "{note}"
    );
    let text = h.shared.metrics.encode();
    assert!(
        text.contains("kube_proxy_rs_vip_conflicts{reason=\"cluster_ip\"} 1"),
        "{text}"
    );
    // Nothing new: no second event. A Node whose address evil2 claims.
    h.send(Update::Service(Box::new(claimer(
        "evil2",
        "10.96.0.8",
        "192.0.2.7",
    ))))
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let programmed = |h: &Harness| {
        let c = h.calls.lock().unwrap();
        c.ports
            .values()
            .find(|p| p.key.name.name == "evil2")
            .map(|p| p.external_ips.clone())
            .unwrap()
    };
    assert_eq!(programmed(&h).len(), 1);
    let node = |ips: &[&str]| crate::source::NodeInfo {
        zone: None,
        eligible: true,
        primary_ips: vec![],
        addresses: ips.iter().map(|i| i.parse().unwrap()).collect(),
    };
    h.tx.send(SourceMsg::Node(node(&["192.0.2.7"])))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(programmed(&h).is_empty());
    assert_eq!(h.events.lock().unwrap().len(), 2);
    assert!(h
        .shared
        .metrics
        .encode()
        .contains("kube_proxy_rs_vip_conflicts{reason=\"node_address\"} 1"));
    // The address goes: evil2's claim is programmed again.
    h.tx.send(SourceMsg::Node(node(&[]))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(programmed(&h).len(), 1);
    assert!(h
        .shared
        .metrics
        .encode()
        .contains("kube_proxy_rs_vip_conflicts{reason=\"node_address\"} 0"));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn no_sync_before_both_kinds_are_listed() {
    let calls = Arc::new(Mutex::new(Calls::default()));
    let (tx, rx) = mpsc::channel(8);
    let shared = Arc::new(Shared {
        health: crate::health::Health::new(2 * PERIOD),
        metrics: crate::metrics::Metrics::new(),
        proxy_mode: "fake",
    });
    let task = tokio::spawn(run(
        Fake(calls.clone()),
        rx,
        NodeContext::default(),
        SyncConfig::default(),
        shared,
        None,
        tokio::time::sleep(Duration::from_secs(100)),
    ));
    tx.send(SourceMsg::Update(Update::ReplaceServices(vec![service(
        "a",
        "10.96.0.1",
    )])))
    .await
    .unwrap();
    tx.send(SourceMsg::Synced(Kind::Services)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(50)).await;
    assert!(calls.lock().unwrap().syncs.is_empty());
    tx.send(SourceMsg::Synced(Kind::EndpointSlices))
        .await
        .unwrap();
    task.await.unwrap();
    let syncs = calls.lock().unwrap().syncs.clone();
    assert_eq!(syncs.len(), 1);
    assert!(syncs[0].full);
}
