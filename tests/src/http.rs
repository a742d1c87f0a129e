//! What the tests that run the real agent binary share: a plain HTTP/1.0 client for its API,
//! reading a series out of `/metrics`, and waiting for something to happen.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// One HTTP/1.0 GET to `addr` (the server closes the connection after the body): status and
/// body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The value of `series` (name and labels exactly as exposed) in a `/metrics` body.
pub fn metric_in(body: &str, series: &str) -> Result<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("no {series} in /metrics"))
}

/// The value of `series` in the `/metrics` of the agent at `addr`.
pub fn metric(addr: SocketAddr, series: &str) -> Result<f64> {
    let (_, body) = http_get(addr, "/metrics")?;
    metric_in(&body, series)
}

/// Calls `f` every 100 ms until it returns a value, for at most 30 s.
pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what} did not happen within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::metric_in;

    #[test]
    fn a_series_is_matched_whole_with_its_labels() {
        let body = "# HELP x\nx_total{a=\"1\"} 3\nx_total 7\nx_total_more 9\n";
        assert_eq!(metric_in(body, "x_total{a=\"1\"}").ok(), Some(3.0));
        assert_eq!(metric_in(body, "x_total").ok(), Some(7.0));
        assert!(metric_in(body, "x").is_err());
    }
}
