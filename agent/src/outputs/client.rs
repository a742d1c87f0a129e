//! A small HTTP/1.1 client for a running agent's API (`termscope report --agent`,
//! `termscope watch`). The API is plain HTTP on loopback or the cluster network; GET with
//! `Content-Length`, chunked or close-delimited bodies is all this needs.

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    time::Duration,
};

use crate::{outputs::store::Filter, terminations::report::TerminationReport};

/// Where the agent listens by default.
pub const DEFAULT_AGENT_URL: &str = "http://127.0.0.1:9469";

const TIMEOUT: Duration = Duration::from_secs(10);
/// Responses larger than this are refused.
const MAX_BODY: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid agent URL {url:?}: {why} (expected http://HOST:PORT)")]
    Url { url: String, why: &'static str },
    #[error("cannot reach the agent at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent at {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent at {addr} sent a malformed HTTP response: {why}")]
    Malformed { addr: String, why: String },
    #[error("the agent at {addr} answered {status} to {path}: {body}")]
    Status {
        addr: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error("the agent at {addr} sent JSON that is not what was expected: {source}")]
    Json {
        addr: String,
        #[source]
        source: serde_json::Error,
    },
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A running agent's API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentClient {
    host: String,
    port: u16,
    /// Path prefix without a trailing `/` (empty for the root).
    base: String,
}

impl AgentClient {
    /// `http://host:port[/prefix]`, or `host:port`. `https` is not supported.
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let bad = |why| ClientError::Url {
            url: url.to_string(),
            why,
        };
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some(_) => return Err(bad("only http:// is supported")),
            None => url,
        };
        let (authority, base) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let parse_port = |p: &str| p.parse::<u16>().map_err(|_| bad("invalid port"));
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            match after.strip_prefix(':') {
                Some(p) => (h, parse_port(p)?),
                None if after.is_empty() => (h, 80),
                None => return Err(bad("invalid port")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, parse_port(p)?),
                None => (authority, 80),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(AgentClient {
            host: host.to_string(),
            port,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    /// `host:port`, for messages.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// GETs `path` (with its query string).
    pub fn get(&self, path: &str) -> Result<Response, ClientError> {
        let addr = self.addr();
        let io_err = |source| ClientError::Io {
            addr: addr.clone(),
            source,
        };
        let candidates: Vec<_> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?
            .collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        let mut stream = None;
        for a in candidates {
            match TcpStream::connect_timeout(&a, TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let mut stream = stream.ok_or_else(|| ClientError::Connect {
            addr: addr.clone(),
            source: last,
        })?;
        stream.set_read_timeout(Some(TIMEOUT)).map_err(io_err)?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(io_err)?;
        let request = format!(
            "GET {}{} HTTP/1.1\r\nHost: {}\r\nUser-Agent: termscope/{}\r\n\
             Accept: application/json\r\nConnection: close\r\n\r\n",
            self.base,
            path,
            addr,
            env!("CARGO_PKG_VERSION")
        );
        stream.write_all(request.as_bytes()).map_err(io_err)?;
        let mut raw = Vec::new();
        stream
            .take(MAX_BODY as u64 + 64 * 1024)
            .read_to_end(&mut raw)
            .map_err(io_err)?;
        parse_response(&raw).map_err(|why| ClientError::Malformed { addr, why })
    }

    /// GETs `path` and decodes its JSON body; a status other than 200 is an error.
    fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let r = self.get(path)?;
        if r.status != 200 {
            return Err(self.status_error(path, &r));
        }
        serde_json::from_slice(&r.body).map_err(|source| ClientError::Json {
            addr: self.addr(),
            source,
        })
    }

    fn status_error(&self, path: &str, r: &Response) -> ClientError {
        let body = String::from_utf8_lossy(&r.body);
        // The API's errors are `{"error": "..."}`.
        let body = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| body.trim().chars().take(500).collect());
        ClientError::Status {
            addr: self.addr(),
            path: path.to_string(),
            status: r.status,
            body,
        }
    }

    /// The agent's recent reports matching `filter`, newest first (times are sent as RFC 3339).
    pub fn terminations(&self, filter: &Filter) -> Result<Vec<TerminationReport>, ClientError> {
        if let Some(id) = &filter.id {
            return Ok(self
                .termination(id)?
                .into_iter()
                .filter(|r| filter.matches(r))
                .collect());
        }
        let mut query = Vec::new();
        for (name, value) in [
            ("container", filter.container.clone()),
            ("pod", filter.pod.clone()),
            ("namespace", filter.namespace.clone()),
            ("outcome", filter.outcome.map(|o| o.as_str().to_string())),
            ("workload", filter.workload.clone()),
            ("since", filter.since_ns.map(crate::clock::rfc3339)),
            ("until", filter.until_ns.map(crate::clock::rfc3339)),
            ("limit", filter.limit.map(|l| l.to_string())),
        ] {
            if let Some(v) = value {
                query.push(format!("{name}={}", percent_encode(&v)));
            }
        }
        let path = if query.is_empty() {
            "/v1/terminations".to_string()
        } else {
            format!("/v1/terminations?{}", query.join("&"))
        };
        self.get_json(&path)
    }

    /// One report by id; `None` when the agent does not have it.
    pub fn termination(&self, id: &str) -> Result<Option<TerminationReport>, ClientError> {
        let path = format!("/v1/terminations/{}", percent_encode(id));
        let r = self.get(&path)?;
        match r.status {
            200 => serde_json::from_slice(&r.body)
                .map(Some)
                .map_err(|source| ClientError::Json {
                    addr: self.addr(),
                    source,
                }),
            404 => Ok(None),
            _ => Err(self.status_error(&path, &r)),
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses a whole HTTP/1.1 response (the connection was closed after it).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not HTTP/1.x: {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("no status code in {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let rest = &raw[end + 4..];
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    response.body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = response.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad Content-Length {len:?}"))?;
        if rest.len() < len {
            return Err(format!(
                "body cut short: {} of {len} bytes (the agent closed the connection?)",
                rest.len()
            ));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(response)
}

/// Decodes a chunked body.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line not terminated")?;
        let line = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size line")?;
        let size_hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            return Err("chunk cut short".into());
        }
        body.extend_from_slice(&rest[..size]);
        if body.len() > MAX_BODY {
            return Err("body too large".into());
        }
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = AgentClient::new("http://127.0.0.1:9469").expect("url");
        assert_eq!(c.addr(), "127.0.0.1:9469");
        assert_eq!(c.base, "");
        let c = AgentClient::new("node-1:9469/termscope/").expect("url");
        assert_eq!((c.host.as_str(), c.port), ("node-1", 9469));
        assert_eq!(c.base, "/termscope");
        let c = AgentClient::new("http://[::1]:9469").expect("url");
        assert_eq!(c.addr(), "[::1]:9469");
        assert_eq!(AgentClient::new("http://agent").expect("url").port, 80);
        assert!(AgentClient::new("https://agent:9469").is_err());
        assert!(AgentClient::new("http://agent:x").is_err());
        assert!(AgentClient::new("http://:9469").is_err());
    }

    #[test]
    fn responses_with_length_chunks_or_close() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello")
            .expect("parses");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(r.header("x"), Some("y"));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=1\r\n world\r\n0\r\n\r\n",
        )
        .expect("parses");
        assert_eq!(r.body, b"hello world");
        let r = parse_response(b"HTTP/1.0 404 Not Found\r\n\r\n{}").expect("parses");
        assert_eq!((r.status, r.body.as_slice()), (404, &b"{}"[..]));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhi").is_err());
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(
            percent_encode("2026-11-21T05:00:00.000000Z"),
            "2026-11-21T05%3A00%3A00.000000Z"
        );
        assert_eq!(percent_encode("a b/c&d"), "a%20b%2Fc%26d");
    }

    #[test]
    fn an_agent_that_is_not_there() {
        // Bind, then drop: nothing listens on the port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let c = AgentClient::new(&format!("http://127.0.0.1:{port}")).expect("url");
        let err = c.terminations(&Filter::default()).expect_err("refused");
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    }
}
