//! Minimal HTTP/1.1 for the load generator: URL splitting, source-address spreading,
//! response-head parsing, an in-place chunked decoder and a small keep-alive request client.
//! Nothing here allocates per SSE event.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// `http://host:port/path?query` split into what a raw client needs.
#[derive(Debug, Clone)]
pub struct Url {
    pub addr: SocketAddr,
    pub host_header: String,
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("only http:// URLs: {s}"))?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let hp = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:80")
        };
        let addr = hp
            .to_socket_addrs()
            .with_context(|| format!("resolve {hp}"))?
            .find(|a| a.is_ipv4())
            .ok_or_else(|| anyhow!("no IPv4 address for {hp}"))?;
        if !addr.ip().is_loopback() {
            bail!("refusing non-loopback target {addr}: benchmarks only run against this machine");
        }
        Ok(Url {
            addr,
            host_header: hostport.to_string(),
            path: path.to_string(),
        })
    }
}

/// Fills `{base}` and `{post}` in a URL template.
pub fn fill(template: &str, base: &str, post: &str) -> String {
    template
        .replace("{base}", base.trim_end_matches('/'))
        .replace("{post}", post)
}

/// The i-th loopback source address: 127.0.(1 + i/250).(1 + i%250).
pub fn src_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        (1 + i / 250) as u8,
        (1 + i % 250) as u8,
    ))
}

/// Connects from a chosen loopback source address (bind before connect), so that many
/// connections do not exhaust one address's ephemeral ports or a per-IP server limit.
pub async fn connect_from(src: Option<IpAddr>, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if let Some(ip) = src {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let s = sock.connect(dst).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// What the status line and headers said.
#[derive(Debug, Default, Clone, Copy)]
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<usize>,
    pub close: bool,
    /// Bytes taken by the head, including the blank line.
    pub len: usize,
}

/// Parses a response head if `buf` holds a complete one.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            bail!("response head over 64 KiB");
        }
        return Ok(None);
    };
    let head = &buf[..end];
    let mut h = Head {
        len: end + 4,
        ..Head::default()
    };
    let mut lines = head.split(|&b| b == b'\n');
    let status_line = lines.next().unwrap_or_default();
    // "HTTP/1.1 200 OK"
    let mut parts = status_line.split(|&b| b == b' ');
    let ver = parts.next().unwrap_or_default();
    if !ver.starts_with(b"HTTP/1.") {
        bail!(
            "not an HTTP/1 response: {:?}",
            String::from_utf8_lossy(status_line)
        );
    }
    let code = parts.next().unwrap_or_default();
    h.status = std::str::from_utf8(code)?.trim().parse()?;
    if ver == b"HTTP/1.0" {
        h.close = true;
    }
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = &line[..colon];
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            h.chunked = value.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"content-length") {
            h.content_length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        } else if name.eq_ignore_ascii_case(b"connection") && value.eq_ignore_ascii_case(b"close") {
            h.close = true;
        }
    }
    Ok(Some(h))
}

pub fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r'] = s {
        s = rest;
    }
    s
}

/// Streaming, in-place decoder of `Transfer-Encoding: chunked`.
#[derive(Debug, Clone, Copy)]
pub enum Dechunk {
    Size { acc: usize, digits: u8, ext: bool },
    Data { left: usize },
    DataEnd,
    Done,
}

impl Default for Dechunk {
    fn default() -> Self {
        Dechunk::Size {
            acc: 0,
            digits: 0,
            ext: false,
        }
    }
}

impl Dechunk {
    /// Decodes raw bytes `buf[r..end]`, writing payload bytes to `buf[w..]` (w ≤ r, so this is
    /// safe in place). Returns the new write position. `Done` after the last chunk.
    pub fn run(&mut self, buf: &mut [u8], mut r: usize, end: usize, mut w: usize) -> Result<usize> {
        debug_assert!(w <= r);
        while r < end {
            match *self {
                Dechunk::Size {
                    ref mut acc,
                    ref mut digits,
                    ref mut ext,
                } => {
                    let b = buf[r];
                    r += 1;
                    match b {
                        b'\n' => {
                            if *digits == 0 {
                                bail!("empty chunk size line");
                            }
                            *self = if *acc == 0 {
                                Dechunk::Done
                            } else {
                                Dechunk::Data { left: *acc }
                            };
                        }
                        b'\r' => {}
                        _ if *ext => {}
                        b';' | b' ' | b'\t' => *ext = true,
                        _ => {
                            let v = (b as char)
                                .to_digit(16)
                                .ok_or_else(|| anyhow!("bad chunk size byte {b:#x}"))?;
                            *acc = acc
                                .checked_mul(16)
                                .and_then(|a| a.checked_add(v as usize))
                                .ok_or_else(|| anyhow!("chunk too big"))?;
                            *digits += 1;
                        }
                    }
                }
                Dechunk::Data { ref mut left } => {
                    let take = (*left).min(end - r);
                    buf.copy_within(r..r + take, w);
                    r += take;
                    w += take;
                    *left -= take;
                    if *left == 0 {
                        *self = Dechunk::DataEnd;
                    }
                }
                Dechunk::DataEnd => {
                    let b = buf[r];
                    r += 1;
                    match b {
                        b'\r' => {}
                        b'\n' => *self = Dechunk::default(),
                        _ => bail!("missing CRLF after chunk"),
                    }
                }
                Dechunk::Done => return Ok(w),
            }
        }
        Ok(w)
    }
}

