//! `--source dir:PATH`: Services and EndpointSlices from YAML/JSON files,
//! re-read when a file changes. Multi-document files and `kind: List` work.
//!
//! A file that stops parsing keeps its last good objects (with one error line
//! naming it), so a bad edit never drops services.

use super::{Kind, SourceMsg, Update};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Objects parsed from one file, and problems met.
#[derive(Debug, Default, Clone)]
pub struct Parsed {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
    /// Documents skipped, each naming the file, document and object.
    pub errors: Vec<String>,
}

/// Parses one file's text. `Err` when the file as a whole is not YAML/JSON.
pub fn parse_text(origin: &str, text: &str) -> Result<Parsed, String> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match serde_yaml::Value::deserialize(de) {
            Ok(v) => docs.push((i + 1, v)),
            Err(e) => return Err(format!("{origin}: not valid YAML/JSON: {e}")),
        }
    }
    let mut out = Parsed::default();
    for (n, doc) in docs {
        collect(origin, &format!("document {n}"), doc, &mut out);
    }
    Ok(out)
}

fn collect(origin: &str, at: &str, doc: serde_yaml::Value, out: &mut Parsed) {
    if doc.is_null() {
        return;
    }
    let kind = doc
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_string();
    let name = doc
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .map(crate::model::validate::for_log)
        .unwrap_or_else(|| "<unnamed>".into());
    match kind.as_str() {
        "List" | "ServiceList" | "EndpointSliceList" => {
            let items = doc
                .get("items")
                .and_then(|i| i.as_sequence())
                .cloned()
                .unwrap_or_default();
            for (i, item) in items.into_iter().enumerate() {
                collect(origin, &format!("{at} item {}", i + 1), item, out);
            }
        }
        "Service" => match serde_yaml::from_value::<Service>(doc) {
            Ok(s) => out.services.push(s),
            Err(e) => out
                .errors
                .push(format!("{origin} {at}: Service {name} skipped: {e}")),
        },
        "EndpointSlice" => match serde_yaml::from_value::<EndpointSlice>(doc) {
            Ok(s) => out.slices.push(s),
            Err(e) => out
                .errors
                .push(format!("{origin} {at}: EndpointSlice {name} skipped: {e}")),
        },
        "Node" => match serde_yaml::from_value::<Node>(doc) {
            Ok(n) => out.nodes.push(n),
            Err(e) => out
                .errors
                .push(format!("{origin} {at}: Node {name} skipped: {e}")),
        },
        // Other kinds (Pods, Deployments...) may share the files: not ours.
        _ => {}
    }
}

fn is_manifest(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml") | Some("json")
    )
}

type Fingerprint = (SystemTime, u64);

/// The directory's files and their last good contents.
#[derive(Default)]
pub struct DirState {
    files: BTreeMap<PathBuf, (Fingerprint, Parsed)>,
}

impl DirState {
    /// Re-reads changed files; returns true when anything changed, and the
    /// error lines for this round (logged by the caller).
    pub fn refresh(&mut self, dir: &Path) -> (bool, Vec<String>) {
        let mut errors = Vec::new();
        let mut present: BTreeMap<PathBuf, Fingerprint> = BTreeMap::new();
        match std::fs::read_dir(dir) {
            Ok(rd) => {
                for entry in rd.flatten() {
                    let p = entry.path();
                    if !is_manifest(&p) {
                        continue;
                    }
                    if let Ok(md) = entry.metadata() {
                        if md.is_file() {
                            let mtime = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                            present.insert(p, (mtime, md.len()));
                        }
                    }
                }
            }
            Err(e) => {
                errors.push(format!("{}: cannot read directory: {e}", dir.display()));
                return (false, errors);
            }
        }
        let mut changed = false;
        let before = self.files.len();
        self.files.retain(|p, _| present.contains_key(p));
        changed |= self.files.len() != before;
        for (path, fp) in present {
            if self.files.get(&path).map(|(f, _)| *f) == Some(fp) {
                continue;
            }
            let origin = path.display().to_string();
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| format!("{origin}: cannot read: {e}"))
                .and_then(|t| parse_text(&origin, &t));
            match parsed {
                Ok(p) => {
                    errors.extend(p.errors.iter().cloned());
                    self.files.insert(path, (fp, p));
                }
                Err(e) => {
                    let kept = self.files.get(&path).map(|(_, p)| p.clone());
                    let note = if kept.is_some() {
                        "; keeping its last good objects"
                    } else {
                        ""
                    };
                    errors.push(format!("{e}{note}"));
                    self.files.insert(path, (fp, kept.unwrap_or_default()));
                }
            }
            changed = true;
        }
        (changed, errors)
    }

    pub fn services(&self) -> Vec<Service> {
        self.files
            .values()
            .flat_map(|(_, p)| p.services.iter().cloned())
            .collect()
    }

    pub fn slices(&self) -> Vec<EndpointSlice> {
        self.files
            .values()
            .flat_map(|(_, p)| p.slices.iter().cloned())
            .collect()
    }

    /// The Node object named `name`, if a file has one.
    pub fn node(&self, name: &str) -> Option<Node> {
        self.files
            .values()
            .flat_map(|(_, p)| p.nodes.iter())
            .find(|n| n.metadata.name.as_deref() == Some(name))
            .cloned()
    }
}

