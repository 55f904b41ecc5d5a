//! `loadgen`: an open-loop, fixed-rate HTTP load generator (HTTP/1.1 or h2c) that reports latency
//! percentiles measured from each request's *scheduled* send time, so a stalled proxy cannot
//! hide its queueing (no coordinated omission). wrk and h2load measure maximum throughput;
//! this measures latency below saturation.
//!
//! Prints one JSON object: sent, ok, errors, achieved_rps, p50_us, p90_us, p99_us, p999_us,
//! max_us.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Fixed-rate HTTP load with latency percentiles.
#[derive(Parser)]
struct Args {
    /// Target `host:port`.
    #[arg(long)]
    target: String,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Extra header `NAME: VALUE`; repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Requests per second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds of load (after 1 s of warm-up that is not recorded).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Connections (HTTP/1.1: one request at a time each; h2c: streams share them).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Speak h2c (prior knowledge) instead of HTTP/1.1.
    #[arg(long)]
    h2: bool,
    /// The Host header (default: the target), for a proxy that routes by it.
    #[arg(long)]
    host: Option<String>,
}

enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

async fn connect(target: &str, h2: bool) -> anyhow::Result<Conn> {
    let tcp = TcpStream::connect(target).await?;
    tcp.set_nodelay(true)?;
    let io = TokioIo::new(tcp);
    if h2 {
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Ok(Conn::H2(send))
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(Conn::H1(send))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let headers: Vec<(String, String)> = args
        .headers
        .iter()
        .map(|h| {
            let (k, v) = h.split_once(':').unwrap_or((h, ""));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let warmup = Duration::from_secs(1);
    let total = args.rate * (args.duration + 1);
    let interval = Duration::from_nanos(1_000_000_000 / args.rate.max(1));
    let start = Instant::now() + Duration::from_millis(100);
    // A dedicated thread releases each request at its due time (std sleeps are precise to
    // tens of microseconds; tokio's timer wheel only to a millisecond, which would add up to
    // 1 ms to every measurement). Workers take due times and send at once.
    let (due_tx, due_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    std::thread::spawn(move || {
        for i in 0..total {
            let due = start + interval * (i as u32);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if due_tx.send(due).is_err() {
                return;
            }
        }
    });
    let next = Arc::new(Mutex::new(due_rx));
    let results = Arc::new(Mutex::new((Vec::<u32>::new(), 0u64, 0u64)));
    // h2c: all workers share a few connections; HTTP/1.1: one connection per worker.
    let shared = if args.h2 {
        let mut v = Vec::new();
        for _ in 0..args.connections.clamp(1, 4) {
            v.push(connect(&args.target, true).await?);
        }
        Some(Arc::new(v))
    } else {
        None
    };
    let workers = if args.h2 { 256 } else { args.connections };
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (next, results, headers, shared) = (
            next.clone(),
            results.clone(),
            headers.clone(),
            shared.clone(),
        );
        let (target, path) = (args.target.clone(), args.path.clone());
        let host = args.host.clone().unwrap_or_else(|| target.clone());
        tasks.push(tokio::spawn(async move {
            let mut own = match &shared {
                None => connect(&target, false).await.ok(),
                Some(_) => None,
            };
            loop {
                let Some(due) = next.lock().await.recv().await else {
                    return;
                };
                let mut b = Request::builder()
                    .uri(path.as_str())
                    .header("host", host.as_str());
                for (k, v) in &headers {
                    b = b.header(k.as_str(), v.as_str());
                }
                let Ok(req) = b.body(Empty::<Bytes>::new()) else {
                    return;
                };
                let ok = match (&shared, own.as_mut()) {
                    (Some(conns), _) => match &conns[w % conns.len()] {
                        Conn::H2(s) => {
                            let mut s = s.clone();
                            match s.send_request(req).await {
                                Ok(r) => {
                                    let ok = r.status().is_success();
                                    ok && r.into_body().collect().await.is_ok()
                                }
                                Err(_) => false,
                            }
                        }
                        Conn::H1(_) => false,
                    },
                    (None, Some(Conn::H1(s))) => {
                        if s.ready().await.is_err() {
                            false
                        } else {
                            match s.send_request(req).await {
                                Ok(r) => {
                                    let ok = r.status().is_success();
                                    ok && r.into_body().collect().await.is_ok()
                                }
                                Err(_) => false,
                            }
                        }
                    }
                    _ => false,
                };
                if !ok && shared.is_none() {
                    own = connect(&target, false).await.ok();
                }
                let took = due.elapsed();
                let mut r = results.lock().await;
                if due >= start + warmup {
                    if ok {
                        r.0.push(took.as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                    if ok {
                        r.1 += 1;
                    } else {
                        r.2 += 1;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().saturating_sub(warmup);
    let (mut lat, ok, errors) = Arc::try_unwrap(results)
        .map_err(|_| anyhow::anyhow!("workers still running"))?
        .into_inner();
    lat.sort_unstable();
    let pct = |p: f64| -> u32 {
        if lat.is_empty() {
            return 0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i]
    };
    let out = serde_json::json!({
        "sent": ok + errors,
        "ok": ok,
        "errors": errors,
        "achieved_rps": (ok + errors) as f64 / elapsed.as_secs_f64(),
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": lat.last().copied().unwrap_or(0),
    });
    println!("{out}");
    Ok(())
}
