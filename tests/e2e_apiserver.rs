//! End to end against a real kube-apiserver (scripts/k8s): manifests validated
//! server-side, the proxy running as its ServiceAccount with a token, objects
//! created with kube-rs, traffic through the rules, updates, deletes, an API
//! server restart. Needs root and the control plane binaries; skips otherwise.

mod support;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn client(kubeconfig: &std::path::Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_yaml::from_str(text).unwrap()
}

fn slice_obj(name: &str, ips: &[&str]) -> EndpointSlice {
    let eps: Vec<String> = ips
        .iter()
        .map(|ip| {
            format!(
                "- {{addresses: [\"{ip}\"], nodeName: {NODE_NAME}, conditions: {{ready: true}}}}"
            )
        })
        .collect();
    yaml(&format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n{}\n",
        eps.join("\n")
    ))
}

#[test]
fn proxy_follows_a_real_api_server_as_its_service_account() {
    require_kernel!();
    let cp = match ControlPlane::start(false) {
        Ok(cp) => cp,
        Err(why) => {
            support::skip(&why);
            return;
        }
    };
    let manifests = path_str(&root().join("manifests"));

    // The manifests pass server-side validation (dry run, nothing stored).
    cp.kubectl_ok(&["apply", "--dry-run=server", "-k", &manifests]);
    // RBAC for real, then a token for the ServiceAccount.
    cp.kubectl_ok(&[
        "apply",
        "-f",
        &path_str(&root().join("manifests/rbac.yaml")),
    ]);
    let token = cp.kubectl_ok(&[
        "-n",
        "kube-system",
        "create",
        "token",
        "kube-proxy-rs",
        "--duration=1h",
    ]);
    let sa_kubeconfig = cp.kubeconfig_with_token("sa.kubeconfig", token.trim());
    // The ClusterRole grants reads and events, and nothing else.
    let sa = "system:serviceaccount:kube-system:kube-proxy-rs";
    for (verb, resource, allowed) in [
        ("watch", "services", "yes"),
        ("list", "endpointslices.discovery.k8s.io", "yes"),
        ("get", "nodes", "yes"),
        ("create", "events.events.k8s.io", "yes"),
        ("create", "services", "no"),
        ("delete", "endpointslices.discovery.k8s.io", "no"),
        ("list", "secrets", "no"),
        ("update", "nodes", "no"),
    ] {
        let out = cp.kubectl(&["auth", "can-i", verb, resource, "--as", sa, "-A"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            allowed,
            "{verb} {resource}"
        );
    }

    let admin = cp.kubeconfig();
    let rt = rt();
    rt.block_on(async {
        let c = client(&admin).await;
        let nodes: Api<Node> = Api::all(c.clone());
        nodes
            .create(&PostParams::default(), &yaml(&format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {NODE_NAME}, labels: {{topology.kubernetes.io/zone: zone-a}}}}\n")))
            .await
            .unwrap();
        let svcs: Api<Service> = Api::namespaced(c.clone(), "default");
        svcs.create(
            &PostParams::default(),
            &yaml("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {clusterIP: 10.96.0.50, ports: [{name: http, port: 80, targetPort: 8080}]}\n"),
        )
        .await
        .unwrap();
        let slices: Api<EndpointSlice> = Api::namespaced(c, "default");
        slices.create(&PostParams::default(), &slice_obj("web-1", &["10.244.1.10"])).await.unwrap();
    });

    let mut lab = Lab::new();
    lab.add_pod("pod0", 10, &[8080], &[]);
    lab.add_pod("pod1", 11, &[8080], &[]);
    forward_into_netns(&lab.node.clone(), cp.port);
    let sa_path = path_str(&sa_kubeconfig);
    let (fail_flag, path) = lab.restore_fault_injector();
    lab.start_proxy_env(
        &["--source", "apiserver", "--kubeconfig", &sa_path],
        &[("PATH", path)],
    );
    let node = lab.node.clone();
    wait_until("ClusterIP from the API server answers", WAIT, || {
        curl(&node, "http://10.96.0.50/", 1).is_ok()
    });
    assert_eq!(
        spread(&node, "http://10.96.0.50/", 5).get("pod0:8080"),
        Some(&5)
    );

    // An update at the API server reaches the kernel.
    rt.block_on(async {
        let slices: Api<EndpointSlice> = Api::namespaced(client(&admin).await, "default");
        let patch = Patch::Apply(slice_obj("web-1", &["10.244.1.10", "10.244.1.11"]));
        slices
            .patch("web-1", &PatchParams::apply("e2e").force(), &patch)
            .await
            .unwrap();
    });
    wait_until("pod1 answers after the slice update", WAIT, || {
        spread(&node, "http://10.96.0.50/", 6).contains_key("pod1:8080")
    });

    // A sync failure is reported as a Warning Event on the Node (RBAC allows it).
    std::fs::write(&fail_flag, "").unwrap();
    rt.block_on(async {
        let slices: Api<EndpointSlice> = Api::namespaced(client(&admin).await, "default");
        let patch = Patch::Apply(slice_obj("web-1", &["10.244.1.11"]));
        slices
            .patch("web-1", &PatchParams::apply("e2e").force(), &patch)
            .await
            .unwrap();
    });
    wait_until("SyncProxyRulesFailed event on the Node", WAIT, || {
        let out = cp.kubectl(&[
            "get",
            "events.events.k8s.io",
            "-A",
            "-o",
            "jsonpath={range .items[*]}{.reason}/{.regarding.kind}/{.regarding.name} {end}",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("SyncProxyRulesFailed/Node/{NODE_NAME}"))
    });
    std::fs::remove_file(&fail_flag).unwrap();
    wait_until("recovered: only pod1 answers", WAIT, || {
        spread(&node, "http://10.96.0.50/", 4).get("pod1:8080") == Some(&4)
    });

    // The API server goes away and comes back: rules stay meanwhile, and a
    // change made after it returns is applied.
    let script = path_str(&root().join("scripts/k8s/controlplane.sh"));
    let apiserver_pid = std::fs::read_to_string(cp.dir.path().join("pids"))
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    must(&["kill", "-KILL", &apiserver_pid]);
    wait_until("API server gone", WAIT, || {
        !run(&["kill", "-0", &apiserver_pid]).status.success()
    });
    // 30 s without an API server: traffic keeps flowing, /healthz stays
    // truthful (rules are current, nothing is pending: 200), no restart.
    let outage = Instant::now();
    let (mut tried, mut failed, mut healthy, mut samples) = (0, 0, 0, 0);
    while outage.elapsed() < Duration::from_secs(30) {
        tried += 1;
        if curl(&node, "http://10.96.0.50/", 1).is_err() {
            failed += 1;
        }
        if tried % 5 == 0 {
            samples += 1;
            if http_get(&node, "http://127.0.0.1:10256/healthz").0 == 200 {
                healthy += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "API server down 30 s: {tried} requests to the ClusterIP, {failed} failed; /healthz 200 in {healthy}/{samples} samples"
    );
    assert_eq!(failed, 0, "rules stay while the API server is down");
    assert_eq!(healthy, samples, "/healthz: rules are current");
    assert!(lab.proxy_running());
    let _ = script;
    restart_apiserver(&cp);
    rt.block_on(async {
        let slices: Api<EndpointSlice> = Api::namespaced(client(&admin).await, "default");
        slices
            .delete("web-1", &DeleteParams::default())
            .await
            .unwrap();
    });
    let back = Instant::now();
    // The watch retries with upstream's backoff (0.8 s doubling to 30 s,
    // jittered), so after a 30 s outage the next attempt can be ~30 s away.
    wait_until(
        "REJECT after the last slice is deleted",
        Duration::from_secs(75),
        || curl(&node, "http://10.96.0.50/", 1) == Err(7),
    );
    println!(
        "change made after the outage applied {:.1}s after the API server was back",
        back.elapsed().as_secs_f64()
    );

    // The proxy never needed a forbidden call.
    let log = lab.log();
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");
    lab.stop_proxy(false);
}

/// Starts kube-apiserver again with the same flags, state and port.
fn restart_apiserver(cp: &ControlPlane) {
    let dir = cp.dir.path();
    let cmdline = std::fs::read_to_string(dir.join("apiserver.cmdline")).unwrap();
    let out = must(&[
        "sh",
        "-c",
        &format!(
            "cd {} && {{ {cmdline} >> apiserver.log 2>&1 & }} && echo $!",
            dir.display()
        ),
    ]);
    let mut pids = std::fs::read_to_string(dir.join("pids")).unwrap();
    pids.push_str(&format!("{}\n", out.trim()));
    std::fs::write(dir.join("pids"), pids).unwrap();
    wait_until("API server back", WAIT, || {
        cp.kubectl(&["get", "--raw", "/readyz"]).status.success()
    });
}

/// etcd's JSON gateway on the control plane's etcd port.
fn etcd(cp: &ControlPlane, path: &str, body: &str) -> String {
    let cmdline = std::fs::read_to_string(cp.dir.path().join("apiserver.cmdline")).unwrap();
    let url = cmdline
        .split_whitespace()
        .skip_while(|a| *a != "--etcd-servers")
        .nth(1)
        .unwrap()
        .trim_matches('\'')
        .to_string();
    must(&[
        "curl",
        "-s",
        "-X",
        "POST",
        &format!("{url}/v3/{path}"),
        "-d",
        body,
    ])
}

#[test]
fn watch_expiry_relists_and_controller_manager_slices_are_programmed() {
    require_kernel!();
    let cp = match ControlPlane::start(true) {
        Ok(cp) => cp,
        Err(why) => {
            support::skip(&why);
            return;
        }
    };
    let mut lab = Lab::new();
    lab.add_pod("pod0", 10, &[8080], &[]);
    forward_into_netns(&lab.node.clone(), cp.port);
    let admin = path_str(&cp.kubeconfig());
    lab.start_proxy(&["--source", "apiserver", "--kubeconfig", &admin]);
    let node = lab.node.clone();

    // A Service with a selector and a Ready Pod: the controller-manager
    // publishes the EndpointSlice, and the proxy programs it.
    // The slice controller needs the pod's Node (for its zone).
    let node_file = cp.dir.path().join("node.yaml");
    let node_yaml = format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {NODE_NAME}}}\n");
    std::fs::write(&node_file, node_yaml).unwrap();
    cp.kubectl_ok(&["apply", "-f", &path_str(&node_file)]);
    cp.kubectl_ok(&[
        "create",
        "service",
        "clusterip",
        "sel",
        "--tcp=80:8080",
        "--clusterip=10.96.0.60",
    ]);
    let pod = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: pod0, namespace: default, labels: {{app: sel}}}}\nspec: {{nodeName: {NODE_NAME}, containers: [{{name: c, image: none, ports: [{{containerPort: 8080}}]}}]}}\n");
    let pod_file = cp.dir.path().join("pod.yaml");
    std::fs::write(&pod_file, pod).unwrap();
    cp.kubectl_ok(&["apply", "-f", &path_str(&pod_file)]);
    let status = r#"{"status":{"phase":"Running","podIP":"10.244.1.10","podIPs":[{"ip":"10.244.1.10"}],"conditions":[{"type":"Ready","status":"True"}]}}"#;
    cp.kubectl_ok(&[
        "patch",
        "pod",
        "pod0",
        "--subresource=status",
        "--type=merge",
        "-p",
        status,
    ]);
    cp.kubectl_ok(&[
        "patch",
        "service",
        "sel",
        "--type=merge",
        "-p",
        r#"{"spec":{"selector":{"app":"sel"}}}"#,
    ]);
    wait_until("slice from the controller-manager programmed", WAIT, || {
        curl(&node, "http://10.96.0.60/", 1).is_ok()
    });

    // Force a watch expiry: stop the API server, advance and compact etcd past
    // what the proxy has seen, start it again. Resuming gets 410 Gone: relist.
    let listed_before = lab.log().matches("listed").count();
    let apiserver_pid = std::fs::read_to_string(cp.dir.path().join("pids"))
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    must(&["kill", "-KILL", &apiserver_pid]);
    wait_until("API server gone", WAIT, || {
        !run(&["kill", "-0", &apiserver_pid]).status.success()
    });
    let put = etcd(&cp, "kv/put", r#"{"key":"a3Bycy1idW1w","value":"MQ=="}"#);
    let rev = put
        .split("\"revision\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    etcd(&cp, "kv/compaction", &format!("{{\"revision\":\"{rev}\"}}"));
    assert!(
        curl(&node, "http://10.96.0.60/", 1).is_ok(),
        "rules stay while the API server is down"
    );
    restart_apiserver(&cp);
    wait_until("relist after 410", WAIT, || {
        lab.log().matches("listed").count() > listed_before
    });
    // Still correct after the relist, and still following changes.
    assert!(curl(&node, "http://10.96.0.60/", 1).is_ok());
    cp.kubectl_ok(&["delete", "service", "sel"]);
    wait_until("rules of the deleted service removed", WAIT, || {
        !lab.save(false, "nat").contains("default/sel")
    });
}

/// A refused VIP claim against a real API server: the Warning Event names
/// the losing Service (with its UID, so `kubectl describe` lists it), and
/// the older of two claims wins by the creationTimestamp the API server set.
#[test]
fn a_refused_vip_claim_is_a_warning_event_on_the_service_that_lost() {
    require_kernel!();
    let cp = match ControlPlane::start(false) {
        Ok(cp) => cp,
        Err(why) => {
            support::skip(&why);
            return;
        }
    };
    cp.kubectl_ok(&[
        "apply",
        "-f",
        &path_str(&root().join("manifests/rbac.yaml")),
    ]);
    let token = cp.kubectl_ok(&[
        "-n",
        "kube-system",
        "create",
        "token",
        "kube-proxy-rs",
        "--duration=1h",
    ]);
    let sa_kubeconfig = cp.kubeconfig_with_token("sa.kubeconfig", token.trim());
    cp.kubectl_ok(&["create", "namespace", "a-tenant"]);
    let admin = cp.kubeconfig();
    let rt = rt();
    let create = |ns: &str, body: &str| {
        rt.block_on(async {
            let svcs: Api<Service> = Api::namespaced(client(&admin).await, ns);
            let s = svcs
                .create(&PostParams::default(), &yaml(body))
                .await
                .unwrap();
            s.metadata.uid.unwrap()
        })
    };
    create(
        "kube-system",
        "apiVersion: v1\nkind: Service\nmetadata: {name: kube-dns}\nspec: {clusterIP: 10.96.0.10, ports: [{name: dns, port: 53, protocol: UDP}]}\n",
    );
    let evil_uid = create(
        "a-tenant",
        "apiVersion: v1\nkind: Service\nmetadata: {name: evil}\nspec: {clusterIP: 10.96.5.5, externalIPs: [10.96.0.10], ports: [{name: dns, port: 53, protocol: UDP}]}\n",
    );
    // "b-old" first; "a-new" (sorting first) a second later, so the
    // creationTimestamps differ.
    create(
        "default",
        "apiVersion: v1\nkind: Service\nmetadata: {name: b-old}\nspec: {clusterIP: 10.96.6.2, externalIPs: [192.0.2.10], ports: [{port: 80}]}\n",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let new_uid = create(
        "default",
        "apiVersion: v1\nkind: Service\nmetadata: {name: a-new}\nspec: {clusterIP: 10.96.6.1, externalIPs: [192.0.2.10], ports: [{port: 80}]}\n",
    );

    let mut lab = Lab::new();
    forward_into_netns(&lab.node.clone(), cp.port);
    let sa_path = path_str(&sa_kubeconfig);
    lab.start_proxy(&["--source", "apiserver", "--kubeconfig", &sa_path]);
    let events = |ns: &str| {
        let out = cp.kubectl(&[
            "get",
            "events.events.k8s.io",
            "-n",
            ns,
            "-o",
            "jsonpath={range .items[*]}{.reason}/{.regarding.kind}/{.regarding.name}/{.regarding.uid}|{.note}{\"\\n\"}{end}",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_until("VIPConflict event on a-tenant/evil", WAIT, || {
        events("a-tenant").contains(&format!("VIPConflict/Service/evil/{evil_uid}|"))
    });
    let ev = events("a-tenant");
    assert!(
        ev.contains("externalIP 10.96.0.10:53/UDP not programmed: it is the ClusterIP of Service kube-system/kube-dns"),
        "{ev}"
    );
    wait_until("VIPConflict event on default/a-new", WAIT, || {
        events("default").contains(&format!("VIPConflict/Service/a-new/{new_uid}|"))
    });
    let ev = events("default");
    assert!(
        ev.contains("Service default/b-old claimed it earlier") && !ev.contains("/b-old/"),
        "{ev}"
    );
    // kubectl describe finds the event through the Service's UID.
    let described = cp.kubectl_ok(&["describe", "service", "-n", "a-tenant", "evil"]);
    assert!(described.contains("VIPConflict"), "{described}");
    assert!(lab.proxy_running());
    let log = lab.log();
    assert!(!log.contains("could not publish event"), "{log}");
}
