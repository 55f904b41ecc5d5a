//! End-to-end tests of the data plane: real `edge-agent` processes on loopback, real mTLS
//! between them, real backends. Each test builds its own sites.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use multimesh_core::identity;
use multimesh_core::identity::SiteId;
use multimesh_core::tls::{SiteTls, client_config};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PAY: &str = "payment.shop.svc.clusterset.local:8080";

fn agent_toml(extra: &str) -> String {
    format!("admin = \"127.0.0.1:0\"\n{extra}\n[routes]\nfile = \"routes.yaml\"\n")
}

fn local(name: &str, port: u16, upstream: std::net::SocketAddr) -> String {
    format!(
        "[[local]]\nname = \"{name}\"\nnamespace = \"shop\"\nports = [{{ port = {port}, upstream = \"{upstream}\" }}]\n"
    )
}

/// A site serving `payment` (HTTP on 8080) from `backend`, admitting `consumers`.
fn payment_site(
    pki: &Pki,
    root: &std::path::Path,
    site: &str,
    backend: &Backend,
    consumers: &str,
) -> Agent {
    payment_site_on(pki, root, site, backend, consumers, "127.0.0.1:0")
}

/// [`payment_site`] with its ingress on `ingress`.
fn payment_site_on(
    pki: &Pki,
    root: &std::path::Path,
    site: &str,
    backend: &Backend,
    consumers: &str,
    ingress: &str,
) -> Agent {
    Agent::write_routes(
        root,
        site,
        &format!(
            "services:\n- {{name: payment, namespace: shop, ports: [{{port: 8080}}], destinations: [{{site: {site}}}], consumers: [{consumers}]}}\n"
        ),
    );
    Agent::start(
        pki,
        root,
        site,
        &agent_toml(&format!(
            "ingress = \"{ingress}\"\n{}",
            local("payment", 8080, backend.addr)
        )),
    )
}

