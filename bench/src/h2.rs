//! Long-polls over HTTP/2 with prior knowledge: many streams on few connections, as a proxy in
//! front of the service or an agent fleet's HTTP/2 client sends them. hyper's client
//! connection, one per socket, so the run controls exactly how many connections carry them.

use std::io;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::api::Api;
use crate::waiting::Waiter;

/// The connections the waiters' streams share; dropping it lets them close.
pub struct Connections(#[allow(dead_code)] Vec<SendRequest<Empty<Bytes>>>);

/// Opens `connections` HTTP/2 connections and parks `waiters` long-polls on `id` over them, in
/// turn. A stream's answer time is when its response headers arrived.
pub async fn park_all(
    api: &Api,
    id: &str,
    waiters: usize,
    connections: usize,
    wait_seconds: u64,
) -> io::Result<(JoinSet<Waiter>, Connections)> {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        let tcp = TcpStream::connect(&api.instances[0]).await?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(connection);
        senders.push(sender);
    }
    let uri = format!(
        "http://{}{}",
        api.instances[0],
        api.wait_path(id, wait_seconds)
    );
    let authorization = format!("Bearer {}", api.agent_token());
    let mut parked = JoinSet::new();
    for idx in 0..waiters {
        let mut sender = senders[idx % senders.len()].clone();
        let request = hyper::Request::get(&uri)
            .header("authorization", &authorization)
            .body(Empty::<Bytes>::new())
            .map_err(io::Error::other)?;
        parked.spawn(async move {
            let outcome = async {
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(io::Error::other)?;
                let first_byte = Instant::now();
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(io::Error::other)?
                    .to_bytes();
                let accepted = status == 200
                    && std::str::from_utf8(&body).is_ok_and(|b| b.contains("\"accepted\""));
                Ok((first_byte, accepted))
            }
            .await;
            (idx, outcome, None)
        });
    }
    Ok((parked, Connections(senders)))
}
