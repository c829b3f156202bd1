//! The iptables binaries, behind the [`Kernel`] trait (faked in tests by
//! [`super::fake`]): the only code that runs them. Whole payloads go to
//! `iptables-restore --noflush` over stdin; jumps from built-in chains are
//! checked and inserted one `iptables -C`/`-I` each.

use super::jumps::Jump;
use crate::model::Family;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

/// The two tables kube-proxy writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Filter,
    Nat,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }
}

/// Which iptables binaries to run (the node's choice, as with upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum IptablesFlavor {
    /// `iptables`, `iptables-restore`, ...: whatever the host's alternatives select.
    #[default]
    Auto,
    /// `iptables-nft*`.
    Nft,
    /// `iptables-legacy*`.
    Legacy,
}

/// The kernel side of the iptables backend; faked in tests.
pub trait Kernel: Send {
    /// `iptables-restore --noflush` the payload.
    fn restore(&mut self, family: Family, payload: &str) -> Result<()>;
    /// Starts an `iptables-restore --noflush` whose payload arrives in
    /// pieces; `None` (the default) when this kernel takes payloads whole
    /// (the pieces are then collected and passed to [`Kernel::restore`]).
    fn restore_begin(&mut self, _family: Family) -> Result<Option<Box<dyn RestoreInput>>> {
        Ok(None)
    }
    /// `iptables-save -t <table>`, one line at a time (the dump of a large
    /// table is tens of MB; the periodic checks need only a pass over it).
    fn save_each(&mut self, family: Family, table: Table, each: &mut dyn FnMut(&str))
        -> Result<()>;
    /// Whether a jump rule exists (`iptables -C`).
    fn has_jump(&mut self, family: Family, jump: &Jump) -> Result<bool>;
    /// Makes sure a jump rule exists; true when it had to be inserted.
    fn ensure_jump(&mut self, family: Family, jump: &Jump) -> Result<bool>;
    /// Removes a jump rule if present.
    fn delete_jump(&mut self, family: Family, jump: &Jump) -> Result<()>;
    /// Whether this family's tools work on this host at all.
    fn available(&mut self, family: Family) -> bool;
    /// Legacy iptables rewrites the whole table on each restore.
    fn is_legacy(&mut self) -> bool;
}

/// Builds a fresh kernel handle (background checks run on their own).
pub type KernelFactory = Arc<dyn Fn() -> Box<dyn Kernel> + Send + Sync>;

/// A restore being fed: the payload's pieces, then its end.
pub trait RestoreInput: Send {
    fn write(&mut self, text: &str);
    /// Writes the rest and waits for the result.
    fn finish(self: Box<Self>, rest: &str) -> Result<()>;
}

/// A running `iptables-restore`.
struct RestoreChild {
    bin: String,
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    /// Lines of payload already written (those before `rest`).
    streamed_lines: usize,
    /// The last pieces written, with the number of lines before each: the
    /// line a rejection names is in one of them or in the rest (the process
    /// stops reading at the line it rejects, and the pipe holds less than a
    /// piece).
    recent: std::collections::VecDeque<(usize, String)>,
    /// Why the payload could not be written whole.
    write_error: Option<std::io::Error>,
}

/// Pieces kept by [`RestoreChild`] for error messages.
const RECENT_PIECES: usize = 2;

impl RestoreInput for RestoreChild {
    fn write(&mut self, text: &str) {
        if self.recent.len() == RECENT_PIECES {
            self.recent.pop_front();
        }
        self.recent
            .push_back((self.streamed_lines, text.to_string()));
        self.streamed_lines += text.matches('\n').count();
        // A write fails when the process has stopped reading (it rejected
        // a line); its exit status and message tell why, in finish().
        if let Some(stdin) = &mut self.stdin {
            if let Err(e) = stdin.write_all(text.as_bytes()) {
                self.write_error = Some(e);
                self.stdin = None;
            }
        }
    }

    fn finish(mut self: Box<Self>, rest: &str) -> Result<()> {
        let bin = std::mem::take(&mut self.bin);
        let streamed = self.streamed_lines;
        if let Some(mut stdin) = self.stdin.take() {
            if let Err(e) = stdin.write_all(rest.as_bytes()) {
                self.write_error = Some(e);
            }
        }
        let out = self.child.wait_with_output()?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let line = std::iter::once((streamed, rest))
                .chain(self.recent.iter().map(|(n, t)| (*n, t.as_str())))
                .find_map(|(before, text)| failing_line_after(&stderr, text, before))
                .map(|l| format!(" (payload line: {l})"))
                .unwrap_or_default();
            bail!("{bin} failed ({}): {stderr}{line}", out.status);
        }
        match self.write_error {
            Some(e) => Err(e).with_context(|| format!("writing payload to {bin}")),
            None => Ok(()),
        }
    }
}

