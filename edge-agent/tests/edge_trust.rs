//! The data plane's trust model, attacked with real `edge-agent` processes: who may link as an
//! edge node, whose scope a relayed call is admitted by, what an ingress serves, who may speak
//! for another site, and which certificate is a data-plane identity.
//!
//! Each test names the property it protects.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;

const PAY: &str = "payment.shop.svc.clusterset.local";

/// The GET status and `x-multimesh-error` of a call for `host` through `egress`.
async fn call(egress: std::net::SocketAddr, host: &str, extra: &[(&str, &str)]) -> (u16, String) {
    let mut headers = vec![("host", host)];
    headers.extend_from_slice(extra);
    match get(&client_h1(), &format!("http://{egress}/"), &headers).await {
        Ok((s, h, body)) => (
            s,
            format!(
                "{} {body}",
                h.get("x-multimesh-error").cloned().unwrap_or_default()
            ),
        ),
        Err(e) => (0, e),
    }
}

/// Site a serving `payment` from `pay` to `consumers` (a YAML list body), with an ingress.
fn site_a(pki: &Pki, root: &std::path::Path, pay: &Backend, consumers: &str) -> Agent {
    Agent::write_routes(
        root,
        "a",
        &format!(
            "services:\n- {{name: payment, namespace: shop, ports: [{{port: 8080}}], destinations: [{{site: a}}], consumers: [{consumers}]}}\n"
        ),
    );
    Agent::start(
        pki,
        root,
        "a",
        &agent_toml(&format!(
            "ingress = \"127.0.0.1:0\"\n{}",
            local("payment", 8080, pay.addr)
        )),
    )
}

