//! Write coalescing for a connection shared by many concurrent calls.
//!
//! hyper runs each HTTP/2 call as its own task, and a call that has its request or
//! response ready wakes the connection's task straight away (tokio polls it next), so every
//! call went out in its own `writev`: one syscall per call, which on loopback also runs the
//! peer's receive path. [`CoalescedWrites`] makes the first write after a flush yield once:
//! the worker runs the tasks queued before the connection's, the calls among them add their
//! frames, and all leave in one write (the idea of Netty's `FlushConsolidationHandler`).
//!
//! A yield costs a lone call about 25 µs on a 2-core machine (tokio rouses the other worker
//! for the yielded task), so a yield that gathered nothing more lets the next batches
//! through without one: 1, then 2, 4, … up to [`MAX_WRITE_THROUGH`] after each further
//! idle yield, so that a lone caller meets a yield in under 1% of its calls (its p99 stays
//! clear of them), and none after a yield that gathered something.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most batches written straight through after a yield that found nothing to add.
const MAX_WRITE_THROUGH: u8 = 128;

/// Where the current batch (the writes between two flushes) stands.
#[derive(Debug, Clone, Copy)]
enum Batch {
    /// Nothing written since the last flush.
    Fresh,
    /// Yielded before writing `offered` bytes.
    Yielded { offered: usize },
    /// Writing through.
    Writing,
}

/// An I/O stream whose writes let the tasks already queued add to them before going out.
/// Wrap a connection's socket in it before handing it to hyper (client or server).
#[derive(Debug)]
pub struct CoalescedWrites<T> {
    inner: T,
    batch: Batch,
    /// Batches left to write through without yielding.
    write_through: u8,
    /// How many batches the last idle yield let through (0 after a yield that gathered).
    backoff: u8,
}

impl<T> CoalescedWrites<T> {
    /// Wraps `inner`; reads pass straight through.
    pub fn new(inner: T) -> Self {
        CoalescedWrites {
            inner,
            batch: Batch::Fresh,
            write_through: 0,
            backoff: 0,
        }
    }

    /// `Pending` (the task woken to run again after those queued) when a batch of
    /// `offered` bytes should wait for more; `Ready` when it should be written.
    fn gather(&mut self, cx: &mut Context<'_>, offered: usize) -> Poll<()> {
        match self.batch {
            Batch::Writing => {}
            Batch::Fresh if self.write_through > 0 => {
                self.write_through -= 1;
                self.batch = Batch::Writing;
            }
            Batch::Fresh => {
                self.batch = Batch::Yielded { offered };
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Batch::Yielded { offered: before } => {
                self.backoff = if offered > before {
                    0
                } else {
                    self.backoff.saturating_mul(2).clamp(1, MAX_WRITE_THROUGH)
                };
                self.write_through = self.backoff;
                self.batch = Batch::Writing;
            }
        }
        Poll::Ready(())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescedWrites<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.gather(cx, buf.len()));
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let offered = bufs.iter().map(|b| b.len()).sum();
        std::task::ready!(self.gather(cx, offered));
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.batch = Batch::Fresh;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use super::*;

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn write(io: &mut CoalescedWrites<Vec<u8>>, cx: &mut Context<'_>, bytes: &[u8]) -> bool {
        match Pin::new(io).poll_write(cx, bytes) {
            Poll::Ready(result) => {
                assert_eq!(result.expect("a Vec takes every write"), bytes.len());
                true
            }
            Poll::Pending => false,
        }
    }

    fn flush(io: &mut CoalescedWrites<Vec<u8>>, cx: &mut Context<'_>) {
        assert!(Pin::new(io).poll_flush(cx).is_ready());
    }

    #[test]
    fn a_batch_yields_once_and_rewakes_its_task() {
        let wakes = Arc::new(CountingWaker::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut io = CoalescedWrites::new(Vec::new());

        assert!(
            !write(&mut io, &mut cx, b"one"),
            "the first write of a batch yields"
        );
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "and wakes its task to come back"
        );
        assert!(
            write(&mut io, &mut cx, b"one, two"),
            "then the batch goes out"
        );
        assert!(write(&mut io, &mut cx, b"!"), "as does the rest of it");
        flush(&mut io, &mut cx);
        assert_eq!(io.inner, b"one, two!");

        assert!(
            !write(&mut io, &mut cx, b"x"),
            "the next batch yields again"
        );
        assert!(write(&mut io, &mut cx, b"xy"));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn idle_yields_let_ever_more_batches_through_until_one_gathers() {
        let waker = Waker::from(Arc::new(CountingWaker::default()));
        let mut cx = Context::from_waker(&waker);
        let mut io = CoalescedWrites::new(Vec::new());

        for batches in [1, 2, 4, 8, 16, 32, 64, 128, 128] {
            assert!(!write(&mut io, &mut cx, b"alone"), "the batch yields");
            assert!(
                write(&mut io, &mut cx, b"alone"),
                "nothing was added meanwhile"
            );
            flush(&mut io, &mut cx);
            for _ in 0..batches {
                assert!(
                    write(&mut io, &mut cx, b"straight"),
                    "written without a yield"
                );
                flush(&mut io, &mut cx);
            }
        }
        assert!(!write(&mut io, &mut cx, b"busy"), "then a yield");
        assert!(write(&mut io, &mut cx, b"busy, busier"), "that gathers");
        flush(&mut io, &mut cx);
        assert!(
            !write(&mut io, &mut cx, b"x"),
            "and the next batch yields again"
        );
    }
}
