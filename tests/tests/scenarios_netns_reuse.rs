//! A network namespace's inode names a new namespace once the old one is gone (issue 8 §5):
//! the kernel gives a new namespace the lowest free inode number, so a namespace created just
//! after a container's was deleted often gets the same one. Traffic the new namespace refuses
//! must not count as the old container's late traffic, even while the old container's
//! termination is still open (lingering after its last exit).
//!
//! Container A listens on port 8080 in its own namespace and closes its listener on SIGTERM;
//! its client keeps connecting and is refused until A exits. A's namespace is then deleted
//! and new namespaces are created (each kept, so that the kernel's allocator moves past the
//! numbers below A's) until one has A's inode; a client in it knocks at port 8080 and is
//! refused by that namespace. A's report has A's refusals, and none of the new namespace's.

use std::{
    collections::HashSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};
use termscope::{probes::LoadOptions, terminations::report::Outcome};
use termscope_tests::{
    Agent, NetNs, TestCgroup, kernel_test,
    load::{Load, Truth, check_knocks, connection, show},
    stop_while_knocking,
};

/// How many new namespaces (and how long) the test tries for A's inode before it gives up:
/// on an idle 6.18 kernel the first namespace created after the old one is freed gets it; on
/// a loaded one the kernel frees a namespace's inode only when its cleanup work has run, which
/// took over 20 s once in CI. Within A's linger (`LINGER`), so that A's termination is still
/// open when the new namespace refuses.
const MAX_NEW_NAMESPACES: usize = 4000;
const MAX_REUSE_WAIT: Duration = Duration::from_secs(28);
const LINGER: Duration = Duration::from_secs(30);

#[test]
fn refusals_in_a_new_namespace_with_a_stopped_containers_inode_are_not_its_own() -> Result<()> {
    kernel_test!();
    // A's termination stays open `LINGER` after its last exit (the agent's default is 3 s):
    // the new namespace gets A's inode well within it, even on a loaded machine.
    let mut agent =
        Agent::start_lingering(&LoadOptions::default(), Duration::from_secs(20), LINGER)?;
    let cg = TestCgroup::new("nsreuse")?;
    let ns = NetNs::new("nsreuse")?;
    let inode = ns.inode()?;
    let (seen, signalled) = stop_while_knocking(&mut agent, &cg, &ns)?;
    // A's namespace is deleted (nothing of the test holds it any more).
    drop(ns);

    // New namespaces until the kernel hands out A's inode again. Those below it are kept (the
    // allocator gives the lowest free number: they fill the holes before A's); one above it
    // is deleted at once (A's is not free yet), so the namespaces held stay few however long
    // the kernel takes to free A's.
    let started = Instant::now();
    let (mut below, mut made) = (Vec::new(), 0usize);
    let reused = loop {
        agent.pump(Duration::from_millis(20), None)?;
        let n = NetNs::new("nsreuse-new")?;
        made += 1;
        let got = n.inode()?;
        if got == inode {
            break n;
        }
        if got < inode {
            below.push(n);
        }
        if made >= MAX_NEW_NAMESPACES || started.elapsed() > MAX_REUSE_WAIT {
            bail!(
                "the kernel did not give any of {made} new namespaces (in {:?}) the inode \
                 {inode} of the deleted one: the scenario could not be set up (another test \
                 holding it?)",
                started.elapsed()
            );
        }
    };
    println!(
        "inode {inode} named a new namespace after {made} others ({} below it), {:?} after the \
         old one was deleted",
        below.len(),
        started.elapsed()
    );
    ensure!(
        !agent.reports.iter().any(|r| r.subject.cgroup_id == cg.id),
        "A was reported before a new namespace got its inode: the scenario did not happen"
    );

    // A client of the new namespace knocks at the port A listened on.
    let mut other = Load::new(&reused, "127.0.0.1:8080".parse::<SocketAddr>()?);
    other.knock("/", Duration::from_millis(50))?;
    agent.pump(Duration::from_millis(500), None)?;
    let others = other.finish()?;
    ensure!(
        others.iter().all(|s| s.truth == Truth::Refused) && others.len() >= 3,
        "the new namespace's client: {others:?}"
    );

    let report = agent.report_for(cg.id, LINGER + Duration::from_secs(15))?;
    show(&report, &seen)?;
    // None of the new namespace's refusals is A's (a client port both clients happened to use
    // is left to the count below).
    let own: HashSet<u16> = seen.iter().map(|s| s.port).collect();
    let foreign: Vec<u16> = others
        .iter()
        .map(|s| s.port)
        .filter(|p| !own.contains(p) && connection(&report, *p).is_some())
        .collect();
    ensure!(
        foreign.is_empty(),
        "refusals of the new namespace (inode {inode}, client ports {foreign:?}) are in A's report"
    );
    // A's own clients: each of its refusals, under its port, and no other (the count too).
    let refused = check_knocks(&report, &seen, signalled)?;
    // Fewer than the ten or so attempts of its 1 s on a starved machine; at least one.
    assert!(refused >= 1, "no refusals: {seen:?}");
    assert_eq!(report.outcome, Outcome::Cut);
    assert!(
        report
            .summary
            .iter()
            .any(|s| s.contains(&format!("{refused} connection attempt(s) were refused"))),
        "{:?}",
        report.summary
    );
    Ok(())
}
