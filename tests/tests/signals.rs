//! Stop signals and process exits on the real kernel, attributed to a fresh cgroup.

use std::time::Duration;

use anyhow::{Context, Result};
use termscope::{
    decode::{Disposition, Event, ExitStatus, ProcessExit, SignalGenerated, SignalResult},
    signal::Signal,
};
use termscope_tests::{Kernel, Proc, TestCgroup, kernel_test, python};

/// How long to wait for what must come (it returns as soon as it has): long enough for the
/// older kernels booted under TCG beside a loaded CI machine.
const WAIT: Duration = Duration::from_secs(30);

fn signal_to(k: &Kernel, tgid: u32, sig: Signal) -> Option<&SignalGenerated> {
    k.seen.iter().find_map(|e| match e {
        Event::Signal(s) if s.target.tgid == tgid && s.signal == sig => Some(s),
        _ => None,
    })
}

fn exit_of(k: &Kernel, tgid: u32) -> Option<&ProcessExit> {
    k.seen.iter().find_map(|e| match e {
        Event::ProcessExit(x) if x.task.tgid == tgid => Some(x),
        _ => None,
    })
}

fn dispositions(k: &Kernel, tgid: u32) -> Vec<(Signal, Disposition, u64)> {
    k.seen
        .iter()
        .filter_map(|e| match e {
            Event::SignalDelivered(d) if d.task.tgid == tgid => {
                Some((d.signal, d.disposition, d.cgroup_id))
            }
            _ => None,
        })
        .collect()
}

fn wait_exit(k: &mut Kernel, tgid: u32) -> Result<()> {
    k.wait_for("the process's exit", WAIT, |seen| {
        seen.iter()
            .any(|e| matches!(e, Event::ProcessExit(x) if x.task.tgid == tgid))
    })
}

/// The stop signal from outside is attributed to the target's cgroup (not the sender's),
/// starts the kernel watching that cgroup, and the app's own handler takes it.
#[test]
fn sigterm_to_a_process_with_a_handler() -> Result<()> {
    kernel_test!();
    let mut k = Kernel::load()?;
    let cg = TestCgroup::new("sig-handler")?;
    let mut p = Proc::spawn(
        &mut python(
            "import signal, sys, time\n\
             signal.signal(signal.SIGTERM, lambda s, f: sys.exit(3))\n\
             print('ready')\n\
             time.sleep(60)",
        ),
        &cg,
        None,
    )?;
    p.expect_line("ready")?;
    let pid = p.pid();
    assert!(!k.probes.is_watched(cg.id)?, "watched before any signal");
    p.signal(libc::SIGTERM)?;
    wait_exit(&mut k, pid)?;

    let s = signal_to(&k, pid, Signal::TERM).context("no SIGTERM event")?;
    assert_eq!(s.target_cgroup_id, cg.id);
    assert_eq!(s.target.pid, pid);
    assert_eq!(s.sender.tgid, std::process::id());
    assert_ne!(s.sender_cgroup_id, cg.id);
    assert_eq!(s.result, SignalResult::Delivered);
    assert_eq!(s.code, 0, "kill(2) is SI_USER");
    assert!(s.watch_opened, "a stop signal from outside opens the watch");
    assert!(k.probes.is_watched(cg.id)?);

    assert_eq!(
        dispositions(&k, pid),
        vec![(Signal::TERM, Disposition::Handler, cg.id)]
    );
    let x = exit_of(&k, pid).context("no exit")?;
    assert_eq!(x.cgroup_id, cg.id);
    assert_eq!(x.exit, ExitStatus::Exited { code: 3 });
    Ok(())
}

/// Without a handler the default action kills at once: the exit carries SIGTERM. (The kernel
/// takes a fatal default-action signal as a group exit and traces it as SIGKILL's delivery.)
#[test]
fn sigterm_to_a_process_without_a_handler() -> Result<()> {
    kernel_test!();
    let mut k = Kernel::load()?;
    let cg = TestCgroup::new("sig-default")?;
    let mut p = Proc::spawn(
        &mut python("import time\nprint('ready')\ntime.sleep(60)"),
        &cg,
        None,
    )?;
    p.expect_line("ready")?;
    let pid = p.pid();
    p.signal(libc::SIGTERM)?;
    wait_exit(&mut k, pid)?;

    let s = signal_to(&k, pid, Signal::TERM).context("no SIGTERM event")?;
    assert_eq!(
        (s.target_cgroup_id, s.result.clone()),
        (cg.id, SignalResult::Delivered)
    );
    let x = exit_of(&k, pid).context("no exit")?;
    assert_eq!(x.cgroup_id, cg.id);
    assert_eq!(
        x.exit,
        ExitStatus::Signaled {
            signal: Signal::TERM,
            core_dumped: false
        }
    );
    let d = dispositions(&k, pid);
    assert!(
        d.iter().all(|(_, disp, _)| *disp == Disposition::Default),
        "{d:?}"
    );
    Ok(())
}

