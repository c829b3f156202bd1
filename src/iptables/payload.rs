//! Restore payloads as they are planned: the text `iptables-restore
//! --noflush` reads, and what it changes once it succeeds. Pure.
//!
//! Layout: the nat section, then the filter section. Within a section the
//! chains come in blocks (the fixed chains, one service port's chains, the
//! shared chains): a block declares its chains, then lists their rules, so a
//! rule only jumps to chains declared above it. Deleted chains are flushed
//! and removed at the end of their section. Because a complete block never
//! refers forward, the nat text written so far can be handed to
//! `iptables-restore` while the rest is still being rendered: a full legacy
//! sync is one payload of the whole table (~20 MB at 10,000 Services), which
//! then never sits in memory whole.

use super::render::{Chain, Table};

pub type ChainId = (Table, String);

/// One `iptables-restore --noflush` input and what it changes once it succeeds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload {
    /// The text (after what was streamed, see [`PayloadSink::stream`]).
    pub text: String,
    pub lines: usize,
    /// Chains written: id, hash of the rules, number of rules.
    pub writes: Vec<(ChainId, u64, usize)>,
    pub deletes: Vec<ChainId>,
}

/// Where planned payloads go.
pub trait PayloadSink {
    /// Whether the start of a payload may be handed over through
    /// [`PayloadSink::stream`] before the payload is complete.
    fn streams(&self) -> bool {
        false
    }

    /// The next piece of the payload being planned. It never holds a
    /// `COMMIT`: nothing reaches the kernel before [`PayloadSink::done`].
    fn stream(&mut self, _text: &str) {}

    /// The payload is complete; `p.text` is what was not streamed. Answers
    /// whether it reached the kernel (then the engine commits it) or failed
    /// (then the engine forgets it), or `None` to leave that to the caller.
    fn done(&mut self, p: &Payload) -> Option<bool>;
}

impl<F: FnMut(&Payload) -> Option<bool>> PayloadSink for F {
    fn done(&mut self, p: &Payload) -> Option<bool> {
        self(p)
    }
}

/// How many lines a payload may have before the next one starts.
#[derive(Clone, Copy)]
pub enum PayloadSize {
    Fixed(usize),
    /// A function of the number of service ports in the model.
    Scaled(fn(usize) -> usize),
}

impl PayloadSize {
    pub fn lines(self, service_ports: usize) -> usize {
        match self {
            PayloadSize::Fixed(n) => n,
            PayloadSize::Scaled(f) => f(service_ports),
        }
    }
}

impl std::fmt::Debug for PayloadSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PayloadSize::Fixed(usize::MAX) => write!(f, "one payload"),
            PayloadSize::Fixed(n) => write!(f, "{n}"),
            PayloadSize::Scaled(l) => write!(
                f,
                "scaled with the model ({} at 1,000 service ports, {} at 10,000, {} at 30,000)",
                l(1000),
                l(10_000),
                l(30_000)
            ),
        }
    }
}

/// Streamed pieces are at least this large (fewer, larger pipe writes).
pub const STREAM_BYTES: usize = 256 * 1024;

/// One table's section of a payload.
#[derive(Default)]
struct Section {
    /// Complete blocks, after the `*table` line once there is one.
    text: String,
    /// Whether the `*table` line was written (it may have been streamed).
    started: bool,
    /// The open block: declarations and rules of its chains.
    decls: String,
    rules: String,
    /// Deleted chains: flushed (declared), then `-X`.
    delete_decls: String,
    deletes: String,
    /// `-I` lines into built-in chains, last (they jump to chains above).
    inserts: String,
}

fn declare(out: &mut String, name: &str) {
    out.push(':');
    out.push_str(name);
    out.push_str(" - [0:0]\n");
}

impl Section {
    fn header(&mut self, table: Table) {
        if !self.started {
            self.started = true;
            self.text.push('*');
            self.text.push_str(table.name());
            self.text.push('\n');
        }
    }

    fn end_block(&mut self, table: Table) {
        if self.decls.is_empty() {
            return;
        }
        self.header(table);
        self.text.push_str(&self.decls);
        self.text.push_str(&self.rules);
        self.decls.clear();
        self.rules.clear();
    }

    fn finish(mut self, table: Table) -> String {
        self.end_block(table);
        if !self.deletes.is_empty() {
            self.header(table);
            self.text.push_str(&self.delete_decls);
            self.text.push_str(&self.deletes);
        }
        if !self.inserts.is_empty() {
            self.header(table);
            self.text.push_str(&self.inserts);
        }
        if self.started {
            self.text.push_str("COMMIT\n");
        }
        self.text
    }
}

#[derive(Default)]
pub(super) struct PayloadBuilder {
    nat: Section,
    filter: Section,
    pub lines: usize,
    writes: Vec<(ChainId, u64, usize)>,
    delete_ids: Vec<ChainId>,
    inserts: usize,
}

impl PayloadBuilder {
    fn section(&mut self, table: Table) -> &mut Section {
        match table {
            Table::Nat => &mut self.nat,
            Table::Filter => &mut self.filter,
        }
    }

    /// Adds a chain to the open block.
    pub fn write(&mut self, chain: Chain, hash: u64) {
        self.lines += chain.rules.len() + 1;
        let s = self.section(chain.table);
        declare(&mut s.decls, &chain.name);
        for rule in &chain.rules {
            s.rules.push_str(rule);
            s.rules.push('\n');
        }
        self.writes
            .push(((chain.table, chain.name), hash, chain.rules.len()));
    }

