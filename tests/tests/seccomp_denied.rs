//! The agent under a seccomp filter that does not allow `bpf()` — what a container runtime's
//! default profile (`RuntimeDefault`) does to a container without CAP_SYS_ADMIN — fails
//! clearly: `termscope doctor` names the cause and the profile to use, and `termscope agent`
//! stops at start with the same reason instead of a bare "Operation not permitted".
//!
//! The filter is the smallest one that stands for such a profile: it answers `bpf()` with
//! `EPERM` (as containerd's default profile does, `SCMP_ACT_ERRNO`) and allows everything
//! else; it is installed in the child between fork and exec (`PR_SET_NO_NEW_PRIVS` +
//! `seccomp(SECCOMP_SET_MODE_FILTER)`), so only the agent's process is filtered. The real
//! profiles under containerd are tested in deploy_runtime.rs.

use std::{
    os::unix::process::CommandExt,
    process::{Command, Output},
};

use anyhow::{Context, Result, ensure};
use termscope_tests::{k8s_agent::agent_binary, kernel_test};

/// `termscope ARGS` with `bpf()` denied (EPERM) by a seccomp filter.
fn run_without_bpf(args: &[&str]) -> Result<Output> {
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_SET_MODE_FILTER: libc::c_long = 1;
    let nr = u32::try_from(libc::SYS_bpf)?;
    // seccomp_data.nr is at offset 0.
    let filter = [
        libc::sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: BPF_JMP_JEQ_K,
            jt: 0,
            jf: 1,
            k: nr,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | u32::try_from(libc::EPERM)?,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ALLOW,
        },
    ];
    let mut cmd = Command::new(agent_binary()?);
    cmd.args(args)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("TERMSCOPE_LOG", "info");
    // SAFETY: prctl and seccomp are async-signal-safe system calls; `filter` lives on the
    // parent's stack, copied into the child by fork, and is only read.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as libc::c_ushort,
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::syscall(
                    libc::SYS_seccomp,
                    SECCOMP_SET_MODE_FILTER,
                    0 as libc::c_long,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().context("running the agent under the filter")
}

#[test]
fn without_bpf_in_the_seccomp_profile_doctor_and_agent_say_why() -> Result<()> {
    kernel_test!();
    let doctor = run_without_bpf(&["doctor"])?;
    let out = String::from_utf8_lossy(&doctor.stdout);
    eprintln!("doctor:\n{out}");
    ensure!(
        !doctor.status.success(),
        "doctor passed under the filter:\n{out}"
    );
    let line = out
        .lines()
        .find(|l| l.contains("bpf() system call"))
        .with_context(|| format!("no bpf() check in:\n{out}"))?;
    ensure!(
        line.contains("seccomp filter") && line.contains("termscope-agent.json"),
        "{line}"
    );

    let agent = run_without_bpf(&[
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--no-log-file",
        "--no-stdout-reports",
    ])?;
    let err = String::from_utf8_lossy(&agent.stderr);
    eprintln!("agent stderr:\n{err}");
    ensure!(!agent.status.success(), "the agent ran under the filter");
    ensure!(
        err.contains("the bpf() system call is denied") && err.contains("seccomp filter"),
        "{err}"
    );

    // The same binary without the filter passes the check (the test's own control).
    let plain = Command::new(agent_binary()?).arg("doctor").output()?;
    let out = String::from_utf8_lossy(&plain.stdout);
    ensure!(
        out.lines()
            .any(|l| l.contains("bpf() system call") && l.contains("allowed")),
        "{out}"
    );
    Ok(())
}