/// SIG_IGN: the kernel drops the signal, the process lives on; SIGKILL then ends it.
#[test]
fn sigterm_ignored_then_sigkill() -> Result<()> {
    kernel_test!();
    let mut k = Kernel::load()?;
    let cg = TestCgroup::new("sig-ignored")?;
    let mut p = Proc::spawn(
        &mut python(
            "import signal, time\n\
             signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
             print('ready')\n\
             time.sleep(60)",
        ),
        &cg,
        None,
    )?;
    p.expect_line("ready")?;
    let pid = p.pid();
    p.signal(libc::SIGTERM)?;
    k.wait_for("the SIGTERM", WAIT, |_| true)?;
    k.settle(Duration::from_millis(300))?;
    let s = signal_to(&k, pid, Signal::TERM).context("no SIGTERM event")?;
    assert_eq!(s.result, SignalResult::Ignored);
    assert_eq!(s.target_cgroup_id, cg.id);
    assert!(
        exit_of(&k, pid).is_none(),
        "exited after an ignored SIGTERM"
    );
    assert!(p.child.try_wait()?.is_none(), "process is gone");
    assert!(
        dispositions(&k, pid).is_empty(),
        "an ignored signal is never delivered"
    );

    p.signal(libc::SIGKILL)?;
    wait_exit(&mut k, pid)?;
    let kill = signal_to(&k, pid, Signal::KILL).context("no SIGKILL event")?;
    assert_eq!(
        (kill.target_cgroup_id, kill.result.clone()),
        (cg.id, SignalResult::Delivered)
    );
    assert_eq!(
        exit_of(&k, pid).map(|x| x.exit),
        Some(ExitStatus::Signaled {
            signal: Signal::KILL,
            core_dumped: false
        })
    );
    Ok(())
}

/// A signal a container sends to itself is reported but does not open a watch.
#[test]
fn a_signal_from_inside_does_not_open_a_watch() -> Result<()> {
    kernel_test!();
    let mut k = Kernel::load()?;
    let cg = TestCgroup::new("sig-self")?;
    let mut p = Proc::spawn(
        &mut python(
            "import os, signal, time\n\
             signal.signal(signal.SIGTERM, lambda s, f: print('got', flush=True))\n\
             os.kill(os.getpid(), signal.SIGTERM)\n\
             print('ready')\n\
             time.sleep(60)",
        ),
        &cg,
        None,
    )?;
    p.expect_line("ready")?;
    let pid = p.pid();
    k.wait_for("the self-sent SIGTERM", WAIT, |seen| {
        seen.iter()
            .any(|e| matches!(e, Event::Signal(s) if s.target.tgid == pid))
    })?;
    let s = signal_to(&k, pid, Signal::TERM).context("no SIGTERM event")?;
    assert_eq!(s.sender.tgid, pid);
    assert_eq!(s.sender_cgroup_id, cg.id);
    assert_eq!(s.target_cgroup_id, cg.id);
    assert!(!s.watch_opened);
    assert!(!k.probes.is_watched(cg.id)?);
    Ok(())
}

/// Exit codes of a watched cgroup's processes.
#[test]
fn exit_codes() -> Result<()> {
    kernel_test!();
    let mut k = Kernel::load()?;
    let cg = TestCgroup::new("exit")?;
    k.probes.watch(cg.id)?;
    let mut pids = Vec::new();
    for code in [0, 7, 255] {
        let mut p = Proc::spawn(
            &mut python(&format!("import sys\nprint('ready')\nsys.exit({code})")),
            &cg,
            None,
        )?;
        p.expect_line("ready")?;
        let status = p.child.wait()?;
        assert_eq!(status.code(), Some(code));
        pids.push((p.pid(), code));
    }
    k.wait_for("three exits", WAIT, |seen| {
        seen.iter()
            .filter(|e| matches!(e, Event::ProcessExit(_)))
            .count()
            >= 3
    })?;
    for (pid, code) in pids {
        let x = exit_of(&k, pid).context("no exit")?;
        assert_eq!(x.cgroup_id, cg.id);
        assert_eq!(x.exit, ExitStatus::Exited { code });
    }
    Ok(())
}

/// A cgroup nobody watches sends no exit events (the hot path stays in the kernel).
#[test]
fn unwatched_cgroups_stay_quiet() -> Result<()> {
    kernel_test!();
    let mut k = Kernel::load()?;
    let cg = TestCgroup::new("quiet")?;
    let mut p = Proc::spawn(&mut python("print('ready')"), &cg, None)?;
    p.expect_line("ready")?;
    p.child.wait()?;
    k.settle(Duration::from_millis(300))?;
    assert!(k.of(cg.id).is_empty(), "{:?}", k.of(cg.id));
    Ok(())
}

/// Programs started in a watched cgroup are reported (how exec preStop hooks show up).
#[test]
fn execs_in_a_watched_cgroup() -> Result<()> {
    kernel_test!();
    let mut k = Kernel::load()?;
    let cg = TestCgroup::new("exec")?;
    k.probes.watch(cg.id)?;
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args(["-c", "echo ready; exec /bin/true"]);
    let mut p = Proc::spawn(&mut cmd, &cg, None)?;
    p.expect_line("ready")?;
    p.child.wait()?;
    let pid = p.pid();
    k.wait_for("the exec of /bin/true", WAIT, |seen| {
        seen.iter().any(|e| {
            matches!(e, Event::ProcessExec(x) if x.task.tgid == pid && x.filename == "/bin/true")
        })
    })?;
    let x = k
        .seen
        .iter()
        .find_map(|e| match e {
            Event::ProcessExec(x) if x.filename == "/bin/true" => Some(x),
            _ => None,
        })
        .context("no exec")?;
    assert_eq!(x.cgroup_id, cg.id);
    assert_eq!(x.task.comm, "true");
    Ok(())
}
