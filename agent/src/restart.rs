//! What outlives the agent: a journal of the inputs of the terminations in progress, kept in a
//! small state file on the node (`--state-file`, written atomically each tick and when the
//! agent stops), and replayed into a fresh engine when the agent starts again.
//!
//! The journal holds the decoded events and the few other inputs (a deletion seen by the
//! Kubernetes side, a termination opened from the kernel's watch, the kernel's list of open
//! connections, the identity) in the order the engine took them, from the moment the first of
//! the open terminations began until none is open — not the engine's internals, so it does not
//! depend on how the engine keeps its state. Replayed in order into a fresh engine, it rebuilds
//! the same terminations; what the kernel reports after the restart continues them (the
//! kernel maps are pinned under bpffs, so connection ids and watches carry over).

use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    attribute::cgroup_path::Identity,
    decode::{Event, KeptConnection},
    terminations::OpenConnection,
};

/// The state file's format; a file of another format is set aside, not misread.
pub const FORMAT: u32 = 1;
/// Inputs kept at most; beyond, the journal stops growing and a replayed report says it is
/// incomplete.
pub const MAX_RECORDS: usize = 100_000;

/// A connection the kernel listed as open when a termination began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub conn_id: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub inbound: bool,
    pub established_ns: u64,
}

impl From<&OpenConnection> for Listed {
    fn from(c: &OpenConnection) -> Self {
        Listed {
            conn_id: c.conn_id,
            local: c.local,
            remote: c.remote,
            inbound: c.inbound,
            established_ns: c.established_ns,
        }
    }
}

impl From<&Listed> for OpenConnection {
    fn from(c: &Listed) -> Self {
        OpenConnection {
            conn_id: c.conn_id,
            local: c.local,
            remote: c.remote,
            inbound: c.inbound,
            established_ns: c.established_ns,
        }
    }
}

/// One input of the engine, as it was given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum Record {
    Event {
        event: Event,
    },
    /// A pod deletion opened this cgroup's termination.
    OpenedForDeletion {
        cgroup_id: u64,
        identity: Option<Identity>,
        at_ns: u64,
        /// The port of the container's httpGet preStop hook (kubelet's request is not a
        /// client's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http_hook_port: Option<u16>,
    },
    /// The kernel's watch opened it (its stop signal never reached the agent).
    OpenedFromKernel {
        cgroup_id: u64,
        identity: Option<Identity>,
        since_ns: u64,
    },
    /// The connections the kernel listed as open when it began.
    Snapshot {
        cgroup_id: u64,
        open: Vec<Listed>,
    },
    /// Its identity, resolved while the cgroup existed.
    Identity {
        cgroup_id: u64,
        identity: Identity,
    },
    /// What the kernel kept of some of its connections (`KEPT_CONNS`), taken from the
    /// kernel (and deleted there) at once.
    Kept {
        cgroup_id: u64,
        conns: Vec<KeptConnection>,
    },
    /// The kernel's counts of the cgroup's lost events and untracked connections when it
    /// opened (the `incomplete` flag is measured from them).
    LostBase {
        cgroup_id: u64,
        events_lost: u64,
        untracked: u64,
    },
}

/// The state file's contents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    pub format: u32,
    /// Inputs left out because the journal was full.
    pub dropped: u64,
    pub records: Vec<Record>,
    /// Changes since the start (not written): the file is rewritten only after one.
    #[serde(skip)]
    pub generation: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a termscope state file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: state file format {found}, this agent reads {FORMAT}")]
    Format { path: PathBuf, found: u32 },
}

