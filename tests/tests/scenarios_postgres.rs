//! PostgreSQL (Debian's `postgresql`), a server whose stop signals mean different shutdowns:
//! SIGTERM is a *smart* shutdown that waits for every client session to end, SIGINT a *fast*
//! one that rolls back open transactions and disconnects the clients. Stopped with SIGTERM
//! while clients run long queries, it waits until SIGKILL (what a runtime sends when the grace
//! period runs out); the advice must name SIGINT, not only a longer grace period. Each client
//! speaks PostgreSQL's wire protocol itself and records whether its query was answered.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use termscope::terminations::report::{Direction, Outcome, Verdict};
use termscope_tests::{
    Agent, NetNs, Proc, TempDir, TestCgroup, join_clients, kernel_test, load::connection, run,
};

const ADDR: &str = "127.0.0.1:5432";

/// The newest installed server's binaries (`/usr/lib/postgresql/<major>/bin`).
fn bin_dir() -> Result<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context(
            "PostgreSQL is not installed (Debian `postgresql`; cargo xtask setup --test-deps)",
        )?
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, p)| p.join("postgres").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
        .map(|(_, p)| p)
        .context("no /usr/lib/postgresql/<major>/bin/postgres")
}

/// `cmd` run as the `postgres` user (the server refuses to run as root); `setpriv` execs, so
/// the pid is the server's own.
fn as_postgres(program: PathBuf) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--",
    ])
    .arg(program);
    cmd
}

/// One protocol message: its type byte and body.
fn message(s: &mut TcpStream) -> Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    ensure!(len >= 4, "bad message length {len}");
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body)?;
    Ok((head[0], body))
}

/// Connects as `postgres` (trust authentication) and waits for ReadyForQuery.
fn session(addr: SocketAddr) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut startup = Vec::new();
    startup.extend_from_slice(&196_608u32.to_be_bytes()); // protocol 3.0
    for kv in ["user", "postgres", "database", "postgres"] {
        startup.extend_from_slice(kv.as_bytes());
        startup.push(0);
    }
    startup.push(0);
    let mut msg = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&startup);
    s.write_all(&msg)?;
    loop {
        match message(&mut s)? {
            (b'Z', _) => return Ok(s),
            (b'E', body) => bail!("startup refused: {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
}

/// What a client whose query was running saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// CommandComplete: the query finished.
    Answered,
    /// An error (the server terminating the session) or the end of the stream instead.
    Lost,
}

/// Sends `sql` and reads until its answer or the end of the connection.
fn query(s: &mut TcpStream, sql: &str) -> Result<Seen> {
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    msg.extend_from_slice(sql.as_bytes());
    msg.push(0);
    s.write_all(&msg)?;
    loop {
        match message(s) {
            Ok((b'C', _)) => return Ok(Seen::Answered),
            Ok((b'E', _)) => return Ok(Seen::Lost),
            Ok(_) => {}
            Err(e)
                if e.downcast_ref::<std::io::Error>().is_some_and(|e| {
                    matches!(
                        e.kind(),
                        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                    )
                }) =>
            {
                return Ok(Seen::Lost);
            }
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn postgres_smart_shutdown_waits_for_its_sessions_until_sigkill() -> Result<()> {
    kernel_test!();
    let bin = bin_dir()?;
    let dir = TempDir::new("pg")?;
    let data = dir.join("data");
    std::fs::create_dir(&data)?;
    run(Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&dir.path))?;
    std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o755))?;
    run(as_postgres(bin.join("initdb"))
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
        .arg(&data))?;

    let mut agent = Agent::start(Duration::from_secs(20))?;
    let cg = TestCgroup::new("pg")?;
    let ns = NetNs::new("pg")?;
    let mut cmd = as_postgres(bin.join("postgres"));
    cmd.arg("-D").arg(&data).arg("-k").arg(&dir.path).args([
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "fsync=off",
    ]);
    let server = Proc::spawn(&mut cmd, &cg, Some(&ns))?;
    let addr: SocketAddr = ADDR.parse()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ns.enter(move || session(addr))?.is_err() {
        ensure!(
            Instant::now() < deadline,
            "postgres did not accept a session in 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.pump(Duration::from_millis(300), None)?;

    // Two clients, each running a query that takes 30 s.
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut s = ns.enter(move || session(addr))??;
        let port = s.local_addr()?.port();
        clients.push(std::thread::spawn(move || -> Result<(u16, Seen)> {
            Ok((port, query(&mut s, "select pg_sleep(30)")?))
        }));
    }
    agent.pump(Duration::from_millis(500), None)?;
    server.signal(libc::SIGTERM)?;
    // The smart shutdown waits for the sessions: a short grace period, then SIGKILL.
    agent.pump(Duration::from_secs(3), None)?;
    server.signal(libc::SIGKILL)?;
    let truth = join_clients(clients)?;
    let report = agent.report_for(cg.id, Duration::from_secs(20))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    println!("clients saw: {truth:?}");

    ensure!(
        truth.iter().all(|(_, s)| *s == Seen::Lost),
        "the queries were to run 30 s: {truth:?}"
    );
    for (port, _) in &truth {
        let c = connection(&report, *port)
            .with_context(|| format!("client port {port} not in the report"))?;
        assert_eq!(c.direction, Direction::Inbound, "{c:?}");
        assert_eq!(
            c.verdict,
            Verdict::ClosedByExit,
            "client {port} lost its query: {c:?}"
        );
    }
    assert_eq!(report.outcome, Outcome::Killed);
    assert_eq!(report.counts.cut, 2, "{:?}", report.counts);
    let summary = report.summary.join(" ");
    assert!(summary.contains("smart shutdown"), "{summary}");
    assert!(summary.contains("stop it with SIGINT"), "{summary}");
    Ok(())
}