/// Routes for a caller site: `payment` served by the given (site, weight, ingress) list.
fn payment_routes(dests: &[(&str, u32, String)]) -> String {
    let d: Vec<String> = dests
        .iter()
        .map(|(s, w, a)| format!("{{site: {s}, weight: {w}, addresses: ['{a}']}}"))
        .collect();
    format!(
        "services:\n- {{name: payment, namespace: shop, ports: [{{port: 8080}}], destinations: [{}]}}\n",
        d.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_on_b_reaches_a_over_http1_h2_grpc_and_tcp() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let pay = http_backend("a").await;
    let ledger = http_backend("a").await;
    let grpc = grpc_backend().await;
    let db = tcp_echo("a").await;
    Agent::write_routes(
        root,
        "a",
        "services:
- {name: payment, namespace: shop, ports: [{port: 8080, protocol: http}], destinations: [{site: a}], consumers: [b]}
- {name: ledger, namespace: shop, ports: [{port: 9090, protocol: http2}], destinations: [{site: a}]}
- {name: health, namespace: shop, ports: [{port: 50051, protocol: grpc}], destinations: [{site: a}], consumers: [b]}
- {name: db, namespace: shop, ports: [{port: 5432, protocol: tcp}], destinations: [{site: a}]}
",
    );
    let a = Agent::start(
        &pki,
        root,
        "a",
        &agent_toml(&format!(
            "ingress = \"127.0.0.1:0\"\n{}{}{}{}",
            local("payment", 8080, pay.addr),
            local("ledger", 9090, ledger.addr),
            local("health", 50051, grpc.addr),
            local("db", 5432, db.addr)
        )),
    );
    let ai = a.ingress();
    let remote = |site: &str| {
        format!(
            "services:
- {{name: payment, namespace: shop, ports: [{{port: 8080}}], destinations: [{{site: a, addresses: ['{ai}']}}]}}
- {{name: ledger, namespace: shop, ports: [{{port: 9090, protocol: http2}}], destinations: [{{site: a, addresses: ['{ai}']}}]}}
- {{name: health, namespace: shop, ports: [{{port: 50051, protocol: grpc}}], destinations: [{{site: a, addresses: ['{ai}']}}]}}
- {{name: db, namespace: shop, ports: [{{port: 5432, protocol: tcp}}], destinations: [{{site: a, addresses: ['{ai}']}}]}}
# {site}
"
        )
    };
    Agent::write_routes(root, "b", &remote("b"));
    let b = Agent::start(
        &pki,
        root,
        "b",
        &agent_toml(
            "threads = 2\negress_http = \"127.0.0.1:0\"\n[[egress_tcp]]\nlisten = \"127.0.0.1:0\"\nservice = \"db\"\nnamespace = \"shop\"\nport = 5432\n",
        ),
    );
    let egress = b.egress();
    let h1 = client_h1();

    // HTTP/1.1, routed by Host; the trace context and the body cross both agents.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (s, h, body) = request(
        &h1,
        "POST",
        &format!("http://{egress}/pay?x=1"),
        &[("host", PAY), ("traceparent", tp)],
        "card=4242",
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{body}\n{}\n{}", b.log(), a.log());
    assert_eq!(served_site(&body), "a");
    assert!(body.contains("version=HTTP/1.1 path=/pay"), "{body}");
    assert!(body.contains(&format!("traceparent={tp}")), "{body}");
    assert!(body.contains("body=card=4242"), "{body}");
    assert!(body.contains(&format!("host={PAY}")), "{body}");
    assert_eq!(
        h.get("x-multimesh-served-by").map(String::as_str),
        Some("a")
    );

    // x-multimesh-destination wins over Host (what the meshes set for a remote share).
    let (s, _, body) = get(
        &h1,
        &format!("http://{egress}/"),
        &[
            ("host", "payment.shop.svc.cluster.local"),
            (
                "x-multimesh-destination",
                "payment.shop.svc.clusterset.local",
            ),
        ],
    )
    .await
    .unwrap();
    assert_eq!((s, served_site(&body)), (200, "a"), "{body}");

    // A call to a Linkerd mirror Service (`NAME-clusterset`, selector-less, with Endpoints at
    // this edge agent) arrives with the Host its caller used for the mirror.
    for host in [
        "payment-clusterset.shop.svc.cluster.local:8080",
        "payment-clusterset.shop.svc.cluster.local",
        "payment-clusterset.shop",
    ] {
        let (s, _, body) = get(&h1, &format!("http://{egress}/"), &[("host", host)])
            .await
            .unwrap();
        assert_eq!((s, served_site(&body)), (200, "a"), "{host}: {body}");
    }

    // HTTP/2 (h2c from the caller, h2c to the workload).
    let (s, _, body) = get(
        &client_h2c(),
        &format!("http://{egress}/ledger"),
        &[(
            "x-multimesh-destination",
            "ledger.shop.svc.clusterset.local:9090",
        )],
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{body}");
    assert!(
        body.contains("site=a version=HTTP/2.0 path=/ledger"),
        "{body}"
    );

    // gRPC, trailers and all.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{egress}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::with_interceptor(
        channel,
        |mut req: tonic::Request<()>| {
            req.metadata_mut().insert(
                "x-multimesh-destination",
                "health.shop.svc.clusterset.local:50051".parse().unwrap(),
            );
            Ok(req)
        },
    );
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "multimesh.demo".into(),
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().status, 1, "SERVING");
    let missing = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "no.such.service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "gRPC status crosses");
    // The agent's own refusals reach a gRPC caller as gRPC statuses with the agent's words
    // (not an HTTP status the client has to guess from), and keep x-multimesh-error.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{egress}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut nowhere = tonic_health::pb::health_client::HealthClient::with_interceptor(
        channel,
        |mut req: tonic::Request<()>| {
            req.metadata_mut().insert(
                "x-multimesh-destination",
                "nope.shop.svc.clusterset.local:50051".parse().unwrap(),
            );
            Ok(req)
        },
    );
    let refused = nowhere
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    assert_eq!(
        refused.message(),
        "multimesh: no route for shop/nope",
        "{refused:?}"
    );
    assert_eq!(
        refused.metadata().get("x-multimesh-error").unwrap(),
        "unknown-service"
    );

    // Raw TCP through an HTTP/2 CONNECT tunnel.
    let mut tcp = tokio::net::TcpStream::connect(b.bound.egress_tcp[0])
        .await
        .unwrap();
    tcp.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tcp.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"a:ping");
    tcp.write_all(b"again").await.unwrap();
    let n = tcp.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"a:again");
    drop(tcp);

    // Unknown services and bad hosts get clear errors from the agent itself.
    let (s, h, body) = get(
        &h1,
        &format!("http://{egress}/"),
        &[("host", "nope.shop.svc.clusterset.local")],
    )
    .await
    .unwrap();
    assert_eq!(s, 404);
    assert_eq!(h["x-multimesh-error"], "unknown-service", "{body}");
    let (s, h, _) = get(&h1, &format!("http://{egress}/"), &[("host", "localhost")])
        .await
        .unwrap();
    assert_eq!(
        (s, h["x-multimesh-error"].as_str()),
        (400, "bad-destination")
    );

    // All of it over multiplexed links from b to a: one per data-plane thread of b that
    // carried calls (b has two), not one per call or per caller connection (there were at
    // least four of those: HTTP/1.1, h2c, gRPC and TCP).
    let links = a
        .metric(
            "multimesh_edge_active_connections",
            &["listener=\"ingress\""],
        )
        .await;
    assert!((1.0..=2.0).contains(&links), "{links} links from b to a");
    assert!(
        a.metric(
            "multimesh_edge_requests_total",
            &[
                "direction=\"ingress\"",
                "service=\"shop/payment\"",
                "destination=\"b\""
            ]
        )
        .await
            >= 2.0
    );

    // Site c is outside payment's consumer scope: refused at a's ingress.
    Agent::write_routes(root, "c", &remote("c"));
    let c = Agent::start(
        &pki,
        root,
        "c",
        &agent_toml("egress_http = \"127.0.0.1:0\""),
    );
    let served_before = pay.calls.load(Ordering::Relaxed);
    let (s, h, body) = get(&h1, &format!("http://{}/", c.egress()), &[("host", PAY)])
        .await
        .unwrap();
    assert_eq!(s, 403, "{body}");
    assert_eq!(h["x-multimesh-error"], "scope");
    assert!(body.contains("site c may not call shop/payment"), "{body}");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.egress()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut from_c = tonic_health::pb::health_client::HealthClient::with_interceptor(
        channel,
        |mut req: tonic::Request<()>| {
            req.metadata_mut().insert(
                "x-multimesh-destination",
                "health.shop.svc.clusterset.local:50051".parse().unwrap(),
            );
            Ok(req)
        },
    );
    let refused = from_c
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert_eq!(
        refused.message(),
        "multimesh: site c may not call shop/health",
        "{refused:?}"
    );
    assert_eq!(
        pay.calls.load(Ordering::Relaxed),
        served_before,
        "the refused call never reached the workload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_refuses_plaintext_foreign_ca_and_unknown_sites_calls() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let pay = http_backend("a").await;
    let a = payment_site(&pki, root, "a", &pay, "");
    let addr = a.bound.ingress.unwrap();

    // Plaintext HTTP: no answer but a TLS alert, and the connection closes.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: payment.shop\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1"),
        "{buf:?}"
    );

    // A client certificate from a foreign CA (claiming to be site b), trusting the real CA.
    let foreign = Pki::new(&root.join("foreign"));
    let (fc, fk) = foreign.issue("b");
    let tls = SiteTls::new(
        identity::read_certs(&pki.dir.join("ca.pem")).unwrap(),
        identity::read_certs(&fc).unwrap(),
        identity::read_key(&fk).unwrap(),
    )
    .unwrap();
    let cfg = client_config(&tls, SiteId::new(TD, "a", identity::Role::Edge).unwrap()).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("a.site.multimesh.invalid").unwrap();
    let refused = async {
        let mut s = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await?;
        // TLS 1.3: the server's verdict on our certificate arrives with the first read.
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        let mut b = [0u8; 16];
        s.read(&mut b).await
    }
    .await;
    assert!(
        refused.is_err(),
        "foreign-CA client was served: {refused:?}"
    );

    eventually(5, "both refusals counted", || async {
        a.metric("multimesh_edge_tls_failures_total", &["reason=\"not-tls\""])
            .await
            >= 1.0
            && a.metric(
                "multimesh_edge_tls_failures_total",
                &["reason=\"foreign-ca\""],
            )
            .await
                >= 1.0
    })
    .await;
    let log = a.log();
    assert!(log.contains("foreign CA"), "refusal reason logged:\n{log}");
    assert_eq!(pay.calls.load(Ordering::Relaxed), 0);
}

