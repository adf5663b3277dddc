//! A listener that bounds what clients can hold: at most `max` connections at once, and
//! `per_address` from one IP address (the next gets a 503 and is closed), and a connection that moves no byte either way for
//! `idle` is closed — half-sent requests, idle keep-alives and dead peers alike. Without
//! it, 20,000 connections that each sent half a request line held 20,000 descriptors
//! and half a gigabyte until the process could not answer `/healthz`.

use axum::serve::Listener;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tracing::warn;

/// What a client over the limit reads before the connection closes.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 23\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many connections\r\n\r\n";

/// Connections open per address.
type PerAddress = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Wraps a listener with connection caps and an idle timeout.
pub struct Bounded<L> {
    inner: L,
    permits: Arc<Semaphore>,
    per_address: usize,
    open: PerAddress,
    idle: Duration,
    refused: Arc<AtomicU64>,
}

impl<L> Bounded<L> {
    /// At most `max` connections at once and `per_address` from one address, each closed
    /// after `idle` without traffic.
    pub fn new(inner: L, max: usize, per_address: usize, idle: Duration) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(max)),
            per_address,
            open: PerAddress::default(),
            idle,
            refused: Arc::default(),
        }
    }

    /// A slot for a connection from `ip`, if both caps allow one.
    fn admit(&self, ip: IpAddr) -> Option<Slot> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_default();
        if *n >= self.per_address {
            return None;
        }
        *n += 1;
        Some(Slot {
            _permit: permit,
            open: self.open.clone(),
            ip,
        })
    }
}

/// One admitted connection's share of the caps, given back when it closes.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: PerAddress,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl<L> Listener for Bounded<L>
where
    L: Listener<Addr = SocketAddr>,
    L::Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Io = Guarded<L::Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = self.inner.accept().await;
            match self.admit(addr.ip()) {
                Some(slot) => return (Guarded::new(io, slot, self.idle), addr),
                None => {
                    let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                    if n == 1 || n % 1000 == 0 {
                        warn!(refused = n, client = %addr.ip(), "HTTP connection limit reached: answering 503");
                    }
                    // Answered apart, briefly, so the accept loop never waits on it.
                    let mut io = io;
                    tokio::spawn(async move {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), io.write_all(BUSY)).await;
                        let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
                    });
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection holding one of the listener's permits, closed when idle too long.
pub struct Guarded<T> {
    io: T,
    _slot: Slot,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<T> Guarded<T> {
    fn new(io: T, slot: Slot, idle: Duration) -> Self {
        Self {
            io,
            _slot: slot,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    /// Bytes moved: the idle clock starts again.
    fn progress(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// Nothing moved: an error once the idle time is up (the waker is registered).
    fn stalled<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "HTTP connection idle too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.progress();
                Poll::Ready(r)
            }
            Poll::Pending => this.stalled(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.progress();
                Poll::Ready(r)
            }
            Poll::Pending => this.stalled(cx),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.stalled(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn bounded(max: usize, idle: Duration) -> (Bounded<TcpListener>, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        (Bounded::new(l, max, max, idle), addr)
    }

    /// A connection from `from` (a loopback address of its own) to `to`.
    async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind((std::net::Ipv4Addr::from(from), 0).into()).unwrap();
        s.connect(to).await.unwrap()
    }

    #[tokio::test]
    async fn one_address_cannot_take_every_slot() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut l = Bounded::new(l, 10, 2, Duration::from_secs(3600));
        let mut held = Vec::new();
        for _ in 0..2 {
            let _c = connect_from([127, 0, 0, 2], addr).await;
            held.push((_c, l.accept().await.0));
        }
        // The same address again: 503, though eight slots are free.
        let mut third = connect_from([127, 0, 0, 2], addr).await;
        let other = connect_from([127, 0, 0, 3], addr).await;
        let (io, from) = l.accept().await;
        assert_eq!(
            from.ip(),
            IpAddr::from([127, 0, 0, 3]),
            "another address is served"
        );
        let mut answer = String::new();
        third.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        // A closed connection gives its address's slot back.
        held.pop();
        let _fourth = connect_from([127, 0, 0, 2], addr).await;
        let (_, from) = l.accept().await;
        assert_eq!(from.ip(), IpAddr::from([127, 0, 0, 2]));
        drop((io, other));
    }

    #[tokio::test]
    async fn over_the_limit_a_client_reads_503_and_a_freed_slot_is_reused() {
        let (mut l, addr) = bounded(1, Duration::from_secs(3600)).await;
        let _first = TcpStream::connect(addr).await.unwrap();
        let (held, _) = l.accept().await;
        let mut second = TcpStream::connect(addr).await.unwrap();
        let accepting = tokio::spawn(async move {
            let (io, _) = l.accept().await;
            drop(io);
        });
        let mut answer = String::new();
        second.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        drop(held);
        let _third = TcpStream::connect(addr).await.unwrap();
        accepting.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_moves_nothing_is_closed_after_the_idle_time() {
        let (mut l, addr) = bounded(4, Duration::from_secs(30)).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut io, _) = l.accept().await;
        client.write_all(b"GET / HT").await.unwrap();
        let mut buf = [0u8; 64];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HT");
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(60), io.read(&mut buf))
            .await
            .expect("closed within a minute")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(30));
    }
}
