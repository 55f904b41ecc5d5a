//! Write coalescing for multiplexed (HTTP/2) connections: the first write after each flush is
//! put off by one turn of the scheduler (the task wakes itself and yields to the tasks already
//! queued), so the frames of every call that became ready meanwhile leave in one write instead
//! of one each. Under load this batches; when idle it costs one extra poll.
//!
//! Measured with `perf stat` on system calls (bench topology): with `wrk -c64` the calling agent
//! made 0.62 link writes per call without it and 0.14 with it (HAProxy: 0.20); with `h2load
//! -m32`, 0.80 writes per call in all without it and 0.16 with it (HAProxy: 0.16). On loopback
//! each write also pays the receiver's TCP processing.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A byte stream whose writes are coalesced (or, made with [`Coalesce::off`], passed through).
pub struct Coalesce<S> {
    inner: S,
    /// A write was put off since the last completed flush: the next one goes through.
    deferred: bool,
    on: bool,
}

impl<S> Coalesce<S> {
    /// Wraps `inner`, coalescing its writes.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            deferred: false,
            on: true,
        }
    }

    /// Wraps `inner` without changing anything (one type for both kinds of connection).
    pub fn off(inner: S) -> Self {
        Self {
            inner,
            deferred: false,
            on: false,
        }
    }

    /// Puts the first write after a flush off by one scheduler turn.
    fn defer(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.on || self.deferred {
            return false;
        }
        self.deferred = true;
        cx.waker().wake_by_ref();
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.defer(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.defer(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if r.is_ready() {
            self.deferred = false;
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    /// A writer that records what reaches it (the byte stream under the coalescer).
    #[derive(Default)]
    struct Sink {
        writes: usize,
        bytes: Vec<u8>,
    }

    impl AsyncRead for Sink {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.writes += 1;
            self.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);
    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_first_write_after_each_flush_waits_one_turn_and_nothing_is_lost() {
        let wakes = Arc::new(Wakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalesce::new(Sink::default());
        let mut p = Pin::new(&mut c);
        assert!(p.as_mut().poll_write(&mut cx, b"one").is_pending());
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "the task must wake itself"
        );
        assert!(matches!(
            p.as_mut().poll_write(&mut cx, b"one"),
            Poll::Ready(Ok(3))
        ));
        assert!(matches!(
            p.as_mut().poll_write(&mut cx, b"two"),
            Poll::Ready(Ok(3))
        ));
        assert!(p.as_mut().poll_flush(&mut cx).is_ready());
        assert!(p.as_mut().poll_write(&mut cx, b"three").is_pending());
        assert!(matches!(
            p.as_mut().poll_write(&mut cx, b"three"),
            Poll::Ready(Ok(5))
        ));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        assert_eq!(c.inner.bytes, b"onetwothree");
        assert_eq!(c.inner.writes, 3);
    }

    #[test]
    fn off_passes_every_write_straight_through() {
        let wakes = Arc::new(Wakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut c = Coalesce::off(Sink::default());
        let mut p = Pin::new(&mut c);
        for _ in 0..3 {
            assert!(matches!(
                p.as_mut().poll_write(&mut cx, b"x"),
                Poll::Ready(Ok(1))
            ));
            assert!(p.as_mut().poll_flush(&mut cx).is_ready());
        }
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        assert_eq!(c.inner.writes, 3);
    }
}
