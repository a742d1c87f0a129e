//! The forensic log: one [`TerminationReport`] per line (JSON lines), to a file rotated by
//! size (`PATH`, then `PATH.1` ... `PATH.N`, the oldest dropped) and to stdout, where log
//! shippers pick it up. [`read_log`] reads the file and its rotations back in order.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufRead, BufReader, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::terminations::{
    kube::{POD_SCHEMA_FAMILY, PodTerminationReport},
    report::TerminationReport,
};

/// Where the agent writes reports by default, and where `termscope report` reads them.
pub const DEFAULT_PATH: &str = "/var/log/termscope/terminations.jsonl";
/// Rotate the file when a report would take it past this size.
pub const DEFAULT_MAX_BYTES: u64 = 50 * 1024 * 1024;
/// Rotated files kept.
pub const DEFAULT_KEEP: usize = 5;

/// The outputs a report write failed on (`stdout`, `file`), with the errors.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct WriteErrors(pub Vec<LogError>);

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("serializing report {id}: {source}")]
    Serialize {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("rotating {}: {source}", path.display())]
    Rotate {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing to stdout: {0}")]
    Stdout(#[source] io::Error),
    #[error("--log-file {}: cannot write there: {source}", path.display())]
    Unusable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "no report log at {} (nor rotated files {}.1 ...): is the agent writing elsewhere \
         (--log-file), or has no termination been reported yet?",
        path.display(),
        path.display()
    )]
    NotFound { path: PathBuf },
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where reports go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// The log file; `None`: no file.
    pub path: Option<PathBuf>,
    pub max_bytes: u64,
    /// Rotated files kept (`PATH.1` ... `PATH.keep`); 0: the file is started anew instead.
    pub keep: usize,
    /// Also one line per report on stdout.
    pub stdout: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            path: Some(PathBuf::from(DEFAULT_PATH)),
            max_bytes: DEFAULT_MAX_BYTES,
            keep: DEFAULT_KEEP,
            stdout: true,
        }
    }
}

impl LogError {
    /// The output that failed, as `termscope_report_write_failures_total` labels it.
    pub fn output(&self) -> &'static str {
        match self {
            LogError::Stdout(_) => "stdout",
            _ => "file",
        }
    }
}

/// Writes reports as JSON lines.
#[derive(Debug)]
pub struct ReportLog {
    cfg: LogConfig,
    file: Option<File>,
    /// The file may end in a line cut short (a write failed half-way, e.g. on a full disk,
    /// or the file was just opened): check before appending, so that the next report starts
    /// on a line of its own.
    check_tail: bool,
    /// The last report written to stdout was shortened to fit one line.
    stdout_shortened: bool,
}

impl ReportLog {
    /// The file is opened (and its directory created) on the first write.
    pub fn new(cfg: LogConfig) -> Self {
        ReportLog {
            cfg,
            file: None,
            check_tail: true,
            stdout_shortened: false,
        }
    }

    /// Whether a report was shortened on stdout since the last call (for the metric).
    pub fn take_stdout_shortened(&mut self) -> bool {
        std::mem::take(&mut self.stdout_shortened)
    }

