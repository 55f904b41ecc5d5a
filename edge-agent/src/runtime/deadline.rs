//! Call deadlines kept by one timer per data-plane thread rather than one per call.
//!
//! Every call carries a deadline (`limits.request_timeout_ms`), and almost every call ends
//! long before it. A tokio timer per call (`tokio::time::timeout`) registers an entry in the
//! runtime's timer wheel on the call's first poll and removes it on drop, and its `Sleep`
//! makes the call's future larger; at tens of thousands of calls a second that cost was
//! measurable (BENCHMARKS.md). Here a call's deadline is a slot in its thread's
//! [`Deadlines`] table, set and cleared under an uncontended lock. One sweeper task per table
//! sleeps until the earliest deadline, wakes the calls whose deadlines have passed and sleeps
//! again; it ends when no deadline is left and the next call starts another. A deadline is
//! as precise as a tokio timer's.

use multimesh_core::locks::lock;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use slab::Slab;

/// A thread's table of call deadlines.
#[derive(Default)]
pub struct Deadlines {
    table: Arc<Mutex<Table>>,
}

#[derive(Default)]
struct Table {
    calls: Slab<Call>,
    /// Every deadline up to this instant has passed and its call has been woken.
    reached: Option<Instant>,
    /// When the sweeper task wakes next; `None` when there is no sweeper.
    sweeper: Option<Instant>,
    /// Wakes the sweeper before `sweeper`, for a call whose deadline is earlier.
    sweeper_waker: Option<Waker>,
    /// Counts sweepers started: the live one's number.
    sweepers: u64,
}

struct Call {
    at: Instant,
    waker: Waker,
}

/// The deadline of a call passed before the call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl Deadlines {
    /// Runs `call` until it ends or `at` passes, whichever comes first.
    pub fn within<F: Future>(&self, at: Instant, call: F) -> Within<'_, F> {
        Within {
            table: &self.table,
            at,
            slot: None,
            call,
        }
    }
}

pin_project_lite::pin_project! {
    /// A call with a deadline; see [`Deadlines::within`].
    pub struct Within<'d, F> {
        table: &'d Arc<Mutex<Table>>,
        at: Instant,
        slot: Option<usize>,
        #[pin]
        call: F,
    }

    impl<F> PinnedDrop for Within<'_, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(slot) = this.slot.take() {
                lock(this.table).calls.remove(slot);
            }
        }
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.call.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let at = *this.at;
        let mut t = lock(this.table);
        if t.reached.is_some_and(|r| r >= at) {
            return Poll::Ready(Err(Elapsed));
        }
        if let Some(slot) = *this.slot {
            let c = &mut t.calls[slot];
            if !c.waker.will_wake(cx.waker()) {
                c.waker.clone_from(cx.waker());
            }
            return Poll::Pending;
        }
        let waker = cx.waker().clone();
        *this.slot = Some(t.calls.insert(Call { at, waker }));
        match t.sweeper {
            None => {
                t.sweeper = Some(at);
                t.sweepers += 1;
                let sweeper = Sweeper {
                    table: Arc::clone(this.table),
                    number: t.sweepers,
                };
                drop(t);
                tokio::spawn(sweeper.run(at));
            }
            Some(next) if at < next => {
                t.sweeper = Some(at);
                if let Some(w) = t.sweeper_waker.take() {
                    w.wake();
                }
            }
            Some(_) => {}
        }
        Poll::Pending
    }
}

/// The sweeper task's state. Dropping it (the task ended, or its runtime shut down and dropped
/// it) clears the table's sweeper, unless a newer one has started, so the next call starts one.
struct Sweeper {
    table: Arc<Mutex<Table>>,
    number: u64,
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        let mut t = lock(&self.table);
        if t.sweepers == self.number {
            t.sweeper = None;
            t.sweeper_waker = None;
        }
    }
}

