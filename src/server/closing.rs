//! A connection that finishes its in-flight requests and closes once it is told to: at
//! shutdown, or (HTTP/2) when it has been idle too long; or that is dropped at once, its
//! requests with it, when one of them cannot otherwise be ended (HTTP/2, `due`).
//!
//! hyper-util's `GracefulShutdown` does this for shutdown only, and its connection trait is
//! sealed, so the idle close could not share it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::{Read, Write};
use hyper::server::conn::{http1, http2};

/// A hyper server connection that can be asked to finish and close.
pub(super) trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for http1::Connection<I, S>
where
    I: Read + Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::Connection::graceful_shutdown(self);
    }
}

impl<I, S, B, E> Graceful for http2::Connection<I, S, E>
where
    I: Read + Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
}

pin_project_lite::pin_project! {
    /// Serves `connection`; once `until` resolves, asks it to finish and close; once `abort`
    /// resolves, ends (and the connection is dropped with it).
    pub(super) struct Closing<C, U, A> {
        #[pin]
        connection: C,
        #[pin]
        until: U,
        asked: bool,
        #[pin]
        abort: A,
    }
}

impl<C, U, A> Closing<C, U, A> {
    pub(super) fn new(connection: C, until: U, abort: A) -> Self {
        Self {
            connection,
            until,
            asked: false,
            abort,
        }
    }
}

impl<C: Graceful, U: Future<Output = ()>, A: Future<Output = ()>> Future for Closing<C, U, A> {
    type Output = Result<(), hyper::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if this.abort.poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        if !*this.asked && this.until.poll(cx).is_ready() {
            *this.asked = true;
            this.connection.as_mut().graceful_shutdown();
        }
        this.connection.poll(cx)
    }
}
