//! Notifications: a JSON document POSTed to an `http://` URL (a chat relay, an alert
//! manager, a local forwarder to https). Plain HTTP/1.1 over a socket keeps the agent free
//! of a second HTTP stack; the request is bounded in time and size.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long one notification may take, connect to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// POSTs `body` as JSON to `url`; the error says what failed.
pub fn post_json(url: &str, body: &serde_json::Value) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("webhook {url:?}: only http:// URLs are supported"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("webhook {url:?}: cannot resolve {hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("webhook {url:?}: {hostport} has no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|e| format!("webhook {url:?}: cannot connect: {e}"))?;
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let _ = s.set_write_timeout(Some(TIMEOUT));
    let payload = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: volguard/{}\r\n\r\n{payload}",
        payload.len(),
        env!("CARGO_PKG_VERSION")
    )
    .map_err(|e| format!("webhook {url:?}: cannot send: {e}"))?;
    let mut head = [0u8; 64];
    let n = s
        .read(&mut head)
        .map_err(|e| format!("webhook {url:?}: no answer: {e}"))?;
    let status = String::from_utf8_lossy(&head[..n]);
    match status.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        Some(code) => Err(format!("webhook {url:?} answered {code}")),
        None => Err(format!("webhook {url:?}: not an HTTP answer")),
    }
}
