//! The ipset applier: whole `ipset restore` payloads over stdin (full syncs,
//! which also create the sets), and entry changes over netlink in one batch
//! (incremental syncs); never one process per entry.

use super::socket::{ChangeError, IpsetSocket};
use super::wire::EntryOp;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::process::{Command, Stdio};

/// The kernel side of ipsets; faked in tests.
pub trait IpsetKernel: Send {
    /// `ipset restore -exist` the payload.
    fn restore(&mut self, payload: &str) -> Result<()>;
    /// `ipset save` of every set.
    fn save(&mut self) -> Result<String>;
    /// Names of every set (`ipset list -n`).
    fn names(&mut self) -> Result<Vec<String>>;
    /// Adds and deletes entries of existing sets, in order, as `ipset
    /// restore -exist` would (adding twice or deleting a missing entry is
    /// not an error).
    fn change(&mut self, ops: &[EntryOp]) -> std::result::Result<(), ChangeError>;
}

/// Writes `ops` over netlink; when that fails in a way that suggests the
/// sets are missing or netlink is unusable, `ipset restore`s `text()`
/// instead (it creates the sets). `warned`: the fallback was logged at warn.
pub fn change_or_restore(
    k: &mut dyn IpsetKernel,
    ops: &[EntryOp],
    text: impl FnOnce() -> String,
    warned: &mut bool,
) -> Result<()> {
    let Err(e) = k.change(ops) else {
        return Ok(());
    };
    if !e.fallback {
        return Err(anyhow::Error::new(e).context("writing ipset entries"));
    }
    if *warned {
        tracing::debug!(error = %e, "ipset entries over netlink failed; using ipset restore");
    } else {
        tracing::warn!(error = %e, "ipset entries over netlink failed; using ipset restore for this sync (logged once)");
        *warned = true;
    }
    k.restore(&text())
}

/// The `ipset` tool for restore/save/list, a netlink socket (opened on
/// first use, dropped after a failure) for entry changes.
#[derive(Default)]
pub struct SystemIpset {
    nl: Option<IpsetSocket>,
}

impl IpsetKernel for SystemIpset {
    fn change(&mut self, ops: &[EntryOp]) -> std::result::Result<(), ChangeError> {
        if ops.is_empty() {
            return Ok(());
        }
        let sock = match self.nl.as_mut() {
            Some(s) => s,
            None => self.nl.insert(IpsetSocket::open().map_err(|e| ChangeError {
                msg: format!("opening a netfilter netlink socket for ipset: {e}"),
                fallback: true,
            })?),
        };
        let r = sock.change(ops);
        if r.is_err() {
            // A timed-out socket may still get late answers: start afresh.
            self.nl = None;
        }
        r
    }

    fn restore(&mut self, payload: &str) -> Result<()> {
        let mut child = Command::new("ipset")
            .args(["restore", "-exist"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running ipset (is the ipset package installed?)")?;
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(payload.as_bytes())
            .context("writing to ipset restore")?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let line = crate::xtables::kernel::failing_line(&err, payload)
                .map(|l| format!(" (payload line: {l})"))
                .unwrap_or_default();
            bail!("ipset restore failed: {err}{line}");
        }
        Ok(())
    }

    fn save(&mut self) -> Result<String> {
        let out = Command::new("ipset")
            .arg("save")
            .stdin(Stdio::null())
            .output()
            .context("running ipset save")?;
        if !out.status.success() {
            bail!(
                "ipset save failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn names(&mut self) -> Result<Vec<String>> {
        let out = Command::new("ipset")
            .args(["list", "-n"])
            .stdin(Stdio::null())
            .output()
            .context("running ipset list -n")?;
        if !out.status.success() {
            bail!(
                "ipset list failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }
}
