//! The one fake iptables kernel of the unit tests: it keeps the payloads it
//! was given, derives `iptables-save` dumps from them, tracks jumps (given
//! with `-I` in a payload or one at a time), takes payloads whole or in
//! pieces, and fails the next restores on demand.

use super::jumps::Jump;
use super::kernel::{Kernel, KernelFactory, RestoreInput, Table};
use crate::model::Family;
use anyhow::{bail, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// What the fake kernel holds and was asked, shared by every handle.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Payloads applied, in order (a failed one is not kept).
    pub restores: Vec<String>,
    /// The next this many restores fail (as `line 2 failed`).
    pub fail_next: usize,
    /// Jumps present, as `<table> -I <chain> <args>` lines.
    pub jumps: BTreeSet<String>,
    /// Take payloads in pieces, as the real applier does.
    pub streaming: bool,
    /// Pieces received before each streamed payload's end.
    pub pieces: Vec<usize>,
    /// Families whose tools do not work.
    pub unavailable: BTreeSet<Family>,
    /// Chains an earlier run left (with no rules), listed in every dump.
    pub leftovers: Vec<(Table, String)>,
    pub legacy: bool,
}

impl FakeState {
    fn jump_key(table: Table, insert_line: &str) -> String {
        format!("{} {insert_line}", table.name())
    }

    /// Whether `j` is present.
    pub fn has(&self, j: &Jump) -> bool {
        self.jumps
            .contains(&Self::jump_key(j.table, &j.insert_line()))
    }

    /// Marks every jump of `jumps` present.
    pub fn add_jumps(&mut self, jumps: &[Jump]) {
        for j in jumps {
            self.jumps.insert(Self::jump_key(j.table, &j.insert_line()));
        }
    }

    /// The chains of `table` with their rule counts, as the payloads left them.
    pub fn chains(&self, table: Table) -> BTreeMap<String, usize> {
        let mut chains: BTreeMap<String, usize> = BTreeMap::new();
        let mut current = String::new();
        for payload in &self.restores {
            for line in payload.lines() {
                if let Some(t) = line.strip_prefix('*') {
                    current = t.to_string();
                } else if current != table.name() {
                } else if let Some(c) = line.strip_prefix(':') {
                    chains.insert(c.split(' ').next().unwrap().to_string(), 0);
                } else if let Some(c) = line.strip_prefix("-A ") {
                    *chains
                        .entry(c.split(' ').next().unwrap().to_string())
                        .or_default() += 1;
                } else if let Some(c) = line.strip_prefix("-X ") {
                    chains.remove(c.trim());
                }
            }
        }
        for (t, c) in &self.leftovers {
            if *t == table {
                chains.entry(c.clone()).or_default();
            }
        }
        chains
    }

    /// `iptables-save -t <table>` of the fake (each rule as `-j RETURN`).
    pub fn dump(&self, table: Table) -> String {
        let chains = self.chains(table);
        let mut out = format!("*{}\n", table.name());
        for c in chains.keys() {
            out.push_str(&format!(":{c} - [0:0]\n"));
        }
        for (c, n) in &chains {
            for _ in 0..*n {
                out.push_str(&format!("-A {c} -j RETURN\n"));
            }
        }
        out.push_str("COMMIT\n");
        out
    }

    fn apply(&mut self, payload: &str) -> Result<()> {
        if self.fail_next > 0 {
            self.fail_next -= 1;
            bail!("iptables-restore: line 2 failed");
        }
        let mut table = "";
        for line in payload.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t;
            } else if line.starts_with("-I ") {
                self.jumps.insert(format!("{table} {line}"));
            }
        }
        self.restores.push(payload.to_string());
        Ok(())
    }
}

/// A handle on the fake kernel.
#[derive(Clone, Default)]
pub struct FakeIptables(pub Arc<Mutex<FakeState>>);

impl FakeIptables {
    pub fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }

    /// A factory handing out handles on this same fake.
    pub fn factory(&self) -> KernelFactory {
        let me = self.clone();
        Arc::new(move || Box::new(me.clone()) as Box<dyn Kernel>)
    }
}

/// A payload arriving in pieces; applied whole at its end.
struct Pieces(FakeIptables, String, usize);

impl RestoreInput for Pieces {
    fn write(&mut self, text: &str) {
        assert!(!text.contains("COMMIT"), "no COMMIT before the end");
        self.1.push_str(text);
        self.2 += 1;
    }
    fn finish(self: Box<Self>, rest: &str) -> Result<()> {
        let mut s = self.0.state();
        s.pieces.push(self.2);
        s.apply(&(self.1 + rest))
    }
}

impl Kernel for FakeIptables {
    fn restore(&mut self, _: Family, payload: &str) -> Result<()> {
        self.state().apply(payload)
    }
    fn restore_begin(&mut self, _: Family) -> Result<Option<Box<dyn RestoreInput>>> {
        let streaming = self.state().streaming;
        Ok(streaming
            .then(|| Box::new(Pieces(self.clone(), String::new(), 0)) as Box<dyn RestoreInput>))
    }
    fn save_each(&mut self, _: Family, table: Table, each: &mut dyn FnMut(&str)) -> Result<()> {
        let dump = self.state().dump(table);
        dump.lines().for_each(each);
        Ok(())
    }
    fn has_jump(&mut self, _: Family, j: &Jump) -> Result<bool> {
        Ok(self.state().has(j))
    }
    fn ensure_jump(&mut self, _: Family, j: &Jump) -> Result<bool> {
        let key = FakeState::jump_key(j.table, &j.insert_line());
        Ok(self.state().jumps.insert(key))
    }
    fn delete_jump(&mut self, _: Family, j: &Jump) -> Result<()> {
        let key = FakeState::jump_key(j.table, &j.insert_line());
        self.state().jumps.remove(&key);
        Ok(())
    }
    fn available(&mut self, f: Family) -> bool {
        !self.state().unavailable.contains(&f)
    }
    fn is_legacy(&mut self) -> bool {
        self.state().legacy
    }
}
