//! nginx as the scenarios run it (a real nginx, from a generated configuration).

use std::path::PathBuf;

use anyhow::Result;

use crate::TempDir;

/// The slow file's size: 384 KiB, sent at 128 KiB/s, about 3 s per download.
pub const SLOW_BYTES: usize = 384 * 1024;

/// Writes nginx's configuration (`nginx.conf`: master and 2 workers, keep-alive 60 s, no access
/// log) and document root (`www/index.html`, and `www/slow/big.bin` of [`SLOW_BYTES`] sent at
/// 128 KiB/s) in `dir`, for an nginx that sees `dir` at `root` and listens on `listen`; its
/// pid file and error log go to `root` too. Returns the configuration's path in `dir`.
pub fn write_config(dir: &TempDir, root: &str, listen: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir.join("www/slow"))?;
    dir.write("www/index.html", "ok\n")?;
    dir.write("www/slow/big.bin", vec![b'x'; SLOW_BYTES])?;
    dir.write(
        "nginx.conf",
        config(
            root,
            2,
            &format!(
                r#"    default_type application/octet-stream;
    server {{
        listen {listen};
        root {root}/www;
        location /slow/ {{
            limit_rate 128k;
        }}
    }}
"#
            ),
        ),
    )
}

/// An nginx configuration in the foreground as root with a master and `workers` workers,
/// its pid file, error log and temporary directories under `root`, no access log,
/// keep-alive 60 s, and `http` (servers, upstreams) inside its `http` block.
pub fn config(root: &str, workers: u32, http: &str) -> String {
    format!(
        r#"daemon off;
master_process on;
worker_processes {workers};
user root;
pid {root}/nginx.pid;
error_log {root}/error.log notice;
events {{
    worker_connections 64;
}}
http {{
    access_log off;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_timeout 60s;
{http}}}
"#
    )
}
