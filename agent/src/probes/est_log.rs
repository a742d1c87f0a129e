//! The establishment log (`EST_LOG`): when, and in which direction, the connections
//! established while their cgroup was not watched were opened.
//!
//! The programs write each such establishment into their CPU's ring (no lookup by key, never
//! deleted: the cost of a busy node's connections while nothing is watched). When a
//! container's watch begins, its connections are walked into `LIVE_CONNS` without an
//! establishment time; [`Establishments`] gives it back for those the log still holds.
//!
//! A ring overwrites its oldest entries, so an entry for a socket address may be an older
//! socket's while the live socket's own was overwritten. Only entries newer than the
//! *horizon* are trusted: the latest time before which some CPU's entries may be gone. Every
//! establishment after it is in the log, so the newest entry of an address after it is the
//! live socket's.

use std::collections::HashMap;

use termscope_common::est_log::{Entry, INBOUND, PER_CPU};

/// What the log says of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Established {
    /// Boot ns.
    pub at_ns: u64,
    pub inbound: bool,
}

/// The log as read once: the trusted establishments by socket address.
#[derive(Debug, Default)]
pub struct Establishments {
    by_sk: HashMap<u64, Established>,
    /// Establishments before this (boot ns) may be missing; 0 when none is.
    pub horizon_ns: u64,
}

impl Establishments {
    /// The establishment of the socket at `sk`, when the log holds it.
    pub fn get(&self, sk: u64) -> Option<Established> {
        self.by_sk.get(&sk).copied()
    }

    pub fn len(&self) -> usize {
        self.by_sk.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_sk.is_empty()
    }

    /// Reads the log: `entries` is the whole array (`PER_CPU` per CPU, CPU 0 first), `heads`
    /// each CPU's count of writes read *after* the entries (a slot overwritten while it was
    /// read then counts as lost, never as kept). Entries at or after `before_ns` (the start of
    /// the walk the result is joined with) are ignored: they belong to sockets opened after
    /// the walk met the live ones, possibly at the same address.
    pub fn from_log(entries: &[Entry], heads: &[u64], before_ns: u64) -> Self {
        let per_cpu = PER_CPU as usize;
        let mut horizon_ns = 0u64;
        for (cpu, &head) in heads.iter().enumerate() {
            let Some(ring) = entries.get(cpu * per_cpu..(cpu + 1) * per_cpu) else {
                continue;
            };
            if head <= PER_CPU as u64 {
                continue; // never wrapped: nothing of this CPU's is gone
            }
            // The oldest write still guaranteed in the ring is number `head - PER_CPU`; every
            // lost one is older, so no later than it. A slot found torn or rewritten gives a
            // later time: a more cautious horizon, never a wrong one.
            let oldest = (head - PER_CPU as u64) as usize;
            let first_valid = (0..per_cpu)
                .map(|i| &ring[(oldest + i) % per_cpu])
                .find(|e| e.is_valid());
            let at = first_valid.map_or(u64::MAX, |e| e.at & !INBOUND);
            horizon_ns = horizon_ns.max(at);
        }
        let mut by_sk: HashMap<u64, Established> = HashMap::new();
        for e in entries.iter().filter(|e| e.is_valid()) {
            let at_ns = e.at & !INBOUND;
            if at_ns < horizon_ns || at_ns >= before_ns {
                continue;
            }
            let this = Established {
                at_ns,
                inbound: e.at & INBOUND != 0,
            };
            by_sk
                .entry(e.sk)
                .and_modify(|known| {
                    if this.at_ns > known.at_ns {
                        *known = this;
                    }
                })
                .or_insert(this);
        }
        Establishments { by_sk, horizon_ns }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(cpus: usize) -> Vec<Entry> {
        vec![Entry::default(); cpus * PER_CPU as usize]
    }

    fn write(log: &mut [Entry], heads: &mut [u64], cpu: usize, sk: u64, at: u64, inbound: bool) {
        let slot = cpu * PER_CPU as usize + (heads[cpu] % PER_CPU as u64) as usize;
        log[slot] = Entry::new(sk, at | u64::from(inbound));
        heads[cpu] += 1;
    }

    #[test]
    fn the_newest_entry_of_an_address_is_its_live_socket() {
        let mut l = log(2);
        let mut heads = vec![0, 0];
        write(&mut l, &mut heads, 0, 0x1000, 100, false);
        write(&mut l, &mut heads, 1, 0x1000, 200, true);
        write(&mut l, &mut heads, 0, 0x2000, 300, false);
        let e = Establishments::from_log(&l, &heads, u64::MAX);
        assert_eq!(e.horizon_ns, 0);
        assert_eq!(
            e.get(0x1000),
            Some(Established {
                at_ns: 200,
                inbound: true
            })
        );
        assert_eq!(e.get(0x2000).map(|x| x.inbound), Some(false));
        assert_eq!(e.get(0x3000), None);
    }

    #[test]
    fn entries_older_than_what_a_wrapped_ring_lost_are_not_trusted() {
        let mut l = log(2);
        let mut heads = vec![0, 0];
        // CPU 1: the socket at 0x1000 was opened at 10 (an older socket at the same address).
        write(&mut l, &mut heads, 1, 0x1000, 10, false);
        // CPU 0 wraps: its entry for the live socket at 0x1000 (time 20) is overwritten.
        write(&mut l, &mut heads, 0, 0x1000, 20, true);
        for i in 0..PER_CPU as u64 {
            write(&mut l, &mut heads, 0, 0x10_0000 + i * 8, 30 + i, false);
        }
        let e = Establishments::from_log(&l, &heads, u64::MAX);
        assert_eq!(e.horizon_ns, 30);
        // The older socket's entry is not given for the live one.
        assert_eq!(e.get(0x1000), None);
        assert_eq!(e.get(0x10_0000).map(|x| x.at_ns), Some(30));
        assert_eq!(e.len(), PER_CPU as usize);
    }

    #[test]
    fn a_torn_entry_and_entries_after_the_walk_are_skipped() {
        let mut l = log(1);
        let mut heads = vec![0];
        write(&mut l, &mut heads, 0, 0x1000, 100, true);
        write(&mut l, &mut heads, 0, 0x2000, 200, true);
        write(&mut l, &mut heads, 0, 0x3000, 900, true);
        l[1].at ^= 1 << 20; // torn
        let e = Establishments::from_log(&l, &heads, 500);
        assert_eq!(e.get(0x1000).map(|x| x.at_ns), Some(100));
        assert_eq!(e.get(0x2000), None);
        assert_eq!(e.get(0x3000), None, "opened after the walk began");
    }

    #[test]
    fn a_torn_oldest_slot_moves_the_horizon_later_not_earlier() {
        let mut l = log(1);
        let mut heads = vec![0];
        for i in 0..PER_CPU as u64 + 1 {
            write(&mut l, &mut heads, 0, 0x1000 + i * 8, 10 + i, false);
        }
        // The oldest kept write (number 1, time 11) is in slot 1.
        l[1].check ^= 1;
        let e = Establishments::from_log(&l, &heads, u64::MAX);
        assert_eq!(e.horizon_ns, 12);
        assert_eq!(e.get(0x1000 + 8), None);
        assert_eq!(e.get(0x1000 + 16).map(|x| x.at_ns), Some(12));
    }
}
