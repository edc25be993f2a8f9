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

/// How long after its first byte a request's head (its line and headers)
/// may take to arrive: a client that sends its headers a byte at a time
/// would otherwise keep resetting [`IDLE`], and enough of them would hold
/// every slot. (axum's server sets no header-read timeout of its own.)
/// Once the head is in, a slow body or a slow handler is [`IDLE`]'s.
const ANSWER_WITHIN: Duration = if cfg!(test) {
    Duration::from_millis(500)
} else {
    Duration::from_secs(30)
};

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
            asked_at: None,
            head: HeadEnd::default(),
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
    /// Fires once nothing was read or written for [`IDLE`], or once a
    /// request's head took [`ANSWER_WITHIN`] to arrive.
    idle: Pin<Box<Sleep>>,
    /// When the first byte of a request head came, while it is still
    /// coming.
    asked_at: Option<Instant>,
    /// Where the reading stands in the current request's head.
    head: HeadEnd,
    _slot: OwnedSemaphorePermit,
}

/// Finds the blank line that ends a request's head, across reads.
#[derive(Default)]
struct HeadEnd {
    /// How much of `\r\n\r\n` the last bytes read matched.
    matched: usize,
    /// The head is in: nothing more is timed until the answer.
    done: bool,
}

impl HeadEnd {
    /// Reads `bytes`; whether they complete the head.
    fn read(&mut self, bytes: &[u8]) -> bool {
        const END: &[u8] = b"\r\n\r\n";
        if self.done {
            return false;
        }
        for &b in bytes {
            self.matched = if b == END[self.matched] {
                self.matched + 1
            } else if b == b'\r' {
                1
            } else {
                0
            };
            if self.matched == END.len() {
                self.done = true;
                return true;
            }
        }
        false
    }
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
                    let now = Instant::now();
                    this.head.read(&buf.filled()[before..]);
                    let until = if this.head.done {
                        this.asked_at = None;
                        now + IDLE
                    } else {
                        let asked_at = *this.asked_at.get_or_insert(now);
                        (now + IDLE).min(asked_at + ANSWER_WITHIN)
                    };
                    this.idle.as_mut().reset(until);
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
            // An answer: the next request's head is timed from its first
            // byte.
            self.asked_at = None;
            self.head = HeadEnd::default();
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client that sends its request a byte at a time is cut off
    /// [`ANSWER_WITHIN`] after its first byte, though it is never silent
    /// for [`IDLE`]; one that asks and is answered keeps its connection.
    #[tokio::test]
    async fn a_request_sent_a_byte_at_a_time_is_cut_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/", axum::routing::get(|| async { "ok" }))
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(ANSWER_WITHIN * 3).await;
                    "slow"
                }),
            );
        tokio::spawn(async move { axum::serve(Capped::new(listener), app).await });

        let mut slow = TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        let mut cut = false;
        for byte in b"GET / HTTP/1.1\r\nX-Slow: ".iter().cycle().take(60) {
            if slow.write_all(&[*byte]).await.is_err() {
                cut = true;
                break;
            }
            let mut one = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut one)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    cut = true;
                    break;
                }
                _ => {}
            }
        }
        assert!(cut, "still open after {:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(3));

        let mut quick = TcpStream::connect(addr).await.unwrap();
        for _ in 0..3 {
            quick
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut answer = [0u8; 256];
            let n = quick.read(&mut answer).await.unwrap();
            assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{n} bytes");
            tokio::time::sleep(Duration::from_millis(400)).await;
        }

        // A handler slower than the head's limit is answered all the same:
        // only the head is timed so.
        quick
            .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 256];
        let n = quick.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{n} bytes");
    }

    #[test]
    fn a_head_ends_at_its_blank_line_across_reads() {
        let mut head = HeadEnd::default();
        assert!(!head.read(b"GET / HTTP/1.1\r\nHost: x\r"));
        assert!(!head.read(b"\n\r"));
        assert!(head.read(b"\nbody"));
        assert!(!head.read(b"\r\n\r\n"), "once per request");
        let mut head = HeadEnd::default();
        assert!(head.read(b"a\r\r\n\r\n"));
    }
}