/// An edge node `site` behind parent `c` at `parent`, calling payment (at a) out through it.
fn edge_node(pki: &Pki, root: &std::path::Path, site: &str, parent: &str, extra: &str) -> Agent {
    Agent::write_routes(
        root,
        site,
        "services:\n- {name: payment, namespace: shop, ports: [{port: 8080}], destinations: [{site: a}]}\n",
    );
    Agent::start(
        pki,
        root,
        site,
        &agent_toml(&format!(
            "egress_http = \"127.0.0.1:0\"\n{extra}\n[parent]\nsite = \"c\"\naddress = \"{parent}\"\n"
        )),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_not_configured_as_a_child_is_not_adopted_as_an_edge_node() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let pay = http_backend("a").await;
    let a = site_a(&pki, root, &pay, "");
    Agent::write_routes(
        root,
        "c",
        &format!(
            "services:\n- {{name: payment, namespace: shop, ports: [{{port: 8080}}], destinations: [{{site: a, addresses: ['{}']}}]}}\n",
            a.ingress()
        ),
    );
    // c parents no edge node at all; x holds a certificate of the federation CA and dials in.
    let c = Agent::start(&pki, root, "c", &agent_toml("ingress = \"127.0.0.1:0\""));
    let x = edge_node(&pki, root, "x", &c.ingress(), "");
    let refused = within(10, || async {
        call(x.egress(), &format!("{PAY}:8080"), &[]).await.0 == 200
            || c.log().contains("edge node link refused")
    })
    .await;
    assert!(refused, "neither relayed nor refused:\n{}", c.log());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, why) = call(x.egress(), &format!("{PAY}:8080"), &[]).await;
    assert_ne!(s, 200, "c relayed x's call under its own identity: {why}");
    assert!(
        c.log()
            .contains("not configured as an edge node of this site"),
        "the refusal says why:\n{}",
        c.log()
    );
    assert_eq!(pay.calls.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// Replaces `from` by `to` in `agent`'s config file, atomically (as an editor or the kubelet
/// does: the agent, reading it again, sees the old file or the new one).
fn edit_config(agent: &Agent, from: &str, to: &str) {
    let path = agent.dir.join("edge.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from:?} not in {text}");
    let next = agent.dir.join(".edge.toml.next");
    std::fs::write(&next, text.replacen(from, to, 1)).unwrap();
    std::fs::rename(&next, &path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_node_joins_and_leaves_a_running_parent_without_a_restart() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let pay = http_backend("a").await;
    let a = site_a(&pki, root, &pay, "");
    Agent::write_routes(
        root,
        "c",
        &format!(
            "services:\n- {{name: payment, namespace: shop, ports: [{{port: 8080}}], destinations: [{{site: a, addresses: ['{}']}}]}}\n",
            a.ingress()
        ),
    );
    let c = Agent::start(
        &pki,
        root,
        "c",
        &agent_toml("ingress = \"127.0.0.1:0\"\nconfig_reload_ms = 200\nchildren = []"),
    );
    // e is not (yet) c's edge node: its link is refused and its calls go nowhere.
    let e = edge_node(&pki, root, "e", &c.ingress(), "");
    eventually(10, "c refuses e's link", || async {
        c.log().contains("edge node link refused")
    })
    .await;
    assert_ne!(call(e.egress(), &format!("{PAY}:8080"), &[]).await.0, 200);

    // c's operator lists e: e links and its calls are relayed, with no restart of c.
    edit_config(&c, "children = []", "children = [\"e\"]");
    eventually(20, "e's call is relayed by c to a", || async {
        call(e.egress(), &format!("{PAY}:8080"), &[]).await.0 == 200
    })
    .await;
    assert!(c.log().contains("taken without a restart"), "{}", c.log());

    // A file that does not load changes nothing: e stays linked.
    edit_config(&c, "children = [\"e\"]", "children = [\"E!\"]");
    eventually(10, "c refuses the bad file, naming the field", || async {
        let log = c.log();
        log.contains("is refused: nothing changes") && log.contains("children[0]")
    })
    .await;
    assert_eq!(call(e.egress(), &format!("{PAY}:8080"), &[]).await.0, 200);

    // e is removed: its link is closed, it cannot link again, and its calls stop.
    edit_config(&c, "children = [\"E!\"]", "children = []");
    eventually(10, "c closes e's link", || async {
        c.log().contains("edge link closed by this side")
    })
    .await;
    let served = pay.calls.load(std::sync::atomic::Ordering::Relaxed);
    let refusals = |log: String| log.matches("edge node link refused").count();
    let before = refusals(c.log());
    eventually(10, "e's next link is refused", || async {
        refusals(c.log()) > before
    })
    .await;
    assert_ne!(call(e.egress(), &format!("{PAY}:8080"), &[]).await.0, 200);
    assert_eq!(
        pay.calls.load(std::sync::atomic::Ordering::Relaxed),
        served,
        "no call of e reached a after e was removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_out_of_an_edge_node_is_admitted_by_the_destinations_scope_for_the_node() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let pay = http_backend("a").await;
    // a exports payment to c only: not to c's edge node e.
    let a = site_a(&pki, root, &pay, "c");
    Agent::write_routes(
        root,
        "c",
        &format!(
            "services:\n- {{name: payment, namespace: shop, ports: [{{port: 8080}}], destinations: [{{site: a, addresses: ['{}'], consumers: [c]}}]}}\n",
            a.ingress()
        ),
    );
    let c = Agent::start(
        &pki,
        root,
        "c",
        &agent_toml("ingress = \"127.0.0.1:0\"\nchildren = [\"e\"]"),
    );
    let e = edge_node(&pki, root, "e", &c.ingress(), "");
    eventually(10, "e linked to c", || async {
        e.admin_get("/readyz").await.0 == 200
    })
    .await;
    let (s, why) = call(e.egress(), &format!("{PAY}:8080"), &[]).await;
    assert_eq!(
        (s, why.split_whitespace().next().unwrap_or("")),
        (403, "scope"),
        "e reached a service not exported to it: {why}\n{}",
        c.log()
    );
    assert_eq!(pay.calls.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_serves_only_what_its_own_site_exports() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let secret = http_backend("a").await;
    // a runs `ledger` for itself and does not export it; b does export a `ledger`.
    Agent::write_routes(
        root,
        "a",
        "services:\n- {name: ledger, namespace: shop, ports: [{port: 8080}], destinations: [{site: b, addresses: ['127.0.0.1:9']}]}\n",
    );
    let a = Agent::start(
        &pki,
        root,
        "a",
        &agent_toml(&format!(
            "ingress = \"127.0.0.1:0\"\n{}",
            local("ledger", 8080, secret.addr)
        )),
    );
    let (s, why) = call_ingress(
        &pki.edge_tls("c"),
        "a",
        a.bound.ingress.unwrap(),
        "ledger.shop.svc.clusterset.local:8080",
    )
    .await
    .unwrap();
    assert_eq!(
        (s, why.split_whitespace().next().unwrap_or("")),
        (404, "not-exported"),
        "a served a workload it does not export: {why}"
    );
    assert_eq!(secret.calls.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_caller_cannot_speak_for_another_site_into_an_edge_node() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let notify = http_backend("e").await;
    // e serves notification to site a only; c is its parent, and c's local callers are not a.
    Agent::write_routes(
        root,
        "c",
        "services:\n- {name: notification, namespace: shop, ports: [{port: 8080}], destinations: [{site: e}]}\n",
    );
    let c = Agent::start(
        &pki,
        root,
        "c",
        &agent_toml("ingress = \"127.0.0.1:0\"\negress_http = \"127.0.0.1:0\"\nchildren = [\"e\"]"),
    );
    Agent::write_routes(
        root,
        "e",
        "services:\n- {name: notification, namespace: shop, ports: [{port: 8080}], destinations: [{site: e}], consumers: [a]}\n",
    );
    let e = Agent::start(
        &pki,
        root,
        "e",
        &agent_toml(&format!(
            "{}\n[parent]\nsite = \"c\"\naddress = \"{}\"\n",
            local("notification", 8080, notify.addr),
            c.ingress()
        )),
    );
    eventually(10, "e linked to c", || async {
        e.admin_get("/readyz").await.0 == 200
    })
    .await;
    let host = "notification.shop.svc.clusterset.local:8080";
    // c's own callers reach e, which refuses them: c is not in the scope.
    eventually(10, "c's callers reach e", || async {
        call(c.egress(), host, &[]).await.0 == 403
    })
    .await;
    let (s, why) = call(c.egress(), host, &[("x-multimesh-source-site", "a")]).await;
    assert_eq!(
        (s, why.split_whitespace().next().unwrap_or("")),
        (403, "scope"),
        "a local caller of c passed as site a: {why}\n{}",
        e.log()
    );
    assert_eq!(notify.calls.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federationd_certificate_is_not_a_data_plane_identity() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let pay = http_backend("a").await;
    let a = site_a(&pki, root, &pay, "");
    let addr = a.bound.ingress.unwrap();
    let authority = format!("{PAY}:8080");
    // b's edge agent is served; b's federationd, with a certificate of the same CA, is not.
    let ok = call_ingress(&pki.edge_tls("b"), "a", addr, &authority).await;
    assert_eq!(ok.as_ref().map(|r| r.0), Ok(200), "{ok:?}");
    let refused = call_ingress(&pki.site_tls("b"), "a", addr, &authority).await;
    assert!(
        refused.is_err(),
        "a federationd certificate called a service: {refused:?}"
    );
    assert_eq!(pay.calls.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// Opens `n` streams on one HTTP/2 connection to `addr` (h2c, or over `tls` when given), each
/// a GET for `authority` reset by the caller as soon as it is under way: the rapid-reset
/// pattern.
async fn rapid_resets(
    addr: std::net::SocketAddr,
    tls: Option<(&multimesh_core::tls::SiteTls, &str)>,
    authority: &str,
    n: usize,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
    impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}
    let io: Box<dyn Io> = match tls {
        None => Box::new(tcp),
        Some((tls, site)) => {
            let expected = multimesh_core::identity::SiteId::new(
                TD,
                site,
                multimesh_core::identity::Role::Edge,
            )
            .unwrap();
            let cfg = multimesh_core::tls::client_config(tls, expected).unwrap();
            let name = rustls::pki_types::ServerName::try_from("peer.invalid").unwrap();
            Box::new(
                tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await
                    .unwrap(),
            )
        }
    };
    let (mut send, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(conn);
    for _ in 0..n {
        send = send.ready().await.unwrap();
        let req = http::Request::get(format!("http://{authority}/"))
            .body(())
            .unwrap();
        // A complete request (no body): its call goes on after the reset, waiting for the
        // workload; a reset in the middle of a body ends the call at once instead (see
        // a_request_body_that_fails_ends_its_call_at_once).
        let (resp, mut stream) = send.send_request(req, true).unwrap();
        // Reset once the agent has taken the call (a stream reset before it is accepted never
        // reaches the agent at all).
        tokio::time::sleep(Duration::from_millis(20)).await;
        stream.send_reset(h2::Reason::CANCEL);
        drop(resp);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reset_by_the_caller_count_against_max_streams_until_their_calls_end() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    // payment's workload accepts connections and never answers: each call stays open.
    let silent = silent_backend().await;
    Agent::write_routes(
        root,
        "a",
        "services:\n- {name: payment, namespace: shop, ports: [{port: 8080}], destinations: [{site: a}]}\n",
    );
    let a = Agent::start(
        &pki,
        root,
        "a",
        &agent_toml(&format!(
            "ingress = \"127.0.0.1:0\"\negress_http = \"127.0.0.1:0\"\n{}\n[limits]\nmax_streams = 4\nrequest_timeout_ms = 30000\n",
            local("payment", 8080, silent.addr)
        )),
    );
    let authority = format!("{PAY}:8080");
    // A local h2c caller, then a peer site over its edge link: 60 streams each, all reset.
    rapid_resets(a.egress(), None, &authority, 60).await;
    let from_egress = silent.calls.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        from_egress <= 4,
        "{from_egress} calls running from one h2c connection with max_streams = 4"
    );
    let b = pki.edge_tls("b");
    rapid_resets(a.bound.ingress.unwrap(), Some((&b, "a")), &authority, 60).await;
    let from_ingress = silent.calls.load(std::sync::atomic::Ordering::Relaxed) - from_egress;
    assert!(
        from_ingress <= 4,
        "{from_ingress} calls running from one edge link with max_streams = 4"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_never_finish_a_handshake_do_not_take_the_slots_of_peers() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let pay = http_backend("a").await;
    Agent::write_routes(
        root,
        "a",
        "services:\n- {name: payment, namespace: shop, ports: [{port: 8080}], destinations: [{site: a}]}\n",
    );
    let a = Agent::start(
        &pki,
        root,
        "a",
        &agent_toml(&format!(
            "ingress = \"127.0.0.1:0\"\n{}\n[limits]\nmax_connections = 4\n",
            local("payment", 8080, pay.addr)
        )),
    );
    let addr = a.bound.ingress.unwrap();
    // Eight connections that never start TLS.
    let idle: Vec<_> = (0..8)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = pki.edge_tls("b");
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        call_ingress(&b, "a", addr, &format!("{PAY}:8080")),
    )
    .await;
    assert!(
        matches!(r, Ok(Ok((200, _)))),
        "a peer waited behind callers that never handshake: {r:?}"
    );
    drop(idle);
}

/// Site a serving payment to itself, with short idle and header timeouts.
fn impatient_site(pki: &Pki, root: &std::path::Path, pay: &Backend) -> Agent {
    Agent::write_routes(
        root,
        "a",
        "services:\n- {name: payment, namespace: shop, ports: [{port: 8080}], destinations: [{site: a}]}\n",
    );
    Agent::start(
        pki,
        root,
        "a",
        &agent_toml(&format!(
            "egress_http = \"127.0.0.1:0\"\n{}\n[limits]\nidle_timeout_ms = 500\nheader_timeout_ms = 500\n",
            local("payment", 8080, pay.addr)
        )),
    )
}

/// Reads from `tcp` until the peer closes it (true) or `within` passes (false).
async fn closed_within(tcp: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_caller_sending_its_headers_slowly_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    let dir = test_dir();
    let pki = Pki::new(&dir.path().join("pki"));
    let pay = http_backend("a").await;
    let a = impatient_site(&pki, dir.path(), &pay);
    let mut tcp = tokio::net::TcpStream::connect(a.egress()).await.unwrap();
    tcp.write_all(format!("GET / HTTP/1.1\r\nHost: {PAY}:8080\r\n").as_bytes())
        .await
        .unwrap();
    // One header line every 100 ms, never the blank line that ends the head.
    let mut cut = false;
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tcp
            .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            cut = true;
            break;
        }
    }
    assert!(
        cut || closed_within(&mut tcp, Duration::from_millis(100)).await,
        "a caller trickling its headers for 4 s was kept (header_timeout_ms = 500)"
    );
    assert_eq!(pay.calls.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_local_callers_are_closed_over_http1_and_h2c() {
    use tokio::io::AsyncWriteExt;
    let dir = test_dir();
    let pki = Pki::new(&dir.path().join("pki"));
    let pay = http_backend("a").await;
    let a = impatient_site(&pki, dir.path(), &pay);
    // HTTP/1.1 keep-alive: one call, then nothing.
    let mut tcp = tokio::net::TcpStream::connect(a.egress()).await.unwrap();
    tcp.write_all(format!("GET / HTTP/1.1\r\nHost: {PAY}:8080\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(
        closed_within(&mut tcp, Duration::from_secs(3)).await,
        "an idle HTTP/1.1 keep-alive caller was kept (idle_timeout_ms = 500)"
    );
    assert_eq!(pay.calls.load(std::sync::atomic::Ordering::Relaxed), 1);
    // h2c: a connection that opens no stream.
    let tcp = tokio::net::TcpStream::connect(a.egress()).await.unwrap();
    let (_send, conn) = h2::client::handshake(tcp).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(3), conn).await;
    assert!(
        ended.is_ok(),
        "an idle h2c caller was kept (idle_timeout_ms = 500)"
    );
}

/// A workload that accepts connections and never answers; each accepted connection is handed
/// to the test.
async fn holding_workload() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::Receiver<tokio::net::TcpStream>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            if tx.send(tcp).await.is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_fails_ends_its_call_at_once() {
    use tokio::io::AsyncReadExt;
    let dir = test_dir();
    let pki = Pki::new(&dir.path().join("pki"));
    let (workload, mut accepted) = holding_workload().await;
    Agent::write_routes(
        dir.path(),
        "a",
        "services:\n- {name: payment, namespace: shop, ports: [{port: 8080}], destinations: [{site: a}]}\n",
    );
    let a = Agent::start(
        &pki,
        dir.path(),
        "a",
        &agent_toml(&format!(
            "egress_http = \"127.0.0.1:0\"\n{}\n[limits]\nrequest_timeout_ms = 30000\n",
            local("payment", 8080, workload)
        )),
    );
    // An h2c caller starts a POST of 1,000 bytes, sends 10, then resets the stream: the body
    // the agent is relaying fails.
    let tcp = tokio::net::TcpStream::connect(a.egress()).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let req = http::Request::post(format!("http://{PAY}:8080/pay"))
        .header("content-length", "1000")
        .body(())
        .unwrap();
    let (_response, mut stream) = send.send_request(req, false).unwrap();
    stream
        .send_data(bytes::Bytes::from_static(b"0123456789"), false)
        .unwrap();
    let mut wl = tokio::time::timeout(Duration::from_secs(10), accepted.recv())
        .await
        .expect("the call reached the workload")
        .unwrap();
    let mut head = vec![0u8; 4096];
    let mut got = 0;
    while !head[..got].windows(4).any(|w| w == b"\r\n\r\n") {
        let n = wl.read(&mut head[got..]).await.unwrap();
        assert!(
            n > 0,
            "the workload's connection closed before the request head"
        );
        got += n;
    }
    stream.send_reset(h2::Reason::CANCEL);
    // The workload is left waiting for 990 bytes that will never come: the agent must give up
    // the call (and the workload's connection) now, not when request_timeout_ms (30 s) passes.
    assert!(
        closed_within(&mut wl, Duration::from_secs(3)).await,
        "a call whose request body failed kept its workload connection (and its stream slot) open"
    );
}
