//! The node's conntrack table size and timeouts, set once at start as
//! upstream kube-proxy sets them (the `conntrack` section of the config file
//! and the `--conntrack-*` flags, with its defaults). The plan is pure; the
//! applier writes only values that differ, logs each change, and only warns
//! when a value cannot be written (`nf_conntrack_max` is read-only outside
//! the host's network namespace, sysfs may be mounted read-only): rules are
//! programmed either way.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Upstream's defaults (kubeproxy.config.k8s.io/v1alpha1).
pub const DEFAULT_MAX_PER_CORE: u32 = 32 * 1024;
pub const DEFAULT_MIN: u32 = 128 * 1024;
pub const DEFAULT_TCP_ESTABLISHED: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_TCP_CLOSE_WAIT: Duration = Duration::from_secs(3600);

/// What the flags and the file asked for. `None`: upstream's default; a
/// zero: leave the kernel's value alone (as upstream: `maxPerCore: 0` keeps
/// the table size, a zero timeout keeps that timeout).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConntrackSettings {
    pub max_per_core: Option<u32>,
    pub min: Option<u32>,
    pub tcp_established: Option<Duration>,
    pub tcp_close_wait: Option<Duration>,
    pub tcp_be_liberal: bool,
    pub udp_timeout: Option<Duration>,
    pub udp_stream_timeout: Option<Duration>,
}

/// Where a value lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Under {
    /// /proc/sys
    ProcSys,
    /// /sys
    Sys,
}

/// One value to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub under: Under,
    pub path: &'static str,
    pub value: u64,
    /// Only raised, never lowered (the hash table size).
    pub raise_only: bool,
    pub why: &'static str,
}

pub const MAX: &str = "net/netfilter/nf_conntrack_max";
pub const HASHSIZE: &str = "module/nf_conntrack/parameters/hashsize";
pub const TCP_ESTABLISHED: &str = "net/netfilter/nf_conntrack_tcp_timeout_established";
pub const TCP_CLOSE_WAIT: &str = "net/netfilter/nf_conntrack_tcp_timeout_close_wait";
pub const TCP_BE_LIBERAL: &str = "net/netfilter/nf_conntrack_tcp_be_liberal";
pub const UDP_TIMEOUT: &str = "net/netfilter/nf_conntrack_udp_timeout";
pub const UDP_STREAM_TIMEOUT: &str = "net/netfilter/nf_conntrack_udp_timeout_stream";

/// The table size upstream asks for: `maxPerCore` × CPUs, at least `min`;
/// none when `maxPerCore` is 0.
pub fn table_max(s: &ConntrackSettings, cpus: usize) -> Option<u64> {
    let per_core = u64::from(s.max_per_core.unwrap_or(DEFAULT_MAX_PER_CORE));
    if per_core == 0 {
        return None;
    }
    let min = u64::from(s.min.unwrap_or(DEFAULT_MIN));
    Some((per_core * cpus.max(1) as u64).max(min))
}

/// What to write on a node with `cpus` CPUs.
pub fn plan(s: &ConntrackSettings, cpus: usize) -> Vec<Write> {
    let mut out = Vec::new();
    if let Some(max) = table_max(s, cpus) {
        out.push(Write {
            under: Under::ProcSys,
            path: MAX,
            value: max,
            raise_only: false,
            why: "conntrack table size: maxPerCore x CPUs, at least min",
        });
        out.push(Write {
            under: Under::Sys,
            path: HASHSIZE,
            value: max / 4,
            raise_only: true,
            why: "conntrack hash buckets: a quarter of the table size",
        });
    }
    let mut timeout = |d: Option<Duration>, default: Option<Duration>, path, why| {
        if let Some(d) = d.or(default).filter(|d| d.as_secs() > 0) {
            out.push(Write {
                under: Under::ProcSys,
                path,
                value: d.as_secs(),
                raise_only: false,
                why,
            });
        }
    };
    timeout(
        s.tcp_established,
        Some(DEFAULT_TCP_ESTABLISHED),
        TCP_ESTABLISHED,
        "idle established TCP connections are forgotten after this",
    );
    timeout(
        s.tcp_close_wait,
        Some(DEFAULT_TCP_CLOSE_WAIT),
        TCP_CLOSE_WAIT,
        "TCP connections in CLOSE_WAIT are forgotten after this",
    );
    timeout(
        s.udp_timeout,
        None,
        UDP_TIMEOUT,
        "UDP flows that saw one direction only",
    );
    timeout(
        s.udp_stream_timeout,
        None,
        UDP_STREAM_TIMEOUT,
        "UDP flows that saw both directions",
    );
    if s.tcp_be_liberal {
        out.push(Write {
            under: Under::ProcSys,
            path: TCP_BE_LIBERAL,
            value: 1,
            raise_only: false,
            why: "out-of-window TCP packets are not marked INVALID (tcpBeLiberal)",
        });
    }
    out
}

/// What became of one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Set {
        from: u64,
    },
    Failed(String),
    /// Not tried: the hash table follows a table size that was not set.
    Skipped,
}

/// The roots the paths are under (the real ones, or a test's directory).
#[derive(Debug, Clone)]
pub struct Roots {
    pub proc_sys: PathBuf,
    pub sys: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            proc_sys: "/proc/sys".into(),
            sys: "/sys".into(),
        }
    }
}

fn write_one(w: &Write, path: &Path) -> Result<Outcome, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading: {e}"))?;
    let current: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("reading: not a number: {:?}", text.trim()))?;
    if current == w.value || (w.raise_only && current >= w.value) {
        return Ok(Outcome::Unchanged);
    }
    std::fs::write(path, w.value.to_string()).map_err(|e| format!("writing: {e}"))?;
    Ok(Outcome::Set { from: current })
}