/// Reads the directory once (for `render`): objects and the error lines.
pub fn load_once(dir: &Path) -> (Vec<Service>, Vec<EndpointSlice>, Vec<String>) {
    let mut st = DirState::default();
    let (_, errors) = st.refresh(dir);
    (st.services(), st.slices(), errors)
}

/// Watches the directory, polling every `interval`, until the receiver goes away.
pub async fn run(dir: PathBuf, node_name: String, interval: Duration, tx: mpsc::Sender<SourceMsg>) {
    let mut st = DirState::default();
    let mut first = true;
    loop {
        let (changed, errors) = {
            let dir = dir.clone();
            let mut taken = std::mem::take(&mut st);
            let (r, taken) = tokio::task::spawn_blocking(move || {
                let r = taken.refresh(&dir);
                (r, taken)
            })
            .await
            .expect("dir refresh panicked");
            st = taken;
            r
        };
        for e in errors {
            tracing::error!("{e}");
        }
        if changed || first {
            let node = st
                .node(&node_name)
                .map(|n| SourceMsg::Node(super::NodeInfo::of(&n)));
            let msgs = [
                SourceMsg::Update(Update::ReplaceServices(st.services())),
                SourceMsg::Update(Update::ReplaceSlices(st.slices())),
            ]
            .into_iter()
            .chain(node);
            for m in msgs {
                if tx.send(m).await.is_err() {
                    return;
                }
            }
            if first {
                for k in [Kind::Services, Kind::EndpointSlices] {
                    if tx.send(SourceMsg::Synced(k)).await.is_err() {
                        return;
                    }
                }
                first = false;
            }
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n";

    #[test]
    fn multi_document_and_list() {
        let text = format!(
            "{SVC}---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: a-1, namespace: ns, labels: {{kubernetes.io/service-name: a}}}}\n  addressType: IPv4\n  endpoints: [{{addresses: [10.1.0.1]}}]\n---\n"
        );
        let p = parse_text("f.yaml", &text).unwrap();
        assert_eq!(p.services.len(), 1);
        assert_eq!(p.slices.len(), 1);
        assert!(p.errors.is_empty());
    }

    #[test]
    fn json_file() {
        let text = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"j","namespace":"ns"},"spec":{"clusterIP":"10.0.0.2","ports":[{"port":53,"protocol":"UDP"}]}}"#;
        let p = parse_text("f.json", text).unwrap();
        assert_eq!(p.services[0].metadata.name.as_deref(), Some("j"));
    }

    #[test]
    fn bad_document_is_named_and_skipped() {
        let text = format!("{SVC}---\napiVersion: v1\nkind: Service\nmetadata: {{name: broken}}\nspec: {{ports: 7}}\n");
        let p = parse_text("f.yaml", &text).unwrap();
        assert_eq!(p.services.len(), 1);
        assert_eq!(p.errors.len(), 1);
        assert!(
            p.errors[0].contains("f.yaml document 2: Service broken skipped"),
            "{}",
            p.errors[0]
        );
    }

    #[test]
    fn unparsable_file_keeps_last_good_objects() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.yaml");
        std::fs::write(&f, SVC).unwrap();
        let mut st = DirState::default();
        assert!(st.refresh(dir.path()).0);
        assert_eq!(st.services().len(), 1);
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&f, "kind: Service\n  bad: [indent\n").unwrap();
        let (changed, errors) = st.refresh(dir.path());
        assert!(changed);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("a.yaml") && errors[0].contains("keeping"),
            "{errors:?}"
        );
        assert_eq!(st.services().len(), 1);
        // Unchanged file: nothing to do, nothing logged again.
        let (changed, errors) = st.refresh(dir.path());
        assert!(!changed && errors.is_empty());
        std::fs::remove_file(&f).unwrap();
        assert!(st.refresh(dir.path()).0);
        assert!(st.services().is_empty());
    }
}
