//! The console's listener: a bound on open connections and on how long one
//! may sit silent, so that clients that open many and hold them (headers
//! sent a byte at a time, idle keep-alives) cannot take the file
//! descriptors the engine in the same process needs for its database.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Connections served at once; the next waits in the kernel's backlog
/// until one closes. A browser tab keeps a few.
pub(crate) const MAX_CONNECTIONS: usize = 256;

/// How long a connection may send and receive nothing before it is closed
/// (the page polls every 2 s, and reconnects after). Looked at while the
/// server reads: an answer still being written resets it.
const IDLE: Duration = Duration::from_secs(60);

/// A [`TcpListener`] that serves at most [`MAX_CONNECTIONS`] at once.
pub(crate) struct Capped {
    inner: TcpListener,
    slots: Arc<Semaphore>,
}

impl Capped {
    pub(crate) fn new(inner: TcpListener) -> Self {
        Capped {
            inner,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }
}

impl axum::serve::Listener for Capped {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        // Never closed: the semaphore lives as long as the listener.
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .expect("the console's connection semaphore is never closed");
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let connection = Connection {
            io,
            idle: Box::pin(tokio::time::sleep(IDLE)),
            _slot: slot,
        };
        (connection, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accepted connection, holding its slot until closed.
pub(crate) struct Connection {
    io: TcpStream,
    /// Fires once nothing was read or written for [`IDLE`].
    idle: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.idle.as_mut().reset(Instant::now() + IDLE);
                }
                Poll::Ready(result)
            }
            Poll::Pending => match this.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "console connection idle",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl Connection {
    /// An answer still going out (a large page to a slow client) is not
    /// idle: the timer counts from the last byte either way.
    fn wrote(&mut self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.idle.as_mut().reset(Instant::now() + IDLE);
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
