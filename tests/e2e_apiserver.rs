//! End to end against a real kube-apiserver (scripts/k8s): manifests validated
//! server-side, the proxy running as its ServiceAccount with a token, objects
//! created with kube-rs, traffic through the rules, updates, deletes, an API
//! server restart. Needs root and the control plane binaries; skips otherwise.

mod support;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use std::time::Duration;
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
            eprintln!("SKIPPED: {why}");
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
    lab.start_proxy(&["--source", "apiserver", "--kubeconfig", &sa_path]);
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

    // The API server goes away and comes back: rules stay meanwhile, and a
    // change made after it returns is applied.
    let script = path_str(&root().join("scripts/k8s/controlplane.sh"));
    let apiserver_pid = std::fs::read_to_string(cp.dir.path().join("pids"))
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    must(&["kill", &apiserver_pid]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        curl(&node, "http://10.96.0.50/", 1).is_ok(),
        "rules stay while the API server is down"
    );
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
    wait_until("REJECT after the last slice is deleted", WAIT, || {
        curl(&node, "http://10.96.0.50/", 1) == Err(7)
    });

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
