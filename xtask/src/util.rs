//! Shared plumbing: where the workspace is, which cargo to use, the PATH children get, whether
//! we are root, and running commands with an echo and an error that names them.

use std::{
    ffi::{OsStr, OsString},
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail};

/// What every command needs to know about this machine and this workspace.
pub struct Ctx {
    /// The workspace root (the parent of the xtask crate).
    pub root: PathBuf,
    /// The cargo binary: `$CARGO` (set by `cargo run`), else `cargo` from PATH.
    pub cargo: OsString,
    /// PATH for child processes: ours, with cargo's bin directory (where `cargo install` puts
    /// bpf-linker) in front when it is not already on it.
    pub path: OsString,
    /// Whether the effective user is root.
    pub is_root: bool,
}

impl Ctx {
    pub fn detect() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("the xtask crate has no parent directory")?
            .to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        let current_path = std::env::var_os("PATH");
        let path = match cargo_bin_dir(
            std::env::var_os("CARGO_HOME").as_deref(),
            std::env::var_os("HOME").as_deref(),
        ) {
            Some(dir) => path_with_dir_first(current_path.as_deref(), &dir)?,
            None => current_path.unwrap_or_default(),
        };
        Ok(Self {
            root,
            cargo,
            path,
            is_root: effective_uid_is_root(),
        })
    }

    /// A command run in the workspace root with the children's PATH.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.root).env("PATH", &self.path);
        cmd
    }

    /// `cargo <args>` run in the workspace root, without the variables `cargo run` gave
    /// xtask itself (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, ...): build scripts that watch them
    /// (ring's) would otherwise rerun, and their crates rebuild, whenever the same crates are
    /// built from elsewhere (a shell, a test's own `cargo build`).
    pub fn cargo(&self, args: &[&str]) -> Command {
        let mut cmd = self.command(&self.cargo);
        cmd.args(args);
        for (key, _) in std::env::vars_os() {
            if is_from_cargo_run(&key.to_string_lossy()) {
                cmd.env_remove(&key);
            }
        }
        cmd
    }

    /// Where cargo puts build output: `$CARGO_TARGET_DIR` (relative to the workspace root) or
    /// `target/`.
    pub fn target_dir(&self) -> PathBuf {
        match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => self.root.join(dir),
            _ => self.root.join("target"),
        }
    }

    /// An executable named `name` in a directory of the children's PATH.
    pub fn find_program(&self, name: &str) -> Option<PathBuf> {
        std::env::split_paths(&self.path)
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
    }

    /// Echoes `cmd` as `==> ...`, runs it with inherited stdio, and fails naming it when it
    /// cannot start or exits non-zero.
    pub fn run(&self, cmd: &mut Command) -> Result<()> {
        let shown = self.describe(cmd);
        println!("==> {shown}");
        let status = cmd
            .status()
            .with_context(|| format!("could not start `{shown}`"))?;
        if !status.success() {
            bail!("`{shown}` failed ({status})");
        }
        Ok(())
    }

    /// Runs `cmd` quietly for a check, capturing its output. `Ok(None)` when the program does
    /// not exist.
    pub fn probe(&self, cmd: &mut Command) -> Result<Option<Output>> {
        match cmd.output() {
            Ok(out) => Ok(Some(out)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("could not run `{}`", self.describe(cmd))),
        }
    }

    /// `cmd` as a shell-like line: the environment it sets (except PATH), the program (cargo
    /// shortened to `cargo`) and its arguments, quoted where needed.
    pub fn describe(&self, cmd: &Command) -> String {
        let mut words = Vec::new();
        for (key, value) in cmd.get_envs() {
            if key == "PATH" {
                continue;
            }
            if let Some(value) = value {
                words.push(format!(
                    "{}={}",
                    key.to_string_lossy(),
                    shell_quote(&value.to_string_lossy())
                ));
            }
        }
        let program = cmd.get_program();
        if program == self.cargo {
            words.push("cargo".to_string());
        } else {
            words.push(shell_quote(&program.to_string_lossy()));
        }
        words.extend(cmd.get_args().map(|a| shell_quote(&a.to_string_lossy())));
        words.join(" ")
    }
}

/// Whether `key` is one of the variables cargo sets for the program it runs (`cargo run`).
pub fn is_from_cargo_run(key: &str) -> bool {
    ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_BIN_"]
        .iter()
        .any(|p| key.starts_with(p))
        || [
            "CARGO_CRATE_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_RUSTC_CURRENT_DIR",
        ]
        .contains(&key)
}