    /// Opens the log file now (creating its directory), so that a path the agent cannot write
    /// fails at start-up rather than at the first report.
    pub fn open(&mut self) -> Result<(), LogError> {
        let Some(path) = self.cfg.path.clone() else {
            return Ok(());
        };
        self.current_size(&path)
            .map(|_| ())
            .map_err(|source| LogError::Unusable { path, source })
    }

    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }

    /// Writes one report to stdout and to the file. Both are attempted; the errors of those
    /// that failed are returned (the caller logs and counts them and goes on: the report is
    /// still in the store).
    pub fn write(&mut self, report: &TerminationReport) -> Result<(), WriteErrors> {
        self.write_record(&report.id, report)
    }

    /// Writes one pod report (Kubernetes) the same way, to the same log.
    pub fn write_pod(&mut self, report: &PodTerminationReport) -> Result<(), WriteErrors> {
        self.write_record(&report.id, report)
    }

    fn write_record(
        &mut self,
        id: &str,
        record: &impl serde::Serialize,
    ) -> Result<(), WriteErrors> {
        let serialize = |source| {
            WriteErrors(vec![LogError::Serialize {
                id: id.to_string(),
                source,
            }])
        };
        let mut line = serde_json::to_string(record).map_err(serialize)?;
        line.push('\n');
        let stdout = if self.cfg.stdout {
            // Log shippers read stdout through containerd, which splits lines over 16 KiB.
            let short;
            let bounded = if line.len() > super::bound::STDOUT_MAX_LINE {
                short = super::bound::stdout_line(record).map_err(serialize)?;
                self.stdout_shortened = true;
                &short
            } else {
                &line
            };
            let mut out = io::stdout().lock();
            out.write_all(bounded.as_bytes())
                .and_then(|()| out.flush())
                .map_err(LogError::Stdout)
        } else {
            Ok(())
        };
        let file = match self.cfg.path.clone() {
            Some(path) => self.append(&path, line.as_bytes()),
            None => Ok(()),
        };
        let errors: Vec<LogError> = [stdout, file].into_iter().filter_map(Result::err).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(WriteErrors(errors))
        }
    }

    fn append(&mut self, path: &Path, line: &[u8]) -> Result<(), LogError> {
        let write_err = |source| LogError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut size = self.current_size(path).map_err(write_err)?;
        if size > 0 && size.saturating_add(line.len() as u64) > self.cfg.max_bytes {
            self.file = None;
            rotate(path, self.cfg.keep).map_err(|source| LogError::Rotate {
                path: path.to_path_buf(),
                source,
            })?;
            size = self.current_size(path).map_err(write_err)?;
        }
        let check_tail = std::mem::take(&mut self.check_tail);
        let result = match &mut self.file {
            Some(f) => {
                let cut_short = check_tail && size > 0 && !ends_with_newline(f, size);
                if cut_short {
                    f.write_all(b"\n").and_then(|()| f.write_all(line))
                } else {
                    f.write_all(line)
                }
            }
            None => Err(io::Error::other("the log file is not open")),
        };
        if result.is_err() {
            // Reopen, and check the end of the file, on the next write.
            self.file = None;
            self.check_tail = true;
        }
        result.map_err(write_err)
    }

    /// Opens the file if needed (also when it was removed or rotated away by someone else)
    /// and returns its size.
    fn current_size(&mut self, path: &Path) -> io::Result<u64> {
        if let Some(f) = &self.file {
            let open = f.metadata()?;
            match std::fs::metadata(path) {
                Ok(now) if now.ino() == open.ino() && now.dev() == open.dev() => {
                    return Ok(open.len());
                }
                _ => self.file = None,
            }
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        let len = f.metadata()?.len();
        self.file = Some(f);
        self.check_tail = true;
        Ok(len)
    }
}

/// Whether the file of `size` bytes ends with a newline.
fn ends_with_newline(f: &File, size: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let mut last = [0u8; 1];
    // Unreadable: assume the worst, an extra newline costs an empty line that readers skip.
    f.read_at(&mut last, size - 1).is_ok_and(|n| n == 1) && last[0] == b'\n'
}

/// `PATH.N` for a rotation number.
pub fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// `PATH` -> `PATH.1` -> ... -> `PATH.keep`, dropping the oldest.
fn rotate(path: &Path, keep: usize) -> io::Result<()> {
    let ignore_missing = |r: io::Result<()>| match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    };
    if keep == 0 {
        return ignore_missing(std::fs::remove_file(path));
    }
    ignore_missing(std::fs::remove_file(rotated_path(path, keep)))?;
    for n in (1..keep).rev() {
        ignore_missing(std::fs::rename(
            rotated_path(path, n),
            rotated_path(path, n + 1),
        ))?;
    }
    ignore_missing(std::fs::rename(path, rotated_path(path, 1)))
}

/// A line [`read_log`] could not read as a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    pub error: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: not a termination report: {}",
            self.file.display(),
            self.line,
            self.error
        )
    }
}

/// What a log holds.
#[derive(Debug, Default)]
pub struct LogContents {
    /// Oldest first.
    pub reports: Vec<TerminationReport>,
    /// Pod reports (Kubernetes), oldest first.
    pub pods: Vec<PodTerminationReport>,
    pub skipped: Vec<Skipped>,
}

/// The files of the log at `path`, oldest first: `PATH.N` ... `PATH.1`, `PATH` (those that
/// exist).
pub fn log_files(path: &Path) -> Vec<PathBuf> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut numbered: Vec<usize> = Vec::new();
    if let (Some(name), Ok(entries)) = (path.file_name(), std::fs::read_dir(dir)) {
        let prefix = format!("{}.", name.to_string_lossy());
        for entry in entries.flatten() {
            let entry_name = entry.file_name();
            let n = entry_name
                .to_str()
                .and_then(|e| e.strip_prefix(&prefix))
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<usize>().ok());
            numbered.extend(n);
        }
    }
    numbered.sort_unstable_by(|a, b| b.cmp(a));
    let mut files: Vec<PathBuf> = numbered.iter().map(|&n| rotated_path(path, n)).collect();
    if path.exists() {
        files.push(path.to_path_buf());
    }
    files
}

