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