/// The directory `cargo install` puts binaries in: `$CARGO_HOME/bin`, else `$HOME/.cargo/bin`.
pub fn cargo_bin_dir(cargo_home: Option<&OsStr>, home: Option<&OsStr>) -> Option<PathBuf> {
    match (cargo_home, home) {
        (Some(ch), _) if !ch.is_empty() => Some(Path::new(ch).join("bin")),
        (_, Some(h)) if !h.is_empty() => Some(Path::new(h).join(".cargo").join("bin")),
        _ => None,
    }
}

/// `path` with `dir` in front, unless `dir` is already one of its entries.
pub fn path_with_dir_first(path: Option<&OsStr>, dir: &Path) -> Result<OsString> {
    let entries: Vec<PathBuf> = path
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    if entries.iter().any(|e| e == dir) {
        return Ok(path.map(OsStr::to_os_string).unwrap_or_default());
    }
    let joined = std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(entries))
        .with_context(|| format!("cannot put {} on PATH", dir.display()))?;
    Ok(joined)
}

/// The effective uid from the `Uid:` line of `/proc/<pid>/status` (real, effective, saved,
/// filesystem).
pub fn effective_uid_from_status(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
}

/// Whether we run as root: `/proc/self/status`, else `id -u`. Unknown counts as not root.
fn effective_uid_is_root() -> bool {
    if let Some(uid) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(effective_uid_from_status)
    {
        return uid == 0;
    }
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .is_some_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Quotes `word` for a POSIX shell when it contains anything but plainly safe characters.
pub fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_of_cargo_run_are_recognised() {
        for key in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
        ] {
            assert!(is_from_cargo_run(key), "{key}");
        }
        for key in ["CARGO_HOME", "CARGO_TARGET_DIR", "CARGO", "PATH"] {
            assert!(!is_from_cargo_run(key), "{key}");
        }
    }

    #[test]
    fn cargo_bin_dir_prefers_cargo_home() {
        assert_eq!(
            cargo_bin_dir(Some(OsStr::new("/opt/cargo")), Some(OsStr::new("/home/u"))),
            Some(PathBuf::from("/opt/cargo/bin"))
        );
        assert_eq!(
            cargo_bin_dir(None, Some(OsStr::new("/home/u"))),
            Some(PathBuf::from("/home/u/.cargo/bin"))
        );
        assert_eq!(
            cargo_bin_dir(Some(OsStr::new("")), Some(OsStr::new("/home/u"))),
            Some(PathBuf::from("/home/u/.cargo/bin"))
        );
        assert_eq!(cargo_bin_dir(None, None), None);
    }

    #[test]
    fn path_gets_dir_in_front_when_missing() -> Result<()> {
        let dir = Path::new("/root/.cargo/bin");
        assert_eq!(
            path_with_dir_first(Some(OsStr::new("/usr/bin:/bin")), dir)?,
            OsString::from("/root/.cargo/bin:/usr/bin:/bin")
        );
        Ok(())
    }

    #[test]
    fn path_is_unchanged_when_dir_is_on_it() -> Result<()> {
        let dir = Path::new("/root/.cargo/bin");
        assert_eq!(
            path_with_dir_first(Some(OsStr::new("/usr/bin:/root/.cargo/bin:/bin")), dir)?,
            OsString::from("/usr/bin:/root/.cargo/bin:/bin")
        );
        Ok(())
    }

    #[test]
    fn path_is_just_dir_when_unset() -> Result<()> {
        let dir = Path::new("/root/.cargo/bin");
        assert_eq!(
            path_with_dir_first(None, dir)?,
            OsString::from("/root/.cargo/bin")
        );
        Ok(())
    }

    #[test]
    fn effective_uid_is_the_second_field() {
        let status =
            "Name:\tcat\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(effective_uid_from_status(status), Some(0));
        let status = "Uid:\t0\t1000\t1000\t1000\n";
        assert_eq!(effective_uid_from_status(status), Some(1000));
        assert_eq!(effective_uid_from_status("Name:\tcat\n"), None);
    }

    #[test]
    fn quoting_leaves_plain_words_alone() {
        assert_eq!(shell_quote("--features"), "--features");
        assert_eq!(shell_quote("bpf-linker@0.13.0"), "bpf-linker@0.13.0");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