/// Sends `n` GETs for payment through `egress` with `parallel` callers; returns calls per
/// serving site ("error" for failures).
async fn load(egress: std::net::SocketAddr, n: usize, parallel: usize) -> BTreeMap<String, u64> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let c = client_h1();
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            while (next.fetch_add(1, Ordering::Relaxed) as usize) < n {
                let key = match get(&c, &format!("http://{egress}/"), &[("host", PAY)]).await {
                    Ok((200, _, body)) => served_site(&body).to_string(),
                    Ok((s, _, body)) => format!("error {s} {}", body.trim()),
                    Err(e) => format!("error {e}"),
                };
                *seen.entry(key).or_default() += 1;
            }
            seen
        }));
    }
    let mut all = BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *all.entry(k).or_default() += v;
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_between_sites_lands_within_2_points_over_10000_calls() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let (pa, pc) = (http_backend("a").await, http_backend("c").await);
    let a = payment_site(&pki, root, "a", &pa, "");
    let c = payment_site(&pki, root, "c", &pc, "");
    Agent::write_routes(
        root,
        "b",
        &payment_routes(&[("a", 90, a.ingress()), ("c", 10, c.ingress())]),
    );
    let b = Agent::start(
        &pki,
        root,
        "b",
        &agent_toml("egress_http = \"127.0.0.1:0\""),
    );
    let seen = load(b.egress(), 10_000, 16).await;
    let total: u64 = seen.values().sum();
    assert_eq!(total, 10_000);
    assert_eq!(seen.len(), 2, "only sites a and c, no errors: {seen:?}");
    let share_a = seen["a"] as f64 * 100.0 / total as f64;
    eprintln!("90/10 split: {seen:?} -> a {share_a:.2}%");
    assert!(
        (share_a - 90.0).abs() <= 2.0,
        "a got {share_a:.2}%: {seen:?}"
    );
    // The agent's own metrics agree with what the callers saw.
    let from_metrics = b
        .metric(
            "multimesh_edge_requests_total",
            &["direction=\"egress\"", "destination=\"a\""],
        )
        .await;
    assert_eq!(from_metrics as u64, seen["a"]);
}

