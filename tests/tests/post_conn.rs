//! The lean POST path (`http::post_conn`) against the real binary, on raw keep-alive
//! connections as wrk and browsers send them: pipelined POSTs each answered once and in
//! order, a request hyper must serve (a GET, a chunked body) on the same connection after
//! them, `Connection: close` honoured, the contract's errors unchanged, the request id
//! echoed and a `date` header, as on the routed path.

use std::time::Duration;

use livecomments_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

fn post(path: &str, user: &str, body: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        token(user),
        body.len()
    )
}

fn comment(post_id: &str, user: &str, text: &str, extra: &str) -> String {
    post(
        &format!("/comment?post_id={post_id}"),
        user,
        &format!(r#"{{"text":"{text}"}}"#),
        extra,
    )
}

async fn connect(s: &Server) -> TcpStream {
    TcpStream::connect(("127.0.0.1", s.port))
        .await
        .expect("connect")
}

#[tokio::test]
async fn pipelined_posts_then_hyper_on_the_same_connection() {
    let s = Server::standalone().start().await;
    let mut c = connect(&s).await;
    let mut batch = String::new();
    for i in 0..3 {
        batch += &comment(
            "lean",
            &format!("u{i}"),
            &format!("c{i}"),
            &format!("x-request-id: req-{i}\r\n"),
        );
    }
    batch += &post("/reaction?post_id=lean", "u9", r#"{"kind":"love"}"#, "");
    // After the lean path's requests, one only the router serves, then a chunked POST.
    batch += "GET /comments?post_id=lean HTTP/1.1\r\nhost: x\r\n\r\n";
    let chunked_body = r#"{"text":"chunked"}"#;
    batch += &format!(
        "POST /comment?post_id=lean HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunked_body}\r\n0\r\n\r\n",
        token("u8"),
        chunked_body.len()
    );
    c.write_all(batch.as_bytes()).await.expect("write");
    let got = read_responses(&mut c, 6, T).await;

    let statuses: Vec<u16> = got.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [201, 201, 201, 202, 200, 201], "{got:?}");
    for (i, r) in got[..3].iter().enumerate() {
        assert_eq!(r.header("x-request-id"), Some(format!("req-{i}").as_str()));
        assert!(
            r.header("date").is_some_and(|d| d.ends_with(" GMT")),
            "{r:?}"
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.json()["text"],
            format!("c{i}"),
            "answers in request order"
        );
        assert_eq!(
            r.header("connection"),
            None,
            "keep-alive is HTTP/1.1's default"
        );
    }
    // The GET after them saw all three: each 201 was written before its answer.
    let listed: Vec<String> = got[4].json()["comments"]
        .as_array()
        .expect("comments")
        .iter()
        .map(|c| c["text"].as_str().unwrap_or("").to_string())
        .collect();
    for i in 0..3 {
        assert!(listed.contains(&format!("c{i}")), "{listed:?}");
    }
    // Exactly once each, the chunked one included.
    let all = s.all_comments("lean").await;
    let mut texts: Vec<&str> = all.iter().filter_map(|c| c["text"].as_str()).collect();
    texts.sort();
    assert_eq!(texts, ["c0", "c1", "c2", "chunked"]);
}

#[tokio::test]
async fn a_request_split_over_writes_is_served_whole() {
    let s = Server::standalone().start().await;
    let mut c = connect(&s).await;
    let req = comment("split", "alice", "in pieces", "");
    let (a, rest) = req.split_at(20);
    let (b, d) = rest.split_at(rest.len() - 5);
    for part in [a, b, d] {
        c.write_all(part.as_bytes()).await.expect("write");
        c.flush().await.expect("flush");
        // Lets each piece leave as its own segment; nothing waits on this.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let got = read_responses(&mut c, 1, T).await;
    assert_eq!(got[0].status, 201, "{got:?}");
    assert_eq!(got[0].json()["text"], "in pieces");
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let s = Server::standalone().start().await;
    let mut c = connect(&s).await;
    c.write_all(comment("close", "alice", "bye", "connection: close\r\n").as_bytes())
        .await
        .expect("write");
    let got = read_responses(&mut c, 1, T).await;
    assert_eq!(got[0].status, 201);
    assert_eq!(got[0].header("connection"), Some("close"));
    assert!(
        closed_within(&mut c, T).await,
        "the server closes after the answer"
    );
}

#[tokio::test]
async fn errors_are_the_contracts_and_change_nothing() {
    let s = Server::standalone().start().await;
    let mut c = connect(&s).await;
    let no_token = "POST /comment?post_id=err HTTP/1.1\r\nhost: x\r\ncontent-length: 12\r\n\r\n{\"text\":\"a\"}";
    let mut batch = String::from(no_token);
    batch += &post("/comment?post_id=err", "bob", "{not json", "");
    batch += &comment("bad%20id!", "bob", "x", "");
    batch += &post("/reaction?post_id=err", "bob", r#"{"kind":"nope"}"#, "");
    c.write_all(batch.as_bytes()).await.expect("write");
    let got = read_responses(&mut c, 4, T).await;
    assert_error(got[0].status, &got[0].json(), 401, "invalid_token");
    assert_error(got[1].status, &got[1].json(), 400, "invalid_json");
    assert_error(got[2].status, &got[2].json(), 400, "invalid_post_id");
    assert_error(got[3].status, &got[3].json(), 400, "invalid_parameter");

    // A body over 16 KiB is refused with 413 (by hyper and the router, which take it).
    let mut big = connect(&s).await;
    let text = "x".repeat(17 * 1024);
    big.write_all(comment("err", "bob", &text, "").as_bytes())
        .await
        .expect("write");
    let got = read_responses(&mut big, 1, T).await;
    assert_error(got[0].status, &got[0].json(), 413, "payload_too_large");
    assert!(s.all_comments("err").await.is_empty(), "nothing was stored");
}