impl Sweeper {
    /// Sleeps until `next`, wakes every call whose deadline has passed, and repeats with the
    /// earliest deadline left; ends when none is left.
    async fn run(self, mut next: Instant) {
        loop {
            let sleep = tokio::time::sleep_until(next.into());
            tokio::pin!(sleep);
            poll_fn(|cx| {
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                let mut t = lock(&self.table);
                if t.sweeper.is_some_and(|s| s < next) {
                    return Poll::Ready(());
                }
                t.sweeper_waker = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            let now = Instant::now();
            let mut due = Vec::new();
            let earliest = {
                let mut t = lock(&self.table);
                let before = t.reached;
                t.reached = Some(now);
                let mut earliest: Option<Instant> = None;
                for (_, c) in &t.calls {
                    if c.at > now {
                        earliest = Some(earliest.map_or(c.at, |e| e.min(c.at)));
                    } else if before.is_none_or(|b| c.at > b) {
                        due.push(c.waker.clone());
                    }
                }
                t.sweeper = earliest;
                earliest
            };
            due.into_iter().for_each(Waker::wake);
            match earliest {
                Some(e) => next = e,
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    fn calls(d: &Deadlines) -> usize {
        lock(&d.table).calls.len()
    }

    /// `f`, failing the test if it has not ended within 10 s (a deadline that never fires).
    async fn bounded<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("no deadline fired within 10 s")
    }

    #[tokio::test]
    async fn a_call_that_ends_in_time_returns_its_output_and_leaves_no_slot() {
        let d = Deadlines::default();
        let at = Instant::now() + Duration::from_secs(5);
        let out = d
            .within(at, async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                7
            })
            .await;
        assert_eq!(out, Ok(7));
        assert_eq!(calls(&d), 0);
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_is_ended_on_time() {
        let d = Deadlines::default();
        let start = Instant::now();
        let out = bounded(d.within(
            start + Duration::from_millis(50),
            std::future::pending::<()>(),
        ))
        .await;
        let took = start.elapsed();
        assert_eq!(out, Err(Elapsed));
        assert!(took >= Duration::from_millis(50), "ended after {took:?}");
        assert!(took < Duration::from_millis(1000), "ended after {took:?}");
        assert_eq!(calls(&d), 0);
    }

    #[tokio::test]
    async fn an_earlier_deadline_wakes_a_sweeper_sleeping_for_a_later_one() {
        let d = Deadlines::default();
        let start = Instant::now();
        let late = d.within(
            start + Duration::from_secs(30),
            std::future::pending::<()>(),
        );
        let early = d.within(
            start + Duration::from_millis(40),
            std::future::pending::<()>(),
        );
        tokio::pin!(late);
        // The late call starts the sweeper, sleeping for 30 s.
        assert!(futures::poll!(late.as_mut()).is_pending());
        tokio::task::yield_now().await;
        assert_eq!(bounded(early).await, Err(Elapsed));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(
            futures::poll!(late.as_mut()).is_pending(),
            "the later call goes on"
        );
        assert_eq!(calls(&d), 1);
    }

    #[test]
    fn a_sweeper_lost_with_its_runtime_is_replaced_by_the_next_call() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
        };
        let d = Deadlines::default();
        let first = runtime();
        first.block_on(async {
            let far = d.within(
                Instant::now() + Duration::from_secs(60),
                std::future::pending::<()>(),
            );
            tokio::pin!(far);
            assert!(futures::poll!(far.as_mut()).is_pending());
            // The sweeper task starts on this runtime.
            tokio::task::yield_now().await;
            assert!(lock(&d.table).sweeper.is_some());
        });
        // Shutting the runtime down drops its tasks, the sweeper among them.
        drop(first);
        assert!(lock(&d.table).sweeper.is_none());
        let out = runtime().block_on(bounded(d.within(
            Instant::now() + Duration::from_millis(30),
            std::future::pending::<()>(),
        )));
        assert_eq!(out, Err(Elapsed));
    }

    #[tokio::test]
    async fn many_calls_end_each_at_its_own_deadline() {
        let d = Arc::new(Deadlines::default());
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..200u64 {
            let d = Arc::clone(&d);
            // Even calls end by themselves after 10 ms; odd ones wait forever.
            set.spawn(async move {
                let at = start + Duration::from_millis(20 + (i % 5) * 20);
                let r = d
                    .within(at, async move {
                        if i % 2 == 0 {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        } else {
                            std::future::pending::<()>().await;
                        }
                    })
                    .await;
                (i, at, r, Instant::now())
            });
        }
        while let Some(r) = bounded(set.join_next()).await {
            let (i, at, r, ended) = r.unwrap();
            if i % 2 == 0 {
                assert_eq!(r, Ok(()), "call {i}");
            } else {
                assert_eq!(r, Err(Elapsed), "call {i}");
                assert!(ended >= at, "call {i} ended before its deadline");
            }
        }
        assert_eq!(calls(&d), 0);
        // With no deadline left the sweeper ends; the next call starts another.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(lock(&d.table).sweeper.is_none());
        let r = bounded(d.within(
            Instant::now() + Duration::from_millis(10),
            std::future::pending::<()>(),
        ))
        .await;
        assert_eq!(r, Err(Elapsed));
    }
}