impl Journal {
    pub fn new() -> Self {
        Journal {
            format: FORMAT,
            ..Journal::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.dropped == 0
    }

    pub fn push(&mut self, record: Record) {
        self.generation += 1;
        if self.records.len() >= MAX_RECORDS {
            self.dropped += 1;
        } else {
            self.records.push(record);
        }
    }

    pub fn clear(&mut self) {
        if !self.is_empty() {
            self.generation += 1;
        }
        self.records.clear();
        self.dropped = 0;
    }

    /// Reads the state file; none there is an empty journal.
    pub fn read(path: &Path) -> Result<Self, StateError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Journal::new()),
            Err(source) => {
                return Err(StateError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        // The format first: a file of another format may not parse as this one.
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head = serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        if head.format != FORMAT {
            return Err(StateError::Format {
                path: path.to_path_buf(),
                found: head.format,
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes the state file atomically (a temporary file beside it, synced, renamed over it):
    /// an agent killed while writing leaves the previous file whole.
    pub fn write(&self, path: &Path) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let bytes = serde_json::to_vec(self).map_err(|e| io(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Sets an unreadable state file aside (`<path>.bad`) so the next write does not lose the
    /// evidence, and the agent starts empty.
    pub fn set_aside(path: &Path) -> Option<PathBuf> {
        let mut bad = path.as_os_str().to_owned();
        bad.push(".bad");
        let bad = PathBuf::from(bad);
        std::fs::rename(path, &bad).ok().map(|()| bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{ExitStatus, ProcessExit, Task};

    fn exit(cg: u64) -> Record {
        Record::Event {
            event: Event::ProcessExit(ProcessExit {
                ts_ns: 7,
                task: Task {
                    pid: 1,
                    tgid: 1,
                    comm: "x".into(),
                },
                cgroup_id: cg,
                exit: ExitStatus::from_raw(9),
                raw_exit_code: 9,
            }),
        }
    }

    #[test]
    fn a_journal_survives_a_write_and_a_read() {
        let dir = std::env::temp_dir().join(format!("termscope-state-{}", std::process::id()));
        let path = dir.join("state");
        let mut j = Journal::new();
        j.push(exit(5));
        j.push(Record::Snapshot {
            cgroup_id: 5,
            open: vec![Listed {
                conn_id: 3,
                local: "127.0.0.1:80".parse().expect("addr"),
                remote: "127.0.0.1:4000".parse().expect("addr"),
                inbound: true,
                established_ns: 1,
            }],
        });
        j.write(&path).expect("write");
        let read = Journal::read(&path).expect("read");
        assert_eq!((read.records, read.dropped), (j.records, j.dropped));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// A state file the agent wrote before signals were typed (the deploy test's agent left
    /// it in `/var/lib/termscope/state`) reads back, and writes out byte for byte the same:
    /// the events' `signal`, `signal_name` and `result` are as they were.
    #[test]
    fn a_state_file_of_the_previous_agent_reads_back_the_same() {
        use crate::{
            decode::{Disposition, SignalResult},
            signal::Signal,
        };
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/state-before-typed-signals.json");
        let j = Journal::read(&path).expect("the previous agent's state file");
        let generated: Vec<_> = j
            .records
            .iter()
            .filter_map(|r| match r {
                Record::Event {
                    event: Event::Signal(s),
                } => Some((s.signal, s.result.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(generated, [(Signal::TERM, SignalResult::Delivered)]);
        assert!(j.records.iter().any(|r| matches!(r,
            Record::Event { event: Event::SignalDelivered(d) }
                if d.signal == Signal::TERM && d.disposition == Disposition::Handler)));
        let written = serde_json::to_string(&j).expect("json");
        assert_eq!(written, std::fs::read_to_string(&path).expect("read"));
    }

    #[test]
    fn no_file_is_an_empty_journal_and_garbage_is_an_error() {
        let dir = std::env::temp_dir().join(format!("termscope-state2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("state");
        assert!(Journal::read(&path).expect("none").is_empty());
        std::fs::write(&path, b"{\"format\": 99, \"records\": []}").expect("write");
        assert!(matches!(
            Journal::read(&path),
            Err(StateError::Format { found: 99, .. })
        ));
        std::fs::write(&path, b"not json").expect("write");
        assert!(matches!(
            Journal::read(&path),
            Err(StateError::Parse { .. })
        ));
        assert!(Journal::set_aside(&path).is_some());
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_full_journal_counts_what_it_leaves_out() {
        let mut j = Journal::new();
        for _ in 0..MAX_RECORDS + 3 {
            j.push(exit(1));
        }
        assert_eq!(j.records.len(), MAX_RECORDS);
        assert_eq!(j.dropped, 3);
    }
}
