//! tracefs: where it is mounted, and the record layout of a tracepoint from its `format` file.
//!
//! Tracepoint records are not a stable ABI (e.g. `tcp_send_reset` changed its address fields in
//! 6.10, `sched_process_exit` gained `group_dead` in 6.16), so the programs read fields at the
//! offsets parsed here rather than at offsets compiled in.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// The usual mount points, newest first.
pub const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted (looked at {}); mount it with `mount -t tracefs tracefs /sys/kernel/tracing`", CANDIDATES.join(", "))]
    NotMounted,
    #[error("mounting tracefs at {path} failed: {source}")]
    Mount {
        path: String,
        source: std::io::Error,
    },
    #[error("tracepoint {category}/{name} does not exist on this kernel ({path}: {source})")]
    NoTracepoint {
        category: String,
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("malformed format of {tracepoint}: line {line:?}: {reason}")]
    Malformed {
        tracepoint: String,
        line: String,
        reason: &'static str,
    },
}

/// A field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// The C declaration as written, e.g. `const void * skaddr`.
    pub decl: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

/// The layout of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub name: String,
    pub id: Option<u32>,
    pub fields: Vec<Field>,
}

impl Format {
    /// Parses the text of a tracepoint's `format` file.
    pub fn parse(tracepoint: &str, text: &str) -> Result<Self, TracefsError> {
        let malformed = |line: &str, reason| TracefsError::Malformed {
            tracepoint: tracepoint.to_string(),
            line: line.to_string(),
            reason,
        };
        let mut format = Format {
            name: tracepoint.to_string(),
            id: None,
            fields: Vec::new(),
        };
        for line in text.lines() {
            let line = line.trim();
            if let Some(id) = line.strip_prefix("ID:") {
                format.id = Some(
                    id.trim()
                        .parse()
                        .map_err(|_| malformed(line, "ID is not a number"))?,
                );
                continue;
            }
            if !line.starts_with("field:") {
                continue;
            }
            // field:<decl>;\toffset:<n>;\tsize:<n>;\tsigned:<0|1>;
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            let mut signed = false;
            for part in line.split(';') {
                let part = part.trim();
                if let Some(v) = part.strip_prefix("field:") {
                    decl = Some(v.trim().to_string());
                } else if let Some(v) = part.strip_prefix("offset:") {
                    offset = Some(
                        v.parse::<u32>()
                            .map_err(|_| malformed(line, "offset is not a number"))?,
                    );
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = Some(
                        v.parse::<u32>()
                            .map_err(|_| malformed(line, "size is not a number"))?,
                    );
                } else if let Some(v) = part.strip_prefix("signed:") {
                    signed = v == "1";
                }
            }
            let decl = decl.ok_or_else(|| malformed(line, "no declaration"))?;
            let name = field_name(&decl).ok_or_else(|| malformed(line, "no field name"))?;
            format.fields.push(Field {
                name,
                decl,
                offset: offset.ok_or_else(|| malformed(line, "no offset"))?,
                size: size.ok_or_else(|| malformed(line, "no size"))?,
                signed,
            });
        }
        if format.fields.is_empty() {
            return Err(malformed("", "no fields"));
        }
        Ok(format)
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// The identifier in a C declaration such as `const void * skaddr` or `__u8 saddr[28]`.
fn field_name(decl: &str) -> Option<String> {
    let last = decl.split_whitespace().last()?;
    let last = last.trim_start_matches('*');
    let name = match last.find('[') {
        Some(i) => &last[..i],
        None => last,
    };
    (!name.is_empty()).then(|| name.to_string())
}

/// The tracefs mount in use.
#[derive(Debug, Clone)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Finds a mounted tracefs.
    pub fn find() -> Result<Self, TracefsError> {
        CANDIDATES
            .iter()
            .map(Path::new)
            .find(|p| p.join("events").is_dir())
            .map(|p| Tracefs {
                root: p.to_path_buf(),
            })
            .ok_or(TracefsError::NotMounted)
    }

    /// Finds tracefs, mounting it at `/sys/kernel/tracing` when it is not mounted (needs root).
    pub fn find_or_mount() -> Result<Self, TracefsError> {
        if let Ok(found) = Self::find() {
            return Ok(found);
        }
        let target = CANDIDATES[0];
        let c = |s: &str| std::ffi::CString::new(s).map_err(|_| TracefsError::NotMounted);
        let (source, path, fstype) = (c("tracefs")?, c(target)?, c("tracefs")?);
        // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                path.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(TracefsError::Mount {
                path: target.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        Self::find()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads and parses `events/<category>/<name>/format`.
    pub fn format(&self, category: &str, name: &str) -> Result<Format, TracefsError> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = fs::read_to_string(&path).map_err(|source| TracefsError::NoTracepoint {
            category: category.to_string(),
            name: name.to_string(),
            path: path.clone(),
            source,
        })?;
        Format::parse(&format!("{category}/{name}"), &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND_RESET_6_18: &str = "name: tcp_send_reset
ID: 1591
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;

print fmt: \"skbaddr=%p\", REC->skbaddr
";

    #[test]
    fn parses_a_format_file() -> Result<(), TracefsError> {
        let f = Format::parse("tcp/tcp_send_reset", SEND_RESET_6_18)?;
        assert_eq!(f.id, Some(1591));
        assert_eq!(f.fields.len(), 10);
        let skaddr = f.field("skaddr").expect("skaddr");
        assert_eq!((skaddr.offset, skaddr.size, skaddr.signed), (16, 8, false));
        assert_eq!(skaddr.decl, "const void * skaddr");
        let saddr = f.field("saddr").expect("saddr");
        assert_eq!((saddr.offset, saddr.size), (32, 28));
        let state = f.field("state").expect("state");
        assert!(state.signed);
        assert_eq!(f.field("reason").map(|r| r.offset), Some(28));
        assert!(f.field("sport").is_none());
        Ok(())
    }

    #[test]
    fn field_names_from_declarations() {
        assert_eq!(field_name("int sig").as_deref(), Some("sig"));
        assert_eq!(field_name("const void * skaddr").as_deref(), Some("skaddr"));
        assert_eq!(field_name("const void *skaddr").as_deref(), Some("skaddr"));
        assert_eq!(field_name("__u8 saddr_v6[16]").as_deref(), Some("saddr_v6"));
        assert_eq!(field_name("char comm[16]").as_deref(), Some("comm"));
        assert_eq!(field_name("").as_deref(), None);
    }

    #[test]
    fn malformed_formats_are_errors() {
        for text in [
            "",
            "format:\n\tfield:int x;\toffset:abc;\tsize:4;\tsigned:1;",
            "format:\n\tfield:int x;\tsize:4;\tsigned:1;",
            "format:\n\tfield:;\toffset:8;\tsize:4;\tsigned:1;",
            "ID: x\nformat:\n\tfield:int x;\toffset:8;\tsize:4;\tsigned:1;",
        ] {
            assert!(Format::parse("t/t", text).is_err(), "{text:?} parsed");
        }
    }

    /// The running kernel's own format files parse, and have the fields termscope reads.
    #[test]
    fn parses_the_running_kernels_formats() -> Result<(), TracefsError> {
        let Ok(tracefs) = Tracefs::find() else {
            eprintln!("skipped: tracefs is not mounted here (needs root to mount)");
            return Ok(());
        };
        let f = tracefs.format("sock", "inet_sock_set_state")?;
        for name in ["skaddr", "oldstate", "newstate", "sport", "dport", "family"] {
            assert!(f.field(name).is_some(), "inet_sock_set_state has no {name}");
        }
        let f = tracefs.format("signal", "signal_deliver")?;
        assert_eq!(f.field("sa_handler").map(|f| f.size), Some(8));
        assert!(matches!(
            tracefs.format("nope", "no_such_tracepoint"),
            Err(TracefsError::NoTracepoint { .. })
        ));
        Ok(())
    }
}
