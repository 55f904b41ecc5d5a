//! The data plane's threads: one single-threaded tokio runtime per thread, each serving the
//! connections handed to it from start to end, as HAProxy and Envoy bind a connection to a
//! thread.
//!
//! A call then runs wholly on one thread: the caller's connection, the link to the peer site
//! and the connection to the workload are all that thread's ([`PerThread`]), so a call never
//! wakes another thread and the HTTP/2 stream store's lock is never contended. Listeners
//! accept on the control runtime and hand each new connection to the thread serving the
//! fewest (see ARCHITECTURE.md, "Decision: thread per core").

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tracing::warn;

thread_local! {
    /// Which data-plane thread this is (`usize::MAX` on any other thread).
    static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// One value per data-plane thread, plus one shared by every other thread (the control
/// runtime, tests). [`PerThread::get`] returns the calling thread's.
pub struct PerThread<T>(Box<[T]>);

impl<T> PerThread<T> {
    /// `threads + 1` values made by `make`.
    pub fn new(threads: usize, make: impl FnMut() -> T) -> Self {
        Self(std::iter::repeat_with(make).take(threads + 1).collect())
    }

    /// The calling thread's value.
    pub fn get(&self) -> &T {
        let i = INDEX.get();
        match self.0.get(i) {
            Some(v) => v,
            None => &self.0[self.0.len() - 1],
        }
    }

    /// Every thread's value.
    pub fn all(&self) -> &[T] {
        &self.0
    }
}

/// Runs `f` as if on data-plane thread `i` (tests of per-thread state).
#[cfg(test)]
pub(crate) fn as_thread<R>(i: usize, f: impl FnOnce() -> R) -> R {
    let before = INDEX.replace(i);
    let r = f();
    INDEX.set(before);
    r
}

/// The running data-plane threads. Dropping the last handle to them stops them (after their
/// tasks have been dropped).
pub struct Workers {
    threads: Vec<Worker>,
}

struct Worker {
    handle: Handle,
    /// Connections this thread is serving.
    load: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

/// Decrements a thread's connection count when its connection's task ends (or is dropped).
struct Serving(Arc<AtomicUsize>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// Starts `n` (at least one) threads named `<site>-dp-<i>`.
    pub fn start(n: usize, site: &str) -> std::io::Result<Arc<Self>> {
        let mut threads = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("{site}-dp-{i}"))
                .spawn(move || {
                    INDEX.set(i);
                    // Returns when the sender is dropped (with the last `Arc<Workers>`).
                    let _ = rt.block_on(stopped);
                    rt.shutdown_timeout(Duration::from_secs(1));
                })?;
            threads.push(Worker {
                handle,
                load: Arc::default(),
                _stop: stop,
            });
        }
        Ok(Arc::new(Self { threads }))
    }

    /// How many threads.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Never true (there is at least one thread).
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// The first thread's runtime (for a task that is not a connection, e.g. an edge node's
    /// link to its parent).
    pub fn first(&self) -> &Handle {
        &self.threads[0].handle
    }

    /// Moves an accepted connection to the thread serving the fewest and runs `serve` on it
    /// there, in `set`.
    pub fn serve<F, Fut>(&self, set: &mut JoinSet<()>, tcp: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let w = self
            .threads
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
            .unwrap_or(&self.threads[0]);
        // Deregistered from this runtime's reactor, registered with the chosen thread's.
        let tcp = match tcp.into_std() {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "cannot hand a connection to a data-plane thread");
                return;
            }
        };
        w.load.fetch_add(1, Ordering::Relaxed);
        let serving = Serving(w.load.clone());
        set.spawn_on(
            async move {
                let _serving = serving;
                match TcpStream::from_std(tcp) {
                    Ok(tcp) => serve(tcp).await,
                    Err(e) => warn!(error = %e, "data-plane thread cannot take a connection"),
                }
            },
            &w.handle,
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn connections_go_to_the_least_busy_thread_and_are_served_there() {
        let workers = Workers::start(2, "t").unwrap();
        let values = Arc::new(PerThread::new(workers.len(), AtomicUsize::default));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut clients = Vec::new();
        let mut set = JoinSet::new();
        for _ in 0..4 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            let (tcp, _) = l.accept().await.unwrap();
            let values = values.clone();
            // Each connection stays open until its client closes, so the threads' counts of
            // connections served are 0:0, 1:0, 1:1, 2:1 when the four are handed over.
            workers.serve(&mut set, tcp, move |mut tcp| async move {
                let name = std::thread::current().name().unwrap_or("").to_string();
                values.get().fetch_add(1, Ordering::Relaxed);
                tcp.write_all(name.as_bytes()).await.unwrap();
                let _ = tcp.read(&mut [0u8; 1]).await;
            });
        }
        let mut names = Vec::new();
        for c in &mut clients {
            let mut name = [0u8; 6];
            c.read_exact(&mut name).await.unwrap();
            names.push(String::from_utf8_lossy(&name).into_owned());
        }
        drop(clients);
        while set.join_next().await.is_some() {}
        assert_eq!(names, ["t-dp-0", "t-dp-1", "t-dp-0", "t-dp-1"]);
        let counts: Vec<usize> = values
            .all()
            .iter()
            .map(|v| v.load(Ordering::Relaxed))
            .collect();
        assert_eq!(
            counts,
            [2, 2, 0],
            "each thread's own value; none on other threads"
        );
        assert!(
            workers
                .threads
                .iter()
                .all(|w| w.load.load(Ordering::Relaxed) == 0)
        );
    }
}