/// A call nobody answers ends with 504 at the request timeout: at the serving edge when its
/// limit is the shorter, at the calling edge when its own is. Each edge's link then carries
/// the next call, over HTTP/1.1 and h2c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_nobody_answers_ends_at_the_request_timeout_of_either_edge() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let (silent, booking) = (silent_backend().await, http_backend("a").await);
    let service = |name: &str, dest: &str| {
        format!(
            "- {{name: {name}, namespace: shop, ports: [{{port: 8080}}], destinations: [{{site: a{dest}}}]}}\n"
        )
    };
    Agent::write_routes(
        root,
        "a",
        &format!(
            "services:\n{}{}",
            service("payment", ""),
            service("booking", "")
        ),
    );
    let a = Agent::start(
        &pki,
        root,
        "a",
        &agent_toml(&format!(
            "ingress = \"127.0.0.1:0\"\n{}{}[limits]\nrequest_timeout_ms = 400\n",
            local("payment", 8080, silent.addr),
            local("booking", 8080, booking.addr)
        )),
    );
    let to_a = format!(", addresses: ['{}']", a.ingress());
    let callers: Vec<(Agent, u64)> = [("b", 5_000), ("d", 150)]
        .into_iter()
        .map(|(site, limit)| {
            Agent::write_routes(
                root,
                site,
                &format!(
                    "services:\n{}{}",
                    service("payment", &to_a),
                    service("booking", &to_a)
                ),
            );
            let config =
                format!("egress_http = \"127.0.0.1:0\"\n[limits]\nrequest_timeout_ms = {limit}\n");
            (Agent::start(&pki, root, site, &agent_toml(&config)), limit)
        })
        .collect();
    for (caller, limit) in &callers {
        let egress = caller.egress();
        for c in [client_h1(), client_h2c()] {
            let start = std::time::Instant::now();
            let to_payment = [("x-multimesh-destination", PAY)];
            let url = format!("http://{egress}/");
            let call = get(&c, &url, &to_payment);
            let (status, headers, body) = tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .expect("no answer within 10 s")
                .unwrap();
            let took = start.elapsed().as_millis() as u64;
            assert_eq!(status, 504, "{body}");
            assert_eq!(headers["x-multimesh-error"], "timeout", "{body}");
            // The shorter of the two limits ends the call, and not much later.
            let first = (*limit).min(400);
            assert!(
                (first..first + 1_500).contains(&took),
                "504 after {took} ms: {body}"
            );
            let to_booking = [(
                "x-multimesh-destination",
                "booking.shop.svc.clusterset.local:8080",
            )];
            let (status, _, body) = get(&c, &url, &to_booking).await.unwrap();
            assert_eq!((status, served_site(&body)), (200, "a"), "{body}");
        }
    }
    // Every call for payment reached the silent workload.
    assert!(silent.calls.load(Ordering::Relaxed) >= 1);
    assert_eq!(booking.calls.load(Ordering::Relaxed), 4);
}

/// SIGTERM stops an agent promptly although callers hold connections open: one that has sent
/// nothing yet (egress waits to see whether it speaks HTTP/2) and an idle keep-alive one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_an_agent_promptly_with_silent_idle_and_h2c_callers_connected() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let pa = http_backend("a").await;
    let a = payment_site(&pki, root, "a", &pa, "");
    Agent::write_routes(root, "b", &payment_routes(&[("a", 1, a.ingress())]));
    let mut b = Agent::start(
        &pki,
        root,
        "b",
        &agent_toml("egress_http = \"127.0.0.1:0\""),
    );
    let silent = tokio::net::TcpStream::connect(b.egress()).await.unwrap();
    let mut idle = tokio::net::TcpStream::connect(b.egress()).await.unwrap();
    idle.write_all(format!("GET /pay HTTP/1.1\r\nhost: {PAY}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = vec![0u8; 12];
    idle.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "{}", b.log());
    // An h2c caller whose connection stays open after its call.
    let h2c = client_h2c();
    let (s, _, body) = get(
        &h2c,
        &format!("http://{}/pay", b.egress()),
        &[("x-multimesh-destination", PAY)],
    )
    .await
    .unwrap();
    assert_eq!(s, 200, "{body}");
    let took = tokio::task::spawn_blocking(move || {
        let took = b.terminate(Duration::from_secs(20));
        (took, b.log())
    })
    .await
    .unwrap();
    match took {
        (Some(t), _) => assert!(t < Duration::from_secs(3), "stopping took {t:?}"),
        (None, log) => panic!("the agent did not stop within 20 s of SIGTERM:\n{log}"),
    }
    drop((silent, idle, h2c));
}

