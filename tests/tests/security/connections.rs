//! Oversized heads, slowloris, silent connections, thousands of streams from one address.

use super::*;

/// Headers over the limits are refused with a 4xx and the connection closed; the process
/// keeps serving.
#[tokio::test]
async fn oversized_and_too_many_headers() {
    let s = Server::standalone().start().await;
    let pid = s.pid();
    let rss0 = vm_rss_kb(pid);
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let many: String = std::iter::once("GET /healthz HTTP/1.1\r\nHost: x\r\n".to_string())
        .chain((0..500).map(|i| format!("X-H{i}: v\r\n")))
        .chain(std::iter::once("\r\n".to_string()))
        .collect();
    let long_uri = format!(
        "GET /comments?post_id=p&x={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let tok = format!(
        "POST /comment?post_id=p HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}",
        "e".repeat(60 * 1024)
    );
    for (what, req) in [
        ("100 KB header", big),
        ("500 headers", many),
        ("100 KB URI", long_uri),
        ("60 KB Authorization", tok),
    ] {
        let resp = raw_http(s.port, req.as_bytes(), Duration::from_secs(5)).await;
        let status: u16 = resp.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!(
            (400..500).contains(&status),
            "{what}: {:?}",
            &resp[..resp.len().min(200)]
        );
    }
    // Concurrently, a few hundred of them: memory stays put and the server answers.
    let port = s.port;
    let floods: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(async move {
                raw_http(
                    port,
                    format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "b".repeat(100 * 1024)).as_bytes(),
                    Duration::from_secs(5),
                )
                .await
            })
        })
        .collect();
    for f in floods {
        assert!(f.await.unwrap().starts_with("HTTP/1.1 4"));
    }
    assert_eq!(s.get_json("/healthz").await.0, 200);
    let rss1 = vm_rss_kb(pid);
    assert!(rss1 < rss0 + 64 * 1024, "RSS {rss0} -> {rss1} KiB");
}

/// Slowloris: clients that send their headers a byte at a time are cut off by the header read
/// timeout (10 s), and meanwhile everyone else is served promptly.
#[tokio::test]
async fn slowloris_is_cut_off_and_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::standalone().start().await;
    let port = s.port;
    let lorises: Vec<_> = (0..100)
        .map(|i| {
            tokio::spawn(async move {
                let t0 = Instant::now();
                let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .unwrap();
                let req = format!(
                    "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: {}\r\n\r\n",
                    "z".repeat(200)
                );
                for b in req.as_bytes() {
                    if c.write_all(&[*b]).await.is_err() {
                        break;
                    }
                    // Is the server still there? A read that returns means it answered or closed.
                    let mut buf = [0u8; 256];
                    if let Ok(r) =
                        tokio::time::timeout(Duration::from_millis(400), c.read(&mut buf)).await
                    {
                        let _ = r;
                        return Some(t0.elapsed());
                    }
                    if t0.elapsed() > Duration::from_secs(30) {
                        return None;
                    }
                }
                None
            })
        })
        .collect();
    // Others keep getting quick answers while the lorises hold their connections.
    let mut worst = Duration::ZERO;
    for i in 0..16 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t0 = Instant::now();
        let (st, _) = s.post("calm", "u", &format!("still here {i}")).await;
        assert_eq!(st, 201);
        worst = worst.max(t0.elapsed());
    }
    assert!(
        worst < Duration::from_secs(1),
        "a normal POST took {worst:?} during the slowloris"
    );
    for l in lorises {
        let cut = l.await.unwrap().expect("slow client cut off within 30 s");
        assert!(
            cut >= Duration::from_secs(8) && cut <= Duration::from_secs(15),
            "cut after {cut:?}"
        );
    }
    assert_eq!(s.get_json("/healthz").await.0, 200);
}

