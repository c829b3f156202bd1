//! The ipset applier: whole `ipset restore` payloads over stdin, never one
//! process per entry.

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
}

#[derive(Default)]
pub struct SystemIpset;

impl IpsetKernel for SystemIpset {
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
            let line = crate::iptables::apply::failing_line(&err, payload)
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