/// Retry safety. A call goes to another site whenever nothing of it left this agent (the
/// first site's link cannot be opened): a POST too, with its body. Once a request left, only a
/// call that may be sent twice goes on: a POST that timed out at a is not repeated at c (a
/// booking must not be made twice), a GET is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_moves_on_only_when_nothing_of_it_left_or_it_may_be_sent_twice() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let (silent, pc) = (silent_backend().await, http_backend("c").await);
    let a = payment_site(&pki, root, "a", &silent, "");
    let c = payment_site(&pki, root, "c", &pc, "");
    let h1 = client_h1();

    // Site x's address has nobody listening: nothing of the call leaves b.
    let nobody = addr_below_ephemeral_range();
    Agent::write_routes(
        root,
        "b",
        &payment_routes(&[("x", 1_000_000, nobody), ("c", 1, c.ingress())]),
    );
    let b = Agent::start(
        &pki,
        root,
        "b",
        &agent_toml("egress_http = \"127.0.0.1:0\""),
    );
    for i in 0..3 {
        let card = format!("card={i}");
        let (s, _, body) = request(
            &h1,
            "POST",
            &format!("http://{}/pay", b.egress()),
            &[("host", PAY)],
            &card,
        )
        .await
        .unwrap();
        assert_eq!((s, served_site(&body)), (200, "c"), "{body}\n{}", b.log());
        assert!(
            body.contains(&format!("body={card}")),
            "the body moved with the call: {body}"
        );
    }
    assert!(
        b.log().contains("destination=x"),
        "x was tried first:\n{}",
        b.log()
    );

    // Site a accepts the call and never answers: d gives up after 300 ms.
    Agent::write_routes(
        root,
        "d",
        &payment_routes(&[("a", 1_000_000, a.ingress()), ("c", 1, c.ingress())]),
    );
    let d = Agent::start(
        &pki,
        root,
        "d",
        &agent_toml("egress_http = \"127.0.0.1:0\"\n[limits]\nrequest_timeout_ms = 300"),
    );
    let served_at_c = pc.calls.load(Ordering::Relaxed);
    let (s, h, body) = request(
        &h1,
        "POST",
        &format!("http://{}/pay", d.egress()),
        &[("host", PAY)],
        "card=9",
    )
    .await
    .unwrap();
    assert_eq!(
        (s, h["x-multimesh-error"].as_str()),
        (504, "timeout"),
        "{body}\n{}",
        d.log()
    );
    assert_eq!(
        pc.calls.load(Ordering::Relaxed),
        served_at_c,
        "a POST that left for a was repeated at c"
    );
    let (s, _, body) = get(&h1, &format!("http://{}/", d.egress()), &[("host", PAY)])
        .await
        .unwrap();
    assert_eq!(
        (s, served_site(&body)),
        (200, "c"),
        "a GET moves on: {body}\n{}",
        d.log()
    );
    assert!(
        silent.calls.load(Ordering::Relaxed) >= 1,
        "a got the calls first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_sites_edge_fails_over_to_c_and_a_is_used_again_when_back() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let (pa, pc) = (http_backend("a").await, http_backend("c").await);
    // a is killed and comes back on the same address: keep that address out of the ephemeral
    // range, where the callers' own outbound connections could take it while a is down.
    let a_addr = addr_below_ephemeral_range();
    let mut a = payment_site_on(&pki, root, "a", &pa, "", &a_addr);
    let c = payment_site(&pki, root, "c", &pc, "");
    Agent::write_routes(
        root,
        "b",
        &payment_routes(&[("a", 3, a_addr.clone()), ("c", 1, c.ingress())]),
    );
    let b = Agent::start(
        &pki,
        root,
        "b",
        &agent_toml(
            "egress_http = \"127.0.0.1:0\"\n[outlier]\nconsecutive_failures = 3\nbase_ejection_ms = 500\nmax_ejection_ms = 1000\n",
        ),
    );
    let egress = b.egress();
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<std::sync::Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut callers = Vec::new();
    for _ in 0..8 {
        let (stop, counts) = (stop.clone(), counts.clone());
        callers.push(tokio::spawn(async move {
            let c = client_h1();
            while !stop.load(Ordering::Relaxed) {
                let key = match get(&c, &format!("http://{egress}/"), &[("host", PAY)]).await {
                    Ok((200, _, body)) => served_site(&body).to_string(),
                    Ok((s, _, _)) => format!("error-{s}"),
                    Err(_) => "error-io".to_string(),
                };
                *counts.lock().unwrap().entry(key).or_default() += 1;
            }
        }));
    }
    let snapshot = || counts.lock().unwrap().clone();
    let n = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    assert!(
        within(10, || async {
            let s = snapshot();
            n(&s, "a") > 200 && n(&s, "c") > 50
        })
        .await,
        "a and c do not both serve: {:?}\n{}",
        snapshot(),
        b.log()
    );

    a.kill();
    let at_kill = snapshot();
    // c takes everything: wait for 1000 more calls on c.
    let c_before = n(&at_kill, "c");
    assert!(
        within(20, || async { n(&snapshot(), "c") > c_before + 1000 }).await,
        "c did not take over: at the kill {at_kill:?}, now {:?}\n{}",
        snapshot(),
        b.log()
    );
    let during = snapshot();
    let a_after_kill = n(&during, "a") - n(&at_kill, "a");
    assert!(
        a_after_kill < 50,
        "a kept serving after its death: at the kill {at_kill:?}, then {during:?}"
    );

    // a comes back on the same address and gets calls again.
    let a_again = payment_site_on(&pki, root, "a", &pa, "", &a_addr);
    let a_before = n(&snapshot(), "a");
    assert!(
        within(20, || async { n(&snapshot(), "a") > a_before + 200 }).await,
        "a is not used again: {a_before} calls on a before its restart, now {:?}\n{}",
        snapshot(),
        b.log()
    );
    stop.store(true, Ordering::Relaxed);
    for t in callers {
        t.await.unwrap();
    }
    let end = snapshot();
    let errors: u64 = end
        .iter()
        .filter(|(k, _)| k.starts_with("error"))
        .map(|(_, v)| v)
        .sum();
    let total: u64 = end.values().sum();
    eprintln!("failover: {end:?}");
    // Idempotent calls are retried on c, so the switch should cost (almost) nothing; bound it.
    assert!(
        errors * 1000 <= total,
        "{errors} errors of {total}: {end:?}\n{}",
        b.log()
    );
    assert!(
        b.metric("multimesh_edge_ejections_total", &["destination=\"a\""])
            .await
            >= 1.0,
        "a was not ejected:\n{}",
        b.log()
    );
    drop(a_again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_changes_apply_under_load_without_failing_a_call_and_bad_edits_change_nothing() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let (pa, pc) = (http_backend("a").await, http_backend("c").await);
    let a = payment_site(&pki, root, "a", &pa, "");
    let c = payment_site(&pki, root, "c", &pc, "");
    let only_a = payment_routes(&[("a", 1, a.ingress())]);
    Agent::write_routes(root, "b", &only_a);
    let b = Agent::start(
        &pki,
        root,
        "b",
        &agent_toml("egress_http = \"127.0.0.1:0\""),
    );
    let egress = b.egress();
    let background = tokio::spawn(load(egress, 6_000, 8));
    tokio::time::sleep(Duration::from_millis(300)).await;
    Agent::write_routes(
        root,
        "b",
        &payment_routes(&[("a", 1, a.ingress()), ("c", 1, c.ingress())]),
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    Agent::write_routes(root, "b", &payment_routes(&[("c", 1, c.ingress())]));
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A bad edit: refused, previous table kept.
    Agent::write_routes(root, "b", "services: [{name: payment, ports: []}]\n");
    let seen = background.await.unwrap();
    eprintln!("route changes under load: {seen:?}");
    assert!(
        seen.keys().all(|k| k == "a" || k == "c"),
        "failed calls: {seen:?}"
    );
    assert_eq!(seen.values().sum::<u64>(), 6_000);
    assert!(seen.get("c").copied().unwrap_or(0) > 0, "{seen:?}");
    eventually(5, "bad edit counted", || async {
        b.metric("multimesh_edge_route_rejects_total", &[]).await >= 1.0
    })
    .await;
    let (s, _, body) = get(&client_h1(), &format!("http://{egress}/"), &[("host", PAY)])
        .await
        .unwrap();
    assert_eq!(
        (s, served_site(&body)),
        (200, "c"),
        "still on the last good table"
    );
    assert!(
        b.log().contains("services[0].ports"),
        "the refusal names the field"
    );
}

/// Sites a (payment; ingress and egress), c (the edge node's parent; ingress on `c_host`) and
/// edge node e (notification from `notify`; started inside `ns` when given), with their route
/// tables: a reaches notification and the unknown site x through c, e reaches payment at a.
fn edge_node_sites(
    pki: &Pki,
    root: &std::path::Path,
    pay: &Backend,
    notify: &Backend,
    c_host: &str,
    ns: Option<&netns::NetNs>,
) -> (Agent, Agent, Agent) {
    Agent::write_routes(root, "a", "services: []\n");
    let a = Agent::start(
        pki,
        root,
        "a",
        &agent_toml(&format!(
            "ingress = \"127.0.0.1:0\"\negress_http = \"127.0.0.1:0\"\n{}",
            local("payment", 8080, pay.addr)
        )),
    );
    // c's table is on disk before c starts, so e's calls to a through c cannot race its reload.
    let ai = a.ingress();
    Agent::write_routes(
        root,
        "c",
        &format!(
            "services:
- {{name: payment, namespace: shop, ports: [{{port: 8080}}], destinations: [{{site: a, addresses: ['{ai}']}}]}}
- {{name: notification, namespace: shop, ports: [{{port: 8080}}], destinations: [{{site: e}}]}}
"
        ),
    );
    let c = Agent::start(
        pki,
        root,
        "c",
        &agent_toml(&format!("ingress = \"{c_host}:0\"\nchildren = [\"e\"]")),
    );
    let ci = c.ingress();
    Agent::write_routes(
        root,
        "a",
        &format!(
            "services:
- {{name: payment, namespace: shop, ports: [{{port: 8080}}], destinations: [{{site: a}}]}}
- {{name: notification, namespace: shop, ports: [{{port: 8080}}], destinations: [{{site: e, via: c, addresses: ['{ci}']}}]}}
- {{name: ghost, namespace: shop, ports: [{{port: 8080}}], destinations: [{{site: x, via: c, addresses: ['{ci}']}}]}}
"
        ),
    );
    Agent::write_routes(
        root,
        "e",
        "services:
- {name: payment, namespace: shop, ports: [{port: 8080}], destinations: [{site: a}]}
- {name: notification, namespace: shop, ports: [{port: 8080}], destinations: [{site: e}]}
",
    );
    let e = Agent::start_in(
        pki,
        root,
        "e",
        &agent_toml(&format!(
            "egress_http = \"127.0.0.1:0\"\n{}\n[parent]\nsite = \"c\"\naddress = \"{ci}\"\n",
            local("notification", 8080, notify.addr)
        )),
        ns,
    );
    assert!(
        e.bound.ingress.is_none(),
        "an edge node listens for no peer"
    );
    (a, c, e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_node_without_a_listening_port_is_reached_through_its_outbound_link() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let pay = http_backend("a").await;
    let notify = http_backend("e").await;
    // a serves payment; c is the edge node's parent; e (edge node) serves notification.
    let (a, c, e) = edge_node_sites(&pki, root, &pay, &notify, "127.0.0.1", None);
    eventually(10, "edge node ready (parent link up)", || async {
        e.admin_get("/readyz").await.0 == 200
    })
    .await;
    let h1 = client_h1();
    eventually(10, "a reaches e through c", || async {
        matches!(
            get(&h1, &format!("http://{}/notify", a.egress()), &[("host", "notification.shop.svc.clusterset.local")]).await,
            Ok((200, _, ref body)) if served_site(body) == "e"
        )
    })
    .await;
    let (s, h, body) = get(
        &h1,
        &format!("http://{}/notify", a.egress()),
        &[("host", "notification.shop.svc.clusterset.local")],
    )
    .await
    .unwrap();
    assert_eq!((s, served_site(&body)), (200, "e"), "{body}");
    assert_eq!(h["x-multimesh-served-by"], "e");
    // And the node calls out through the same parent.
    let (s, _, body) = get(&h1, &format!("http://{}/pay", e.egress()), &[("host", PAY)])
        .await
        .unwrap();
    assert_eq!(
        (s, served_site(&body)),
        (200, "a"),
        "{body}\n{}\n{}",
        e.log(),
        c.log()
    );
    // c relays only to and from its own edge nodes: not an open relay.
    let (s, h, body) = get(
        &h1,
        &format!("http://{}/", a.egress()),
        &[("host", "ghost.shop.svc.clusterset.local")],
    )
    .await
    .unwrap();
    assert_eq!(
        (s, h["x-multimesh-error"].as_str()),
        (403, "relay-refused"),
        "{body}"
    );
    // The edge node goes away: the parent notices, answers for it with a clean error, and
    // still stops on SIGTERM (a lock taken twice once hung the parent here).
    let mut e = e;
    e.kill();
    eventually(5, "c sees the edge node link go", || async {
        c.log().contains("edge node link closed") || c.log().contains("edge node link failed")
    })
    .await;
    let (s, _, body) = get(
        &h1,
        &format!("http://{}/notify", a.egress()),
        &[("host", "notification.shop.svc.clusterset.local")],
    )
    .await
    .unwrap();
    assert!(s >= 500, "{s} {body}");
    assert_eq!(c.admin_get("/healthz").await.0, 200, "{}", c.log());
}

/// The edge node in a network namespace of its own, linked to the parent's network by one veth
/// pair: nothing in the node listens beyond its own loopback, its only connection out is the
/// link to c, and still a reaches its service and it reaches a's. Needs root (see netns.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_node_in_its_own_network_namespace_is_reached_only_through_its_outbound_link() {
    let ns = netns::NetNs::create();
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let pay = http_backend("a").await;
    // e's workload lives inside the namespace, on its loopback.
    let notify = http_backend_on("e", ns.listen_loopback());
    // c, the parent, listens on its end of the veth pair: the one address e can reach.
    let (a, c, e) = edge_node_sites(
        &pki,
        root,
        &pay,
        &notify,
        &ns.outside.to_string(),
        Some(&ns),
    );
    let ci = c.ingress();
    let e_admin = e.bound.admin.unwrap();
    assert!(
        within(10, || async {
            matches!(get_in(&ns, e_admin, "/readyz", "admin").await, Ok((200, _)))
        })
        .await,
        "edge node not ready (parent link down?):\n{}",
        e.log()
    );

    // a (outside) reaches e's service through c.
    let h1 = client_h1();
    let notify_host = [("host", "notification.shop.svc.clusterset.local")];
    let url = format!("http://{}/notify", a.egress());
    assert!(
        within(10, || async {
            matches!(get(&h1, &url, &notify_host).await, Ok((200, _, ref b)) if served_site(b) == "e")
        })
        .await,
        "a does not reach e through c: {:?}\n{}\n{}",
        get(&h1, &url, &notify_host).await,
        c.log(),
        e.log()
    );
    let (s, h, body) = get(&h1, &url, &notify_host).await.unwrap();
    assert_eq!(
        (s, served_site(&body), h["x-multimesh-served-by"].as_str()),
        (200, "e", "e")
    );
    // e (inside) reaches a's service through the same link.
    let (s, body) = get_in(&ns, e.egress(), "/pay", PAY).await.unwrap();
    assert_eq!((s, served_site(&body)), (200, "a"), "{body}\n{}", e.log());

    // The isolation itself, read off the namespace's own network stack: every listener is on
    // its loopback (the workload, e's egress and admin), none on the address its network sees.
    let listeners = ns.tcp_sockets(true);
    assert_eq!(listeners.len(), 3, "{listeners:?}");
    assert!(
        listeners
            .iter()
            .all(|(local, _)| local.starts_with("127.0.0.1:")),
        "something in the edge node listens beyond its loopback: {listeners:?}"
    );
    // ... and every connection leaving the namespace goes to c's ingress: the reverse link c
    // calls in on, and the ordinary link carrying e's own calls out (an HTTP/2 connection has
    // one client; each direction has its own).
    let outbound: Vec<_> = ns
        .tcp_sockets(false)
        .into_iter()
        .filter(|(local, _)| !local.starts_with("127.0.0.1:"))
        .collect();
    assert_eq!(
        outbound
            .iter()
            .map(|(_, peer)| peer.as_str())
            .collect::<Vec<_>>(),
        [ci.as_str(), ci.as_str()],
        "the edge node's connections out: {outbound:?}"
    );
    // From outside, the node's address answers on none of its ports.
    let inside = |p: u16| std::net::SocketAddr::from((ns.inside, p));
    for port in [notify.addr.port(), e_admin.port(), e.egress().port()] {
        assert!(
            std::net::TcpStream::connect_timeout(&inside(port), Duration::from_millis(500))
                .is_err(),
            "port {port} of the edge node is reachable from outside"
        );
    }
    drop(e);
}

/// A caller with no mesh, on another host of a plain site (its own network namespace, its own
/// resolv.conf naming the site's edge agent as its name server), calls a remote service by its
/// clusterset name with curl: no Host header of its own, no proxy variable. The system resolver
/// gets the edge agent's address from its DNS responder, curl connects to the service port
/// there, and the agent routes the call to the site serving it. Unknown names get NXDOMAIN and
/// other zones are refused. Needs root (see netns.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_no_mesh_reaches_a_remote_service_by_its_clusterset_name() {
    let ns = netns::NetNs::create();
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let pay = http_backend("a").await;
    let a = payment_site(&pki, root, "a", &pay, "b");
    Agent::write_routes(
        root,
        "b",
        &format!(
            "services:\n- {{name: payment, namespace: shop, ports: [{{port: 8080}}], destinations: [{{site: a, addresses: ['{}']}}]}}\n",
            a.ingress()
        ),
    );
    // b's agent answers DNS and takes calls on the site network's address (the veth end the
    // caller's host can reach).
    let site_ip = ns.outside;
    let b = Agent::start(
        &pki,
        root,
        "b",
        &agent_toml(&format!(
            "[clusterset]\ndns = \"{site_ip}:53\"\naddress = \"{site_ip}\"\n"
        )),
    );
    assert_eq!(b.bound_dns(), Some(format!("{site_ip}:53")));
    // The caller's host: resolv.conf names b's agent (ip netns exec mounts it over /etc).
    let etc = std::path::PathBuf::from(format!("/etc/netns/{}", ns.name));
    std::fs::create_dir_all(&etc).unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(etc.clone());
    std::fs::write(
        etc.join("resolv.conf"),
        format!("nameserver {site_ip}\noptions timeout:2 attempts:1\n"),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = ns.command(args[0]).args(&args[1..]).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let url = "http://payment.shop.svc.clusterset.local:8080/pay";
    let ok = within(10, || async {
        let (code, body, _) = run(&["curl", "-sS", "--max-time", "5", url]);
        code == Some(0) && served_site(&body) == "a"
    })
    .await;
    assert!(
        ok,
        "curl {url} from the caller's host: {:?}\n{}",
        run(&["curl", "-sS", "--max-time", "5", "-v", url]),
        b.log()
    );
    // What the system resolver sees.
    let (code, out, _) = run(&["getent", "ahostsv4", "payment.shop.svc.clusterset.local"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with(&site_ip.to_string()), "{out}");
    // A name nobody exports: NXDOMAIN, so curl fails to resolve it (exit 6), nothing is called.
    let served = pay.calls.load(Ordering::Relaxed);
    let (code, _, err) = run(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://ghost.shop.svc.clusterset.local:8080/",
    ]);
    assert_eq!(code, Some(6), "{err}");
    assert_eq!(pay.calls.load(Ordering::Relaxed), served);
    // Another zone is never answered.
    let (code, _, _) = run(&["getent", "hosts", "example.com"]);
    assert_ne!(code, Some(0));
    drop(b);
}