    /// Closes the open block: its chains refer only to each other and to
    /// chains of earlier blocks.
    pub fn end_block(&mut self) {
        self.nat.end_block(Table::Nat);
        self.filter.end_block(Table::Filter);
    }

    pub fn delete(&mut self, id: ChainId) {
        self.lines += 2;
        let s = self.section(id.0);
        declare(&mut s.delete_decls, &id.1);
        s.deletes.push_str("-X ");
        s.deletes.push_str(&id.1);
        s.deletes.push('\n');
        self.delete_ids.push(id);
    }

    /// Adds a rule to a built-in chain (`-I CHAIN ...`) at the end of the
    /// table's section.
    pub fn insert(&mut self, table: Table, line: &str) {
        self.lines += 1;
        self.inserts += 1;
        let s = self.section(table);
        s.inserts.push_str(line);
        s.inserts.push('\n');
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.delete_ids.is_empty() && self.inserts == 0
    }

    /// The complete nat blocks, once they are at least `min` bytes: they
    /// can go to `iptables-restore` now (the filter section comes last).
    pub fn streamable(&mut self, min: usize) -> Option<String> {
        (self.nat.text.len() >= min.max(1)).then(|| std::mem::take(&mut self.nat.text))
    }

    pub fn finish(self) -> Payload {
        let mut text = self.nat.finish(Table::Nat);
        text.push_str(&self.filter.finish(Table::Filter));
        Payload {
            text,
            lines: self.lines,
            writes: self.writes,
            deletes: self.delete_ids,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(table: Table, name: &str, rules: &[&str]) -> Chain {
        Chain {
            table,
            name: name.into(),
            rules: rules.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn blocks_declare_their_chains_before_their_rules() {
        let mut b = PayloadBuilder::default();
        b.write(
            chain(
                Table::Filter,
                "KUBE-FORWARD",
                &["-A KUBE-FORWARD -j ACCEPT"],
            ),
            1,
        );
        b.write(
            chain(Table::Nat, "KUBE-MARK-MASQ", &["-A KUBE-MARK-MASQ -j MARK"]),
            2,
        );
        b.end_block();
        b.write(
            chain(Table::Nat, "KUBE-SVC-A", &["-A KUBE-SVC-A -j KUBE-SEP-A"]),
            3,
        );
        b.write(
            chain(Table::Nat, "KUBE-SEP-A", &["-A KUBE-SEP-A -j DNAT"]),
            4,
        );
        b.end_block();
        b.delete((Table::Nat, "KUBE-SEP-OLD".into()));
        b.insert(Table::Nat, "-I OUTPUT -j KUBE-SVC-A");
        let p = b.finish();
        assert_eq!(
            p.text,
            "*nat\n\
             :KUBE-MARK-MASQ - [0:0]\n\
             -A KUBE-MARK-MASQ -j MARK\n\
             :KUBE-SVC-A - [0:0]\n\
             :KUBE-SEP-A - [0:0]\n\
             -A KUBE-SVC-A -j KUBE-SEP-A\n\
             -A KUBE-SEP-A -j DNAT\n\
             :KUBE-SEP-OLD - [0:0]\n\
             -X KUBE-SEP-OLD\n\
             -I OUTPUT -j KUBE-SVC-A\n\
             COMMIT\n\
             *filter\n\
             :KUBE-FORWARD - [0:0]\n\
             -A KUBE-FORWARD -j ACCEPT\n\
             COMMIT\n"
        );
        assert_eq!(p.lines, 4 * 2 + 2 + 1);
        assert_eq!(p.writes.len(), 4);
        assert_eq!(p.deletes, vec![(Table::Nat, "KUBE-SEP-OLD".to_string())]);
    }

    #[test]
    fn a_section_with_only_deletes_or_inserts_has_its_header_and_commit() {
        let mut b = PayloadBuilder::default();
        b.delete((Table::Filter, "KUBE-X".into()));
        assert_eq!(
            b.finish().text,
            "*filter\n:KUBE-X - [0:0]\n-X KUBE-X\nCOMMIT\n"
        );
        let mut b = PayloadBuilder::default();
        assert!(b.is_empty());
        b.insert(Table::Nat, "-I PREROUTING -j KUBE-SERVICES");
        assert!(!b.is_empty());
        assert_eq!(
            b.finish().text,
            "*nat\n-I PREROUTING -j KUBE-SERVICES\nCOMMIT\n"
        );
    }

    #[test]
    fn streamed_pieces_and_the_rest_make_the_whole_payload() {
        let build = |stream: bool| {
            let mut b = PayloadBuilder::default();
            let mut streamed = String::new();
            for i in 0..50 {
                let name = format!("KUBE-SVC-{i:016}");
                b.write(
                    chain(Table::Nat, &name, &[&format!("-A {name} -j ACCEPT")]),
                    i,
                );
                b.write(chain(Table::Filter, "KUBE-F", &["-A KUBE-F -j ACCEPT"]), i);
                b.end_block();
                if stream {
                    if let Some(t) = b.streamable(200) {
                        assert!(!t.contains("COMMIT"));
                        streamed.push_str(&t);
                    }
                }
            }
            let p = b.finish();
            (streamed, p.text)
        };
        let (none, whole) = build(false);
        assert!(none.is_empty());
        let (streamed, rest) = build(true);
        assert!(streamed.len() > 1000, "{}", streamed.len());
        assert_eq!(streamed + &rest, whole);
        // An open block is never streamed.
        let mut b = PayloadBuilder::default();
        b.write(
            chain(Table::Nat, "KUBE-SVC-A", &["-A KUBE-SVC-A -j ACCEPT"]),
            1,
        );
        assert_eq!(b.streamable(0), None);
    }
}