/// Reads every report of the log at `path` and its rotations, oldest first. Lines that are
/// not reports are skipped and listed.
pub fn read_log(path: &Path) -> Result<LogContents, LogError> {
    let files = log_files(path);
    if files.is_empty() {
        return Err(LogError::NotFound {
            path: path.to_path_buf(),
        });
    }
    let mut out = LogContents::default();
    for file in files {
        let read_err = |source| LogError::Read {
            path: file.clone(),
            source,
        };
        let f = File::open(&file).map_err(read_err)?;
        for (i, line) in BufReader::new(f).lines().enumerate() {
            let line = line.map_err(read_err)?;
            if line.trim().is_empty() {
                continue;
            }
            // A pod report (Kubernetes); if it does not parse as one (the schema string was
            // in some value), it is tried as a container report below.
            if line.contains(POD_SCHEMA_FAMILY)
                && let Ok(r) = serde_json::from_str::<PodTerminationReport>(&line)
            {
                out.pods.push(r);
                continue;
            }
            match serde_json::from_str::<TerminationReport>(&line) {
                Ok(r) => out.reports.push(r),
                Err(e) => out.skipped.push(Skipped {
                    file: file.clone(),
                    line: i + 1,
                    error: e.to_string(),
                }),
            }
        }
    }
    Ok(out)
}

