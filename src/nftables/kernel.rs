//! The nft binary, behind the [`NftKernel`] trait (faked in tests): one
//! `nft -f -` per transaction, scripts over stdin; `nft -t list table` to
//! read a table's chains and sets back without its elements.

use crate::model::Family;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

pub trait NftKernel: Send {
    /// Runs `script` as one transaction (`nft -f -`): all of it or nothing.
    fn apply(&mut self, script: &str) -> Result<()>;
    /// `nft -t list table <family> <table>`; `None` when there is no such table.
    fn list(&mut self, family: Family, table: &str) -> Result<Option<String>>;
}

/// Builds a fresh handle (the periodic check runs on its own thread).
pub type NftFactory = Arc<dyn Fn() -> Box<dyn NftKernel> + Send + Sync>;

/// Runs the real `nft`.
#[derive(Debug, Default, Clone)]
pub struct SystemNft;

/// The script line an `nft` error names (`/dev/stdin:12:5-20: Error: ...`).
pub fn failing_line<'a>(stderr: &str, script: &'a str) -> Option<&'a str> {
    let at = stderr.find("stdin:")?;
    let n: usize = stderr[at + 6..].split(':').next()?.trim().parse().ok()?;
    script.lines().nth(n.checked_sub(1)?)
}

impl NftKernel for SystemNft {
    fn apply(&mut self, script: &str) -> Result<()> {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft (is the nftables package installed?)")?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let written = stdin.write_all(script.as_bytes());
        drop(stdin);
        let out = child.wait_with_output().context("waiting for nft")?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stderr
                .lines()
                .find(|l| l.contains("Error"))
                .unwrap_or("")
                .trim();
            let line = failing_line(&stderr, script)
                .map(|l| {
                    let l: String = l.chars().take(300).collect();
                    format!(" (script line: {l})")
                })
                .unwrap_or_default();
            bail!("nft -f failed ({}): {first}{line}", out.status);
        }
        written.context("writing the script to nft")
    }

    fn list(&mut self, family: Family, table: &str) -> Result<Option<String>> {
        let out = Command::new("nft")
            .args([
                "-t",
                "list",
                "table",
                super::layout::nf_family(family),
                table,
            ])
            .stdin(Stdio::null())
            .output()
            .context("running nft (is the nftables package installed?)")?;
        if out.status.success() {
            return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No such file or directory") {
            return Ok(None);
        }
        bail!("nft list table {table} failed: {}", stderr.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_failing_line() {
        let script = "add table ip t\nadd chain ip t c\nadd rule ip t c bogus\n";
        let stderr = "/dev/stdin:3:17-21: Error: syntax error, unexpected string\nadd rule ip t c bogus\n                ^^^^^";
        assert_eq!(failing_line(stderr, script), Some("add rule ip t c bogus"));
        assert_eq!(failing_line("Error: Could not process rule", script), None);
    }
}
