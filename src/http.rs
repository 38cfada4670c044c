//! Notifications: a JSON document POSTed to an `http://` URL (a chat relay, an alert
//! manager, a local forwarder to https). Plain HTTP/1.1 over a socket keeps volguard free
//! of a second HTTP stack; the request is bounded in time and size. The agent's job
//! notifications and the watcher's warnings both go through here.

use std::io::{BufRead, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long one agent notification may take, connect to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `http://host[:port][/path]` → (host:port, path). Only plain HTTP: the receiver is
/// expected to be local or on a trusted network (a TLS client is not built in).
pub fn parse_http_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").ok_or(
        "only http:// URLs are supported (no TLS client built in); put a local relay in front of an https receiver",
    )?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if hostport.is_empty() {
        return Err("no host".into());
    }
    let with_port = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    Ok((with_port, path.to_string()))
}

/// POSTs `body` (JSON) to `url`, each step bounded by `timeout`; Ok when the receiver
/// answers 2xx, otherwise the error says which step failed.
pub fn post(url: &str, body: &[u8], timeout: Duration) -> Result<(), String> {
    let (hostport, path) = parse_http_url(url)?;
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport} resolves to nothing"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {hostport}: {e}"))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: volguard/{}\r\n\r\n",
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .map_err(|e| format!("sending to {hostport}: {e}"))?;
    let mut status = String::new();
    std::io::BufReader::new(s.take(8192))
        .read_line(&mut status)
        .map_err(|e| format!("reading the answer of {hostport}: {e}"))?;
    match status.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        Some(_) => Err(format!("{hostport} answered {:?}", status.trim())),
        None => Err(format!("{hostport}: not an HTTP answer")),
    }
}

/// The agent's notification: POSTs `body` to `url`; the error names the webhook.
pub fn post_json(url: &str, body: &serde_json::Value) -> Result<(), String> {
    post(url, body.to_string().as_bytes(), TIMEOUT).map_err(|e| format!("webhook {url:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_a_port_and_a_path() {
        assert_eq!(
            parse_http_url("http://h/p/q").unwrap(),
            ("h:80".to_string(), "/p/q".to_string())
        );
        assert_eq!(
            parse_http_url("http://127.0.0.1:9").unwrap(),
            ("127.0.0.1:9".to_string(), "/".to_string())
        );
        assert!(parse_http_url("https://h").unwrap_err().contains("http://"));
        assert!(parse_http_url("http:///x").is_err());
    }
}
