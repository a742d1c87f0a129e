//! The agent's core loop, without the async runtime: events from the probes go through
//! attribution into the termination engine, whose requests (list open connections, is the
//! cgroup empty, stop watching) are answered here against the kernel maps and cgroupfs.
//! `termscope agent` drives it from tokio; the scenario tests drive it directly.

use termscope_common::{LiveConn, flags};

use crate::{
    attribute::{Resolver, cgroupfs},
    clock::{self, WallClock},
    decode::{Addrs, Event},
    probes::{ProbeError, Probes},
    terminations::{Action, Engine, EngineConfig, OpenConnection, report::TerminationReport},
};

pub struct Pipeline {
    probes: Probes,
    engine: Engine,
    resolver: Resolver,
    clock: WallClock,
}

impl Pipeline {
    pub fn new(probes: Probes, cfg: EngineConfig, mount: Option<cgroupfs::Mount>) -> Self {
        let clock = WallClock::now();
        Pipeline {
            probes,
            engine: Engine::new(cfg, clock),
            resolver: Resolver::new(mount),
            clock,
        }
    }

    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    pub fn probes_mut(&mut self) -> &mut Probes {
        &mut self.probes
    }

    pub fn resolver(&mut self) -> &mut Resolver {
        &mut self.resolver
    }

    pub fn clock(&self) -> WallClock {
        self.clock
    }

    /// Terminations in progress.
    pub fn open_terminations(&self) -> usize {
        self.engine.open_count()
    }

    /// Takes one event.
    pub fn handle(&mut self, event: &Event) -> Result<(), ProbeError> {
        let resolver = &mut self.resolver;
        let actions = self
            .engine
            .on_event(event, &mut |id| resolver.resolve(id).cloned());
        self.act(actions)
    }

    /// Finishes what is done; call about once a second.
    pub fn tick(&mut self) -> Result<Vec<TerminationReport>, ProbeError> {
        let (reports, actions) = self.engine.tick(clock::boot_ns());
        self.act(actions)?;
        Ok(reports)
    }

    /// Reports every termination in progress (the agent is stopping).
    pub fn flush(&mut self) -> Vec<TerminationReport> {
        self.engine.flush(clock::boot_ns())
    }

    fn act(&mut self, actions: Vec<Action>) -> Result<(), ProbeError> {
        for action in actions {
            match action {
                Action::Snapshot(cg) => {
                    let open: Vec<OpenConnection> = self
                        .probes
                        .live_connections()?
                        .into_iter()
                        .filter(|(_, c)| c.cgroup_id == cg)
                        .map(|(_, c)| open_connection(&c))
                        .collect();
                    tracing::debug!(cgroup = cg, open = open.len(), "termination opened");
                    self.engine.on_snapshot(cg, &open);
                }
                Action::CheckPopulated(cg) => {
                    if let Some(populated) = self.resolver.populated(cg) {
                        self.engine.on_population(cg, populated, clock::boot_ns());
                    }
                }
                Action::Unwatch(cg) => {
                    self.probes.unwatch(cg)?;
                    self.resolver.forget(cg);
                }
                Action::UnwatchNetns(netns) => self.probes.unwatch_netns(netns)?,
            }
        }
        Ok(())
    }
}

fn open_connection(c: &LiveConn) -> OpenConnection {
    let addrs = Addrs::from_raw(&c.tuple);
    OpenConnection {
        conn_id: c.conn_id,
        local: addrs.local,
        remote: addrs.remote,
        inbound: c.flags & flags::INBOUND != 0,
        established_ns: c.established_ns,
    }
}