/// A connection that never sends a byte is also closed (it would otherwise hold a file
/// descriptor forever).
#[tokio::test]
async fn silent_connection_is_closed() {
    use tokio::io::AsyncReadExt;
    let s = Server::standalone().start().await;
    let t0 = Instant::now();
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(40), c.read(&mut buf)).await;
    assert!(r.is_ok(), "an idle connection was still open after 40 s");
    assert!(t0.elapsed() < Duration::from_secs(40));
}

/// One client opening thousands of streams: the per-IP limit answers 429 beyond it, memory
/// stays bounded, a viewer from another address still connects and gets live comments
/// promptly, and every slot is released when the client goes away.
#[tokio::test]
async fn thousands_of_streams_from_one_address() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LIMIT: usize = 500;
    const TRIES: usize = 2000;
    let s = Server::standalone()
        .args(["--max-streams-per-ip", &LIMIT.to_string()])
        .start()
        .await;
    let pid = s.pid();
    let rss0 = vm_rss_kb(pid);
    let fds0 = open_fds(pid);
    let mut open = Vec::new();
    let (mut ok, mut refused) = (0, 0);
    for i in 0..TRIES {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
            .await
            .unwrap();
        let post = format!("p{}", i % 50);
        c.write_all(
            format!("GET /comments/stream?post_id={post} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = [0u8; 12];
        tokio::time::timeout(T, c.read_exact(&mut buf))
            .await
            .expect("answer in time")
            .unwrap();
        match &buf[9..12] {
            b"200" => ok += 1,
            b"429" => refused += 1,
            other => panic!("unexpected status {}", String::from_utf8_lossy(other)),
        }
        open.push(c);
    }
    assert_eq!(ok, LIMIT, "exactly the per-IP limit admitted");
    assert_eq!(refused, TRIES - LIMIT);
    let rss1 = vm_rss_kb(pid);
    let fds1 = open_fds(pid);
    eprintln!(
        "{TRIES} stream attempts ({LIMIT} admitted): RSS {rss0} -> {rss1} KiB, fds {fds0} -> {fds1}"
    );
    assert!(
        rss1 < rss0 + 100 * 1024,
        "RSS grew from {rss0} to {rss1} KiB"
    );

    // The refused connections stay open on the client's side, idle after their 429: the server
    // closes them (header read timeout on the next request), so they cannot pile up fds.
    let t0 = Instant::now();
    let idle_closed = eventually(Duration::from_secs(20), || async {
        (open_fds(pid) < fds0 + LIMIT + 50).then_some(())
    })
    .await;
    eprintln!(
        "idle refused connections closed by the server after {:?}: fds {fds1} -> {}",
        t0.elapsed(),
        open_fds(pid)
    );
    assert!(
        idle_closed.is_some(),
        "refused connections still hold fds: {}",
        open_fds(pid)
    );

    // Someone else (another source address) is unaffected.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = sock
        .connect(format!("127.0.0.1:{}", s.port).parse().unwrap())
        .await
        .unwrap();
    other
        .write_all(b"GET /comments/stream?post_id=p7 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    let (st, c) = s.post("p7", "u", "reaches everyone").await;
    assert_eq!(st, 201);
    let want = c["id"].as_str().unwrap().to_string();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(&want) {
        let n = tokio::time::timeout(T, other.read(&mut buf))
            .await
            .expect("the other viewer got the comment")
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );

    // The client goes away: every slot and fd is released.
    drop(open);
    let released = eventually(T, || async {
        let m = client()
            .get(s.url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        m.lines()
            .any(|l| l == "livecomments_sse_streams 1")
            .then_some(())
    })
    .await;
    assert!(
        released.is_some(),
        "streams gauge back to the one other viewer"
    );
    let fds2 = open_fds(pid);
    assert!(fds2 < fds0 + 50, "fds {fds0} -> {fds1} -> {fds2}");
    // And the address can open streams again.
    assert_eq!(Sse::connect(&s.base, "p1", None).await.status, 200);
}