/// Runs the real binaries.
pub struct SystemIptables {
    flavor: IptablesFlavor,
    /// Seconds to wait for the xtables lock.
    pub wait_seconds: u32,
}

impl SystemIptables {
    pub fn new(flavor: IptablesFlavor) -> Self {
        SystemIptables {
            flavor,
            wait_seconds: 5,
        }
    }

    fn bin(&self, family: Family, tool: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        match self.flavor {
            IptablesFlavor::Auto => format!("{base}{tool}"),
            IptablesFlavor::Nft => format!("{base}-nft{tool}"),
            IptablesFlavor::Legacy => format!("{base}-legacy{tool}"),
        }
    }

    fn spawn_restore(&self, family: Family) -> Result<Box<RestoreChild>> {
        let bin = self.bin(family, "-restore");
        let mut child = Command::new(&bin)
            .arg("-w")
            .arg(self.wait_seconds.to_string())
            .arg("--noflush")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {bin}"))?;
        let stdin = child.stdin.take();
        Ok(Box::new(RestoreChild {
            bin,
            child,
            stdin,
            streamed_lines: 0,
            recent: Default::default(),
            write_error: None,
        }))
    }

    fn jump_cmd(&self, family: Family, op: &str, jump: &Jump) -> Command {
        let mut cmd = Command::new(self.bin(family, ""));
        cmd.arg("-w")
            .arg(self.wait_seconds.to_string())
            .arg("-t")
            .arg(jump.table.name())
            .arg(op)
            .arg(jump.from)
            .args(&jump.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }
}

/// Finds the payload line an iptables-restore error points at ("line N failed").
pub fn failing_line<'a>(stderr: &str, payload: &'a str) -> Option<&'a str> {
    failing_line_after(stderr, payload, 0)
}

/// [`failing_line`] when `payload` is what followed the first `skipped` lines.
fn failing_line_after<'a>(stderr: &str, payload: &'a str, skipped: usize) -> Option<&'a str> {
    let idx = stderr.find("line ")?;
    let digits: String = stderr[idx + 5..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let n: usize = digits.parse().ok()?;
    payload.lines().nth(n.checked_sub(1 + skipped)?)
}

impl Kernel for SystemIptables {
    fn restore(&mut self, family: Family, payload: &str) -> Result<()> {
        self.spawn_restore(family)?.finish(payload)
    }

    fn restore_begin(&mut self, family: Family) -> Result<Option<Box<dyn RestoreInput>>> {
        Ok(Some(self.spawn_restore(family)?))
    }