/// Reads every report of the log at `path` and its rotations, oldest first; malformed lines
/// are skipped with a warning each.
pub fn read_reports(path: &Path) -> Result<Vec<TerminationReport>, LogError> {
    let contents = read_log(path)?;
    for s in &contents.skipped {
        tracing::warn!("skipped {s}");
    }
    if !contents.skipped.is_empty() {
        tracing::warn!(
            skipped = contents.skipped.len(),
            read = contents.reports.len(),
            "some lines of the report log were not reports"
        );
    }
    Ok(contents.reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outputs::fixtures;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "termscope-log-{name}-{}-{}",
                std::process::id(),
                crate::clock::wall_ns()
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn numbered(id: usize) -> TerminationReport {
        let mut r = fixtures::graceful();
        r.id = format!("r{id:03}");
        r
    }

    fn line_len() -> u64 {
        serde_json::to_string(&numbered(0)).expect("json").len() as u64 + 1
    }

    #[test]
    fn rotates_at_the_size_limit_and_keeps_n_files() {
        let tmp = TempDir::new("rotate");
        // Parent directories are created.
        let path = tmp.0.join("sub/dir/t.jsonl");
        // Three reports per file.
        let mut log = ReportLog::new(LogConfig {
            path: Some(path.clone()),
            max_bytes: line_len() * 3,
            keep: 2,
            stdout: false,
        });
        for i in 0..3 {
            log.write(&numbered(i)).expect("writes");
        }
        assert!(!rotated_path(&path, 1).exists(), "exactly at the limit");
        assert_eq!(
            std::fs::metadata(&path).expect("file").len(),
            line_len() * 3
        );
        log.write(&numbered(3)).expect("writes");
        assert!(rotated_path(&path, 1).exists(), "rotated past the limit");
        for i in 4..14 {
            log.write(&numbered(i)).expect("writes");
        }
        // 14 reports: r12, r13 in PATH; r09..r11 in PATH.1; r06..r08 in PATH.2; older dropped.
        assert!(!rotated_path(&path, 3).exists(), "keep 2");
        let files = log_files(&path);
        assert_eq!(
            files,
            [rotated_path(&path, 2), rotated_path(&path, 1), path.clone()]
        );
        let ids: Vec<_> = read_reports(&path)
            .expect("reads")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(
            ids,
            [
                "r006", "r007", "r008", "r009", "r010", "r011", "r012", "r013"
            ]
        );
    }

    #[test]
    fn keep_zero_starts_the_file_anew() {
        let tmp = TempDir::new("keep0");
        let path = tmp.0.join("t.jsonl");
        let mut log = ReportLog::new(LogConfig {
            path: Some(path.clone()),
            max_bytes: line_len() * 2,
            keep: 0,
            stdout: false,
        });
        for i in 0..5 {
            log.write(&numbered(i)).expect("writes");
        }
        assert_eq!(log_files(&path), std::slice::from_ref(&path));
        let ids: Vec<_> = read_reports(&path)
            .expect("reads")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["r004"]);
    }

    #[test]
    fn a_file_removed_underneath_is_recreated() {
        let tmp = TempDir::new("removed");
        let path = tmp.0.join("t.jsonl");
        let mut log = ReportLog::new(LogConfig {
            path: Some(path.clone()),
            stdout: false,
            ..LogConfig::default()
        });
        log.write(&numbered(1)).expect("writes");
        std::fs::remove_file(&path).expect("removed");
        log.write(&numbered(2)).expect("writes");
        let ids: Vec<_> = read_reports(&path)
            .expect("reads")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["r002"]);
    }

    #[test]
    fn malformed_lines_are_skipped_and_counted() {
        let tmp = TempDir::new("malformed");
        let path = tmp.0.join("t.jsonl");
        let good = serde_json::to_string(&numbered(1)).expect("json");
        let older = serde_json::to_string(&numbered(0)).expect("json");
        std::fs::write(rotated_path(&path, 1), format!("{older}\n")).expect("write");
        std::fs::write(&path, format!("{good}\n{{\"truncated\": \n\n{good}\n")).expect("write");
        // Not rotations of this log.
        std::fs::write(tmp.0.join("t.jsonl.bak"), "x").expect("write");
        std::fs::write(tmp.0.join("other.jsonl.1"), "x").expect("write");
        let contents = read_log(&path).expect("reads");
        let ids: Vec<_> = contents.reports.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["r000", "r001", "r001"]);
        assert_eq!(contents.skipped.len(), 1);
        assert_eq!(contents.skipped[0].line, 2);
        let msg = contents.skipped[0].to_string();
        assert!(msg.contains("t.jsonl:2: not a termination report"), "{msg}");
        assert_eq!(read_reports(&path).expect("reads").len(), 3);
    }

    /// A log keeps what older agents wrote: a v2 report (no `closed_unanswered` count) is read.
    #[test]
    fn reports_of_the_previous_schema_are_read() {
        let tmp = TempDir::new("v2");
        let path = tmp.0.join("t.jsonl");
        let mut v2 = serde_json::to_value(numbered(7)).expect("json");
        v2["schema"] = "termscope/termination/v2".into();
        for counts in ["counts", "outbound_counts"] {
            if let Some(c) = v2[counts].as_object_mut() {
                c.remove("closed_unanswered");
            }
        }
        std::fs::write(&path, format!("{v2}\n")).expect("write");
        let contents = read_log(&path).expect("reads");
        assert!(contents.skipped.is_empty(), "{:?}", contents.skipped);
        assert_eq!(contents.reports.len(), 1);
        assert_eq!(contents.reports[0].counts.closed_unanswered, 0);
        // Pod reports of every version are told by the family their schema belongs to.
        assert!(crate::terminations::kube::POD_SCHEMA.starts_with(POD_SCHEMA_FAMILY));
    }

    #[test]
    fn a_missing_log_says_so() {
        let tmp = TempDir::new("missing");
        let err = read_log(&tmp.0.join("none.jsonl")).expect_err("missing");
        assert!(matches!(err, LogError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("--log-file"), "{err}");
    }

    #[test]
    fn a_line_cut_short_is_not_glued_to_the_next_report() {
        let tmp = TempDir::new("cut");
        let path = tmp.0.join("t.jsonl");
        let mut log = ReportLog::new(LogConfig {
            path: Some(path.clone()),
            stdout: false,
            ..LogConfig::default()
        });
        log.write(&numbered(1)).expect("writes");
        // What a write that failed half-way (ENOSPC) leaves: the start of a line.
        let line = serde_json::to_string(&numbered(2)).expect("json");
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(&line.as_bytes()[..40]).expect("write");
        drop(f);
        // The agent's next write failed (it cannot know how much went out) ...
        log.check_tail = true;
        log.write(&numbered(3)).expect("writes");
        log.write(&numbered(4)).expect("writes");
        let contents = read_log(&path).expect("reads");
        let ids: Vec<_> = contents.reports.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["r001", "r003", "r004"]);
        assert_eq!(contents.skipped.len(), 1, "the cut line alone is skipped");
        // A new writer (a restarted agent) checks too.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"cut").expect("write");
        drop(f);
        let mut log = ReportLog::new(LogConfig {
            path: Some(path.clone()),
            stdout: false,
            ..LogConfig::default()
        });
        log.write(&numbered(5)).expect("writes");
        let contents = read_log(&path).expect("reads");
        assert_eq!(contents.reports.len(), 4);
        assert_eq!(contents.skipped.len(), 2);
    }

    /// What a v2 report read back writes beyond what it held: v3's `closed_unanswered`
    /// count (0 for a report that had none).
    const V3_COUNT: &str = r#","closed_unanswered":0"#;

    /// Reports the agent wrote before signals, their results and how processes ended were
    /// typed (v2 reports: the fixtures above as that agent's engine wrote them) read back
    /// from a log, name the same signals, and write out byte for byte what they held (plus
    /// v3's new count).
    #[test]
    fn reports_of_the_previous_agent_read_back_the_same() {
        use crate::terminations::report::{ExitHow, Signal, SignalResult};
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/reports-before-typed-signals.jsonl");
        let contents = read_log(&path).expect("reads");
        assert!(contents.skipped.is_empty(), "{:?}", contents.skipped);
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(contents.reports.len(), lines.len());
        for (r, line) in contents.reports.iter().zip(&lines) {
            let written = serde_json::to_string(r).expect("json");
            assert_eq!(&written.replace(V3_COUNT, ""), line);
        }
        let [no_handler, killed, graceful] = &contents.reports[..] else {
            panic!("not the three fixtures: {:?}", contents.reports)
        };
        let signals = |r: &TerminationReport| -> Vec<_> {
            r.stop_signals
                .iter()
                .map(|s| (s.signal, s.result.clone()))
                .collect()
        };
        assert_eq!(
            signals(no_handler),
            [(Signal::TERM, SignalResult::Delivered)]
        );
        assert_eq!(
            (no_handler.exits[0].how.clone(), no_handler.exits[0].signal),
            (ExitHow::Signaled, Some(Signal::TERM))
        );
        assert_eq!(
            signals(killed),
            [
                (Signal::TERM, SignalResult::Delivered),
                (Signal::KILL, SignalResult::Delivered)
            ]
        );
        assert!(killed.sigkill_escalation());
        assert!(
            killed
                .exits
                .iter()
                .all(|e| e.how == ExitHow::Signaled && e.signal == Some(Signal::KILL))
        );
        assert_eq!(
            (graceful.exits[0].how.clone(), graceful.exits[0].code),
            (ExitHow::Exited, Some(0))
        );

        // A result and an exit kind only a newer agent knows, and a signal number with no
        // name, are kept as they are.
        let line = lines[1]
            .replacen(r#""result":"delivered""#, r#""result":"a_newer_result""#, 1)
            .replacen(r#""how":"signaled""#, r#""how":"a_newer_end""#, 1)
            .replacen(r#""signal":"SIGTERM""#, r#""signal":"33""#, 1);
        assert_ne!(line, lines[1]);
        let r: TerminationReport = serde_json::from_str(&line).expect("report");
        assert_eq!(r.stop_signals[0].signal, Signal::from_kernel(33));
        assert!(!r.stop_signals[0].result.is_known());
        assert_eq!(r.stop_signals[0].result.as_str(), "a_newer_result");
        assert_eq!(r.exits[0].how, ExitHow::from_name("a_newer_end"));
        let written = serde_json::to_string(&r).expect("json");
        assert_eq!(written.replace(V3_COUNT, ""), line);
    }

    #[test]
    fn an_unusable_path_fails_when_opened() {
        let tmp = TempDir::new("unusable");
        std::fs::write(tmp.0.join("blocker"), "").expect("write");
        let mut log = ReportLog::new(LogConfig {
            path: Some(tmp.0.join("blocker/t.jsonl")),
            stdout: false,
            ..LogConfig::default()
        });
        let err = log.open().expect_err("fails");
        assert!(err.to_string().starts_with("--log-file "), "{err}");
        assert!(err.to_string().contains("blocker/t.jsonl"), "{err}");
        let mut log = ReportLog::new(LogConfig {
            path: Some(tmp.0.join("new/dir/t.jsonl")),
            stdout: false,
            ..LogConfig::default()
        });
        log.open().expect("creates the directory");
        assert!(tmp.0.join("new/dir/t.jsonl").exists());
    }

    #[test]
    fn write_errors_are_returned_and_the_next_write_retries() {
        let tmp = TempDir::new("error");
        // The parent "directory" is a file: creating the log fails.
        std::fs::write(tmp.0.join("blocker"), "").expect("write");
        let mut log = ReportLog::new(LogConfig {
            path: Some(tmp.0.join("blocker/t.jsonl")),
            stdout: false,
            ..LogConfig::default()
        });
        let err = log.write(&numbered(1)).expect_err("fails");
        assert!(
            matches!(err.0.as_slice(), [LogError::Write { .. }]),
            "{err}"
        );
        assert_eq!(err.0[0].output(), "file");
        std::fs::remove_file(tmp.0.join("blocker")).expect("rm");
        log.write(&numbered(2)).expect("recovers");
    }
}