/// Writes `writes`, logging each change and each failure.
pub fn apply(writes: &[Write], roots: &Roots) -> Vec<Outcome> {
    let mut max_failed = false;
    writes
        .iter()
        .map(|w| {
            if w.path == HASHSIZE && max_failed {
                return Outcome::Skipped;
            }
            let path = match w.under {
                Under::ProcSys => roots.proc_sys.join(w.path),
                Under::Sys => roots.sys.join(w.path),
            };
            match write_one(w, &path) {
                Ok(Outcome::Set { from }) => {
                    tracing::info!(path = %path.display(), from, to = w.value, why = w.why, "set conntrack limit");
                    Outcome::Set { from }
                }
                Ok(o) => o,
                Err(e) => {
                    max_failed |= w.path == MAX;
                    tracing::warn!(
                        path = %path.display(),
                        value = w.value,
                        error = %e,
                        "cannot set a conntrack limit (read-only outside the host's network namespace or with sysfs read-only; nf_conntrack may not be loaded yet); left as it is"
                    );
                    Outcome::Failed(e)
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings that change nothing on the node.
    fn untouched() -> ConntrackSettings {
        ConntrackSettings {
            max_per_core: Some(0),
            min: Some(0),
            tcp_established: Some(Duration::ZERO),
            tcp_close_wait: Some(Duration::ZERO),
            ..Default::default()
        }
    }

    fn paths(w: &[Write]) -> Vec<(&str, u64)> {
        w.iter().map(|w| (w.path, w.value)).collect()
    }

    #[test]
    fn defaults_are_upstreams() {
        let w = plan(&ConntrackSettings::default(), 2);
        assert_eq!(
            paths(&w),
            vec![
                (MAX, 131_072),
                (HASHSIZE, 32_768),
                (TCP_ESTABLISHED, 86_400),
                (TCP_CLOSE_WAIT, 3_600),
            ]
        );
        assert!(w.iter().find(|w| w.path == HASHSIZE).unwrap().raise_only);
    }

    #[test]
    fn max_is_per_core_times_cpus_at_least_min() {
        let s = ConntrackSettings {
            max_per_core: Some(65_536),
            min: Some(100),
            ..Default::default()
        };
        assert_eq!(table_max(&s, 8), Some(524_288));
        assert_eq!(table_max(&s, 0), Some(65_536), "at least one CPU");
        let s = ConntrackSettings {
            max_per_core: Some(10),
            min: Some(1_000),
            ..Default::default()
        };
        assert_eq!(table_max(&s, 4), Some(1_000));
    }

    #[test]
    fn zeros_leave_the_kernel_alone() {
        assert!(plan(&untouched(), 4).is_empty());
        let s = ConntrackSettings {
            max_per_core: Some(0),
            tcp_established: Some(Duration::from_millis(500)),
            ..Default::default()
        };
        // Under a second rounds to 0 seconds: left alone too.
        assert_eq!(paths(&plan(&s, 4)), vec![(TCP_CLOSE_WAIT, 3_600)]);
    }

    #[test]
    fn udp_timeouts_and_be_liberal_only_when_asked() {
        let s = ConntrackSettings {
            udp_timeout: Some(Duration::from_secs(30)),
            udp_stream_timeout: Some(Duration::from_secs(120)),
            tcp_be_liberal: true,
            ..untouched()
        };
        assert_eq!(
            paths(&plan(&s, 1)),
            vec![
                (UDP_TIMEOUT, 30),
                (UDP_STREAM_TIMEOUT, 120),
                (TCP_BE_LIBERAL, 1)
            ]
        );
    }

    fn roots(dir: &Path) -> Roots {
        let r = Roots {
            proc_sys: dir.join("proc"),
            sys: dir.join("sys"),
        };
        for (root, p, v) in [
            (&r.proc_sys, MAX, "262144"),
            (&r.sys, HASHSIZE, "65536"),
            (&r.proc_sys, TCP_ESTABLISHED, "432000"),
        ] {
            let f = root.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, format!("{v}\n")).unwrap();
        }
        r
    }

    #[test]
    fn writes_what_differs_keeps_a_larger_hash_and_survives_failures() {
        let dir = tempfile::tempdir().unwrap();
        let r = roots(dir.path());
        let w = plan(&ConntrackSettings::default(), 2);
        let out = apply(&w, &r);
        // The table size is set as asked, even lower (as upstream);
        // the hash table is only ever grown.
        assert_eq!(out[0], Outcome::Set { from: 262_144 });
        assert_eq!(out[1], Outcome::Unchanged);
        assert_eq!(out[2], Outcome::Set { from: 432_000 });
        // close_wait does not exist here: a warning, and the rest went on.
        assert!(matches!(&out[3], Outcome::Failed(e) if e.contains("reading")));
        let read = |root: &PathBuf, p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(read(&r.proc_sys, MAX).trim(), "131072");
        assert_eq!(read(&r.sys, HASHSIZE).trim(), "65536");
        assert_eq!(read(&r.proc_sys, TCP_ESTABLISHED).trim(), "86400");
        // Without the table size (read-only here), the hash is not touched.
        std::fs::remove_file(r.proc_sys.join(MAX)).unwrap();
        let out = apply(&w[..2], &r);
        assert!(matches!(out[0], Outcome::Failed(_)));
        assert_eq!(out[1], Outcome::Skipped);
        std::fs::write(r.proc_sys.join(MAX), "131072").unwrap();
        // A second start finds everything in place.
        let again = apply(&w[..3], &r);
        assert!(again.iter().all(|o| *o == Outcome::Unchanged), "{again:?}");
    }
}
