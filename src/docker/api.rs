//! The only requests volguard sends to dockerd: is it there, and "create this volume". A
//! restore must make Docker know the volumes it fills (with their labels and options), and
//! that needs the daemon; everything else is read from the files.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::repo::format::snapshot::VolumeMeta;

const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// How long one request may take beyond any wait it asks for; dockerd answers these in
/// milliseconds when healthy.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read: these answers are a few hundred bytes.
const MAX_RESPONSE_BYTES: u64 = 1024 * 1024;

/// dockerd's socket: `DOCKER_HOST` when it names a unix socket (as the docker CLI reads
/// it), else the default.
pub fn socket_path() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// One HTTP/1.0 request on the socket; returns the status code and the body.
fn request(
    method: &str,
    path: &str,
    body: Option<&str>,
    extra_wait: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = UnixStream::connect(socket_path())?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT + extra_wait))?;
    s.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.take(MAX_RESPONSE_BYTES).read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// True when dockerd answers on its socket.
pub fn answers() -> bool {
    matches!(request("GET", "/_ping", None, Duration::ZERO), Ok((200, _)))
}

/// Creates the volume `name` with its driver, labels and driver options. An existing
/// volume of that name is left as it is (dockerd's own rule).
pub fn create_volume(name: &str, meta: &VolumeMeta) -> Result<()> {
    let body = serde_json::json!({
        "Name": name,
        "Driver": if meta.driver.is_empty() { "local" } else { meta.driver.as_str() },
        "Labels": meta.labels,
        "DriverOpts": meta.options,
    })
    .to_string();
    let fail = |why: String| {
        Error::Other(format!(
            "volume {name:?} could not be created through dockerd at {}: {why}; create it with `docker volume create {name}` and retry",
            socket_path().display()
        ))
    };
    match request("POST", "/volumes/create", Some(&body), Duration::ZERO) {
        Ok((code, _)) if (200..300).contains(&code) => Ok(()),
        Ok((code, body)) => {
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or(body);
            Err(fail(format!("dockerd answered {code}: {}", message.trim())))
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

fn container_call(id: &str, action: &str, query: &str, what: &str, wait: Duration) -> Result<()> {
    // 304: already in that state, which is what was asked.
    match request(
        "POST",
        &format!("/containers/{id}/{action}{query}"),
        None,
        wait,
    ) {
        Ok((code, _)) if (200..300).contains(&code) || code == 304 => Ok(()),
        Ok((code, body)) => Err(Error::Other(format!(
            "dockerd refused to {what} container {id}: {code} {}",
            body.trim()
        ))),
        Err(e) => Err(Error::Other(format!(
            "cannot {what} container {id} through {}: {e}",
            socket_path().display()
        ))),
    }
}

/// Stops a container, giving it `grace` before dockerd kills it.
pub fn stop_container(id: &str, grace: Duration) -> Result<()> {
    container_call(
        id,
        "stop",
        &format!("?t={}", grace.as_secs()),
        "stop",
        grace,
    )
}

pub fn start_container(id: &str) -> Result<()> {
    container_call(id, "start", "", "start", Duration::ZERO)
}