/// A keep-alive HTTP/1.1 client connection for small requests (POST /comment, GET /comments).
pub struct Client {
    url: Url,
    src: Option<IpAddr>,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    req: Vec<u8>,
    pub body: Vec<u8>,
    pub reconnects: u64,
}

impl Client {
    pub fn new(url: Url, src: Option<IpAddr>) -> Client {
        Client {
            url,
            src,
            stream: None,
            buf: vec![0; 16 * 1024],
            req: Vec::with_capacity(1024),
            body: Vec::new(),
            reconnects: 0,
        }
    }

    /// Sends one request and reads the whole response; the body is left in `self.body`.
    /// Retries once on a stale keep-alive connection. Returns the status.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<u16> {
        self.req.clear();
        use std::io::Write;
        write!(
            self.req,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n",
            self.url.host_header
        )?;
        for (k, v) in headers {
            write!(self.req, "{k}: {v}\r\n")?;
        }
        if !body.is_empty() || method == "POST" {
            write!(self.req, "Content-Length: {}\r\n", body.len())?;
        }
        self.req.extend_from_slice(b"\r\n");
        self.req.extend_from_slice(body);
        for attempt in 0..2 {
            let fresh = self.stream.is_none();
            if fresh {
                self.stream = Some(connect_from(self.src, self.url.addr).await?);
                if attempt > 0 {
                    self.reconnects += 1;
                }
            }
            match tokio::time::timeout(timeout, self.exchange()).await {
                Ok(Ok((status, close))) => {
                    if close {
                        self.stream = None;
                    }
                    return Ok(status);
                }
                Ok(Err(e)) => {
                    self.stream = None;
                    if fresh {
                        return Err(e);
                    }
                }
                Err(_) => {
                    self.stream = None;
                    bail!("request timed out after {timeout:?}");
                }
            }
        }
        bail!("request failed twice")
    }

    async fn exchange(&mut self) -> Result<(u16, bool)> {
        let s = self.stream.as_mut().unwrap();
        s.write_all(&self.req).await?;
        let mut have = 0;
        let head = loop {
            if have == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let n = s.read(&mut self.buf[have..]).await?;
            if n == 0 {
                bail!("connection closed before response");
            }
            have += n;
            if let Some(h) = parse_head(&self.buf[..have])? {
                break h;
            }
        };
        self.body.clear();
        self.body.extend_from_slice(&self.buf[head.len..have]);
        if head.chunked {
            let mut d = Dechunk::default();
            let mut raw = std::mem::take(&mut self.body);
            let rl = raw.len();
            let mut w = d.run(&mut raw, 0, rl, 0)?;
            raw.truncate(w);
            while !matches!(d, Dechunk::Done) {
                let n = s.read(&mut self.buf).await?;
                if n == 0 {
                    bail!("connection closed inside chunked body");
                }
                let start = raw.len();
                raw.extend_from_slice(&self.buf[..n]);
                w = d.run(&mut raw, start, start + n, start)?;
                raw.truncate(w);
            }
            self.body = raw;
        } else if let Some(cl) = head.content_length {
            while self.body.len() < cl {
                let n = s.read(&mut self.buf).await?;
                if n == 0 {
                    bail!("connection closed inside body");
                }
                self.body.extend_from_slice(&self.buf[..n]);
            }
            self.body.truncate(cl);
        } else if head.status != 204 && head.status != 304 {
            // Close-delimited body.
            loop {
                let n = s.read(&mut self.buf).await?;
                if n == 0 {
                    break;
                }
                self.body.extend_from_slice(&self.buf[..n]);
            }
            return Ok((head.status, true));
        }
        Ok((head.status, head.close))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunk_in_place_across_splits() {
        let raw = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for split in 0..raw.len() {
            let mut buf = raw.to_vec();
            let mut d = Dechunk::default();
            let w = d.run(&mut buf, 0, split, 0).unwrap();
            let w2 = d.run(&mut buf, split, raw.len(), w).unwrap();
            assert_eq!(&buf[..w2], b"hello, world", "split {split}");
            assert!(matches!(d, Dechunk::Done));
        }
    }

    #[test]
    fn head_parses() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nxx").unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert!(h.chunked);
        assert_eq!(h.len, 80);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
    }
}
