//! A lean HTTP/1.1 client: pre-built request bytes on a kept-alive socket, responses framed by
//! `Content-Length` (or chunked), and the instant the first response byte arrived.
//!
//! A general-purpose client (reqwest, as before) spends tens of microseconds per request on
//! the same two cores the server runs on, and its timing includes its own machinery. This one
//! writes bytes and reads bytes, so what the benchmark measures is the server.

use std::io;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request as bytes, ready to be written as often as needed.
#[derive(Clone)]
pub struct Request(pub Vec<u8>);

impl Request {
    pub fn new(method: &str, path: &str, bearer: &str, body: Option<&str>) -> Self {
        let mut text = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {bearer}\r\n"
        );
        if let Some(body) = body {
            text.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        } else {
            text.push_str("\r\n");
        }
        Self(text.into_bytes())
    }
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// When the first byte of the response was read.
    pub first_byte: Instant,
}

impl Response {
    pub fn body_text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("")
    }
}

/// One kept-alive connection. After any error it must be dropped (its framing is lost).
pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The server said `Connection: close`.
    pub closed: bool,
}

impl Connection {
    pub async fn open(addr: &str) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
            closed: false,
        })
    }

    pub async fn send(&mut self, request: &Request) -> io::Result<()> {
        self.stream.write_all(&request.0).await
    }

    /// Reads one whole response.
    pub async fn response(&mut self) -> io::Result<Response> {
        let mut first_byte = None;
        let head_end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end + 4;
            }
            self.fill(&mut first_byte).await?;
        };
        let first_byte = first_byte.unwrap_or_else(Instant::now);
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| invalid("response head is not UTF-8"))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("no status code"))?;
        let mut length = None;
        let mut chunked = false;
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                self.closed = value.eq_ignore_ascii_case("close");
            }
        }
        self.buf.drain(..head_end);
        let body = if chunked {
            self.chunked_body().await?
        } else {
            let length = length.unwrap_or(0);
            while self.buf.len() < length {
                self.fill(&mut None).await?;
            }
            self.buf.drain(..length).collect()
        };
        Ok(Response {
            status,
            body,
            first_byte,
        })
    }

    /// One request, one response.
    pub async fn call(&mut self, request: &Request) -> io::Result<Response> {
        self.send(request).await?;
        self.response().await
    }

    async fn chunked_body(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(end) = find(&self.buf, b"\r\n") {
                    break end;
                }
                self.fill(&mut None).await?;
            };
            let size_text = std::str::from_utf8(&self.buf[..line_end])
                .map_err(|_| invalid("bad chunk size"))?;
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size =
                usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size"))?;
            // The chunk, and the CRLF after it (after the last, empty one: the final CRLF).
            let needed = line_end + 2 + size + 2;
            while self.buf.len() < needed {
                self.fill(&mut None).await?;
            }
            body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
            self.buf.drain(..needed);
            if size == 0 {
                return Ok(body);
            }
        }
    }

    async fn fill(&mut self, first_byte: &mut Option<Instant>) -> io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by the server",
            ));
        }
        first_byte.get_or_insert_with(Instant::now);
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// `http://host:port[/…]` → `host:port`.
pub fn authority(url: &str) -> Result<String, String> {
    url.strip_prefix("http://")
        .map(|rest| rest.split('/').next().unwrap_or(rest).to_owned())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| format!("{url}: only http://host:port URLs are supported"))
}