    fn save_each(
        &mut self,
        family: Family,
        table: Table,
        each: &mut dyn FnMut(&str),
    ) -> Result<()> {
        use std::io::BufRead;
        let bin = self.bin(family, "-save");
        let mut child = Command::new(&bin)
            .arg("-t")
            .arg(table.name())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {bin}"))?;
        // stderr is drained on its own thread so that a chatty tool cannot
        // block on a full pipe while we read stdout.
        let mut stderr = child.stderr.take().expect("piped stderr");
        let errs = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
            s
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let mut reader = std::io::BufReader::with_capacity(1 << 16, stdout);
        let mut line = String::new();
        let mut read_error = None;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => each(line.trim_end_matches('\n')),
                Err(e) => {
                    let _ = child.kill();
                    read_error = Some(e);
                    break;
                }
            }
        }
        drop(reader);
        let status = child.wait()?;
        let stderr = errs.join().unwrap_or_default();
        if let Some(e) = read_error {
            bail!("reading {bin} output: {e}");
        }
        if !status.success() {
            bail!("{bin} -t {} failed: {}", table.name(), stderr.trim());
        }
        Ok(())
    }

    fn has_jump(&mut self, family: Family, jump: &Jump) -> Result<bool> {
        let out = self.jump_cmd(family, "-C", jump).output()?;
        match out.status.code() {
            Some(0) => Ok(true),
            // 1: no such rule; 2: its target chain does not exist.
            Some(1) | Some(2) => Ok(false),
            // 4 (the xtables lock not had in time) and the rest: unknown,
            // which must not read as "missing" (that would insert a second
            // jump next to a present one).
            _ => bail!(
                "checking jump {} -> {:?}: {}",
                jump.from,
                jump.args,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }

    fn ensure_jump(&mut self, family: Family, jump: &Jump) -> Result<bool> {
        if self.has_jump(family, jump)? {
            return Ok(false);
        }
        let ins = self.jump_cmd(family, "-I", jump).output()?;
        if !ins.status.success() {
            bail!(
                "inserting jump {} -> {:?}: {}",
                jump.from,
                jump.args.last(),
                String::from_utf8_lossy(&ins.stderr).trim()
            );
        }
        Ok(true)
    }

    fn delete_jump(&mut self, family: Family, jump: &Jump) -> Result<()> {
        // Delete every copy; stop at the first "not found".
        for _ in 0..16 {
            let out = self.jump_cmd(family, "-D", jump).output()?;
            if !out.status.success() {
                break;
            }
        }
        Ok(())
    }

    fn available(&mut self, family: Family) -> bool {
        Command::new(self.bin(family, "-save"))
            .arg("-t")
            .arg("filter")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn is_legacy(&mut self) -> bool {
        match self.flavor {
            IptablesFlavor::Legacy => true,
            IptablesFlavor::Nft => false,
            IptablesFlavor::Auto => Command::new("iptables")
                .arg("--version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("legacy"))
                .unwrap_or(false),
        }
    }
}

/// A factory of handles on the node's iptables binaries of `flavor`
/// (`auto` resolved once here, see [`detect_flavor`]).
pub fn system_factory(mut flavor: IptablesFlavor) -> KernelFactory {
    if flavor == IptablesFlavor::Auto {
        flavor = detect_flavor();
        if flavor != IptablesFlavor::Auto {
            tracing::info!(
                ?flavor,
                "following the iptables mode kubelet uses on this node"
            );
        }
    }
    Arc::new(move || Box::new(SystemIptables::new(flavor)) as Box<dyn Kernel>)
}

/// Resolves `auto` the way upstream's iptables-wrapper does: the mode whose
/// mangle table already holds kubelet's hint chains wins, so the proxy writes
/// where the node's other Kubernetes rules are; otherwise the host default.
pub fn detect_flavor() -> IptablesFlavor {
    let has_hint = |bin: &str| {
        Command::new(bin)
            .args(["-t", "mangle"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| {
                let text = String::from_utf8_lossy(&o.stdout);
                text.contains("KUBE-IPTABLES-HINT") || text.contains("KUBE-KUBELET-CANARY")
            })
            .unwrap_or(false)
    };
    // Reading a legacy table creates it; look only where kubelet could have
    // written (a legacy mangle table already registered in this namespace).
    let legacy_mangle = std::fs::read_to_string("/proc/net/ip_tables_names")
        .map(|t| t.lines().any(|l| l == "mangle"))
        .unwrap_or(false);
    match (
        has_hint("iptables-nft-save"),
        legacy_mangle && has_hint("iptables-legacy-save"),
    ) {
        (false, true) => IptablesFlavor::Legacy,
        (true, false) => IptablesFlavor::Nft,
        _ => IptablesFlavor::Auto,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_failing_line() {
        let payload = "*nat\n:A - [0:0]\n-A A -j NOPE\nCOMMIT\n";
        assert_eq!(
            failing_line("iptables-restore: line 3 failed", payload),
            Some("-A A -j NOPE")
        );
        assert_eq!(failing_line("something else", payload), None);
    }

    /// A stand-in for iptables-restore that reads `lines` lines, rejects the last.
    fn rejecting(lines: usize) -> Box<RestoreChild> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "head -n {lines} >/dev/null; echo 'fake-restore: line {lines} failed' >&2; exit 2"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        Box::new(RestoreChild {
            bin: "fake-restore".into(),
            child,
            stdin,
            streamed_lines: 0,
            recent: Default::default(),
            write_error: None,
        })
    }

    #[test]
    fn a_rejected_streamed_line_is_named() {
        for (rejected, want) in [(3, "c"), (6, "f"), (7, "g"), (1, "")] {
            let mut input = rejecting(rejected);
            input.write("a\nb\n");
            input.write("c\nd\n");
            input.write("e\nf\n");
            let err = format!("{:#}", input.finish("g\nCOMMIT\n").unwrap_err());
            assert!(err.contains(&format!("line {rejected} failed")), "{err}");
            if want.is_empty() {
                // Line 1 was in a piece no longer kept: only the message.
                assert!(!err.contains("payload line"), "{err}");
            } else {
                assert!(err.ends_with(&format!("(payload line: {want})")), "{err}");
            }
        }
    }
}
