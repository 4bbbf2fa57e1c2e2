//! What the target's Redis did: its CPU time, its clients, and the commands clients sent.
//!
//! Plain RESP over a socket of its own, so the probe adds one client and a handful of
//! commands, which `MONITOR` counting leaves out. Commands a Lua script runs inside Redis are
//! tagged `lua` by `MONITOR` and are not counted: the figure is what crossed the network.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Opens a connection of the probe's own and sends one inline command on it.
async fn send(addr: &str, command: &str) -> Result<BufReader<TcpStream>, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("redis {addr}: {e}"))?;
    stream
        .write_all(format!("{command}\r\n").as_bytes())
        .await
        .map_err(|e| format!("redis {addr}: {e}"))?;
    Ok(BufReader::new(stream))
}

/// The reply's first line.
async fn first_line(addr: &str, reader: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .await
        .map_err(|e| format!("redis {addr}: {e}"))?;
    Ok(line)
}

/// One `INFO` section's text.
async fn info(addr: &str, section: &str) -> Result<String, String> {
    let mut reader = send(addr, &format!("INFO {section}")).await?;
    let header = first_line(addr, &mut reader).await?;
    let len: usize = header
        .trim()
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("redis {addr}: unexpected INFO reply {header:?}"))?;
    let mut body = vec![0u8; len + 2];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("redis {addr}: {e}"))?;
    Ok(String::from_utf8_lossy(&body[..len]).into_owned())
}

fn field(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// Redis' own CPU time so far (user + system), in seconds.
pub async fn cpu_seconds(addr: &str) -> Result<f64, String> {
    let text = info(addr, "cpu").await?;
    Ok(field(&text, "used_cpu_user").unwrap_or(0.0) + field(&text, "used_cpu_sys").unwrap_or(0.0))
}

/// Clients connected now, the probe's own connection left out.
pub async fn clients(addr: &str) -> Result<u64, String> {
    let text = info(addr, "clients").await?;
    let n = field(&text, "connected_clients").unwrap_or(1.0) as u64;
    Ok(n.saturating_sub(1))
}

/// Counts the commands clients send, from `MONITOR`, between markers.
pub struct Monitor {
    addr: String,
    /// The last marker seen, and how many commands (markers and Lua-internal commands
    /// excluded) had been seen by then.
    marks: watch::Receiver<(String, u64)>,
    _reader: tokio::task::JoinHandle<()>,
}

impl Monitor {
    pub async fn start(addr: &str) -> Result<Self, String> {
        let mut reader = send(addr, "MONITOR").await?;
        let ok = first_line(addr, &mut reader).await?;
        if ok.trim() != "+OK" {
            return Err(format!("redis {addr}: MONITOR answered {ok:?}"));
        }
        let (marked, marks) = watch::channel((String::new(), 0));
        let reader = tokio::spawn(async move {
            let mut line = String::new();
            let mut counted = 0u64;
            loop {
                line.clear();
                match reader.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                // `+1712345678.123456 [0 127.0.0.1:5555] "EVALSHA" ...`; scripts' own
                // commands show `[0 lua]`.
                let source = line.split(']').next().unwrap_or("");
                if source.ends_with(" lua") {
                    continue;
                }
                if let Some(marker) = marker_in(&line) {
                    let _ = marked.send((marker, counted));
                    continue;
                }
                counted += 1;
            }
        });
        Ok(Self {
            addr: addr.to_owned(),
            marks,
            _reader: reader,
        })
    }

    /// Sends a marker through another connection and waits until `MONITOR` shows it: every
    /// command sent before it has been counted by then. Returns the count at the marker.
    pub async fn mark(&mut self, name: &str) -> Result<u64, String> {
        let text = format!("bench-marker-{name}");
        // The reply is not needed: MONITOR shows the command once Redis ran it.
        let _connection = send(&self.addr, &format!("ECHO {text}")).await?;
        let wait = self.marks.wait_for(|(seen, _)| *seen == text);
        match tokio::time::timeout(Duration::from_secs(10), wait).await {
            Ok(Ok(mark)) => Ok(mark.1),
            _ => Err(format!("MONITOR never showed the marker {text}")),
        }
    }
}

fn marker_in(line: &str) -> Option<String> {
    let start = line.find("\"bench-marker-")? + 1;
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_and_fields_are_read() {
        let line = "+1712345678.123456 [0 127.0.0.1:5555] \"ECHO\" \"bench-marker-idle\"\r\n";
        assert_eq!(marker_in(line).as_deref(), Some("bench-marker-idle"));
        assert_eq!(marker_in("+1 [0 127.0.0.1:1] \"GET\" \"k\""), None);
        let info = "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.25\r\n";
        assert_eq!(field(info, "used_cpu_user"), Some(2.25));
        assert_eq!(field(info, "used_cpu_sys"), Some(1.5));
    }
}
