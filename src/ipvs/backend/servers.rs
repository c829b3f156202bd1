//! The virtual and real servers of the IPVS backend: planning the changes
//! against what the kernel holds, reading connection counts of leaving real
//! servers, applying the changes and keeping our record of the kernel's
//! table in step.

use super::*;

impl IpvsBackend {
    pub(super) fn apply_op(&mut self, op: &Op) -> Result<()> {
        self.ipvs()?.apply(op)?;
        match op {
            Op::AddService(vs) => {
                self.current.insert(
                    vs.id.clone(),
                    Current {
                        vs: vs.clone(),
                        dests: vec![],
                    },
                );
            }
            Op::UpdateService(vs) => {
                if let Some(c) = self.current.get_mut(&vs.id) {
                    c.vs = vs.clone();
                }
            }
            Op::DelService(id) => {
                self.current.remove(id);
            }
            Op::AddDest(id, d) | Op::UpdateDest(id, d) => {
                if let Some(c) = self.current.get_mut(id) {
                    match c
                        .dests
                        .iter_mut()
                        .find(|(x, _)| x.addr == d.addr && x.port == d.port)
                    {
                        Some(x) => x.0.weight = d.weight,
                        None => c.dests.push((d.clone(), Default::default())),
                    }
                }
            }
            Op::DelDest(id, d) => {
                if let Some(c) = self.current.get_mut(id) {
                    c.dests
                        .retain(|(x, _)| !(x.addr == d.addr && x.port == d.port));
                }
            }
        }
        Ok(())
    }

    /// The operations turning the kernel's `services` (as last applied or
    /// read) into `desired`.
    pub(super) fn plan(
        &self,
        services: &BTreeSet<ServiceId>,
        desired: &Desired,
        draining: &mut Draining,
    ) -> Vec<Op> {
        let current: BTreeMap<ServiceId, Current> = services
            .iter()
            .filter_map(|id| self.current.get(id).map(|c| (id.clone(), c.clone())))
            .collect();
        let (fams, excl) = (self.families(), &self.s.exclude_cidrs);
        diff(
            &current,
            desired,
            draining,
            Instant::now(),
            self.s.drain_timeout,
            |id| owned(&fams, excl, id),
        )
    }

    pub(super) fn apply_ops(&mut self, ops: &[Op], stats: &mut SyncStats) -> Result<()> {
        for op in ops {
            self.apply_op(op)?;
            match op {
                Op::DelService(_) | Op::DelDest(..) => stats.deleted += 1,
                _ => stats.written += 1,
            }
        }
        stats.calls += ops.len();
        Ok(())
    }

    /// Real servers about to go or draining: their connection counts are
    /// read from the kernel (our record does not follow them), so that the
    /// diff drains busy ones and deletes idle ones.
    pub(super) fn refresh_leaving(&mut self, services: &BTreeSet<ServiceId>) -> Result<()> {
        let mut refresh = vec![];
        for id in services {
            let Some(cur) = self.current.get(id) else {
                continue;
            };
            let want = self.agg.service(id).map(|(_, d)| d);
            let leaving = cur.dests.iter().any(|(d, _)| {
                !want.is_some_and(|w| w.iter().any(|x| x.addr == d.addr && x.port == d.port))
            });
            if leaving && want.is_some() && id.protocol == crate::model::Protocol::Tcp {
                refresh.push(id.clone());
            }
        }
        for id in refresh {
            let dests = self.ipvs()?.dests(&id)?;
            if let Some(c) = self.current.get_mut(&id) {
                c.dests = dests;
            }
        }
        Ok(())
    }
}
