//! Hostile input against the HTTP/2 server: garbage bytes, oversized
//! bodies (100 MB, declared and streamed), more streams than allowed (10,000 at once among them), headers
//! trickled too slowly, idle connections, rapid stream resets, a flood of
//! connections beyond the limit, and clients that stop reading responses.
//! After each, the server must still answer a normal request. Frames are
//! written by hand here (only here) to misbehave in ways a real client
//! library will not.

#[path = "http/frames.rs"]
mod frames;
#[path = "http/support.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use frames::*;
use support::*;

/// An HPACK block for `GET http://authority/path` from the static table
/// and literals without indexing (short strings only).
fn request_block(path: &str, authority: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    block.push(0x04); // :path, literal value
    block.push(path.len() as u8);
    block.extend_from_slice(path.as_bytes());
    block.push(0x01); // :authority, literal value
    block.push(authority.len() as u8);
    block.extend_from_slice(authority.as_bytes());
    block
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).unwrap();
    s
}

/// Frames read until the peer closes or `wait` passes, and whether it closed.
fn read_frames(stream: &mut TcpStream, wait: Duration) -> (Vec<Frame>, bool) {
    let deadline = Instant::now() + wait;
    let mut buf = Vec::new();
    let mut closed = false;
    let mut chunk = [0u8; 16384];
    while Instant::now() < deadline {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break
            }
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    (parse_frames(&buf), closed)
}

fn assert_still_serving(server: &Server) {
    assert_eq!(get(server.port("app"), "/", false), "200 hello from valk");
    assert_eq!(
        get(server.port("demo"), "/", false),
        "200 Hello from Valk HTTP/2 server!"
    );
}

#[test]
fn garbage_bytes_are_dropped_and_the_server_still_answers() {
    let dir = temp_dir("garbage");
    let cert = make_cert(&dir);
    let server = serve(&dir, Some(&cert), &[]);
    let mut noise = Vec::with_capacity(256 * 1024);
    let mut x: u32 = 0x1234_5678;
    for _ in 0..noise.capacity() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x as u8);
    }
    for name in ["demo", "app", "tls-app"] {
        let mut s = connect(server.port(name));
        let _ = s.write_all(&noise);
        let (_, closed) = read_frames(&mut s, Duration::from_secs(5));
        assert!(closed, "{}: the connection is closed", name);
        // A valid preface followed by garbage frames.
        if name != "tls-app" {
            let mut s = connect(server.port(name));
            let _ = s.write_all(PREFACE);
            let _ = s.write_all(&noise[..4096]);
            let (_, closed) = read_frames(&mut s, Duration::from_secs(5));
            assert!(closed, "{}: closed after bad frames", name);
        }
    }
    assert_still_serving(&server);
    assert_eq!(
        get(server.port("tls-app"), "/", true),
        "200 hello from valk"
    );
    let out = server.terminate();
    assert_eq!(out.status, Some(0), "{}", out.describe());
}

#[test]
fn oversized_bodies_are_refused() {
    let dir = temp_dir("oversized");
    let server = serve(&dir, None, &[("VALK_HTTP_MAX_BODY", "1024")]);
    let port = server.port("app");
    let expr = format!(
        "(def {{c}} (await (http2/connect aio \"127.0.0.1\" {} \"\" \"h2c\"))) \
         (def {{big}} (foldl join \"\" (map (\\ {{i}} {{\"0123456789\"}}) (range 0 500)))) \
         (print (http2/response-status (await (http2/send (http2/request-set-body (http2/request \"POST\" \"http\" \"\" \"/echo\") big) c)))) \
         (print (http2/response-body (await (http2/send (http2/request-set-body (http2/request \"POST\" \"http\" \"\" \"/echo\") \"small\") c))))",
        port
    );
    let out = valk(&["-e", &expr], &[], Duration::from_secs(30));
    assert!(
        out.stdout.starts_with("413\nPOST small\n"),
        "{}",
        out.describe()
    );
    // The client has the same limit on responses.
    let expr = format!(
        "(print (try {{await (http2/send (http2/request \"GET\" \"http\" \"\" \"/\") (await (http2/connect aio \"127.0.0.1\" {} \"\" \"h2c\")))}} (\\ {{m}} {{m}})))",
        server.port("demo")
    );
    let out = valk(
        &["-e", &expr],
        &[("VALK_HTTP_MAX_BODY", "10")],
        Duration::from_secs(30),
    );
    assert!(
        out.stdout
            .contains("response body exceeds the limit of 10 bytes"),
        "{}",
        out.describe()
    );
    still_serving_then_stop(server);
}

#[test]
fn streams_beyond_the_limit_are_refused() {
    let dir = temp_dir("streams");
    let server = serve(&dir, None, &[("VALK_HTTP_MAX_STREAMS", "4")]);
    let port = server.port("app");
    let mut s = connect(port);
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    let block = request_block("/slow", &format!("127.0.0.1:{}", port));
    // Ignore the server's SETTINGS and open 40 streams at once.
    for i in 0..40u32 {
        out.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, &block));
    }
    s.write_all(&out).unwrap();
    let (frames, _) = read_frames(&mut s, Duration::from_secs(3));
    let refused = frames
        .iter()
        .filter(|f| f.0 == RST_STREAM && f.3 == REFUSED_STREAM.to_be_bytes())
        .count();
    let goaway = frames.iter().any(|f| f.0 == GOAWAY);
    let answered = frames.iter().filter(|f| f.0 == HEADERS).count();
    assert!(
        refused > 0 || goaway,
        "excess streams refused (frames: {:?})",
        frames.iter().map(|f| f.0).collect::<Vec<_>>()
    );
    assert!(
        answered <= 4 || goaway,
        "at most 4 streams served, got {}",
        answered
    );
    drop(s);
    still_serving_then_stop(server);
}

#[test]
fn slow_headers_and_silent_connections_time_out() {
    let dir = temp_dir("slow");
    let server = serve(&dir, None, &[("VALK_HTTP_HEADER_TIMEOUT_MS", "300")]);
    for name in ["app", "demo"] {
        let port = server.port(name);
        // Says nothing at all.
        let mut silent = connect(port);
        // Starts a header block and never finishes it.
        let mut trickle = connect(port);
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        let block = request_block("/", &format!("127.0.0.1:{}", port));
        out.extend(frame(HEADERS, END_STREAM, 1, &block[..3]));
        trickle.write_all(&out).unwrap();
        let started = Instant::now();
        let (_, closed) = read_frames(&mut trickle, Duration::from_secs(5));
        assert!(closed, "{}: trickled headers cut off", name);
        let (_, closed) = read_frames(&mut silent, Duration::from_secs(5));
        assert!(closed, "{}: silent connection cut off", name);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{}: in time",
            name
        );
    }
    still_serving_then_stop(server);
}

#[test]
fn idle_connections_are_closed_with_goaway() {
    let dir = temp_dir("idle");
    let server = serve(&dir, None, &[("VALK_HTTP_IDLE_TIMEOUT_MS", "300")]);
    let port = server.port("app");
    let mut s = connect(port);
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &request_block("/", &format!("127.0.0.1:{}", port)),
    ));
    s.write_all(&out).unwrap();
    let (frames, closed) = read_frames(&mut s, Duration::from_secs(5));
    assert!(
        frames.iter().any(|f| f.0 == HEADERS && f.2 == 1),
        "answered first"
    );
    assert!(frames.iter().any(|f| f.0 == GOAWAY), "GOAWAY when idle");
    assert!(closed, "then closed");
    still_serving_then_stop(server);
}

#[test]
fn rapid_resets_do_not_hurt_the_server() {
    let dir = temp_dir("resets");
    let server = serve(&dir, None, &[]);
    let port = server.port("app");
    let mut s = connect(port);
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    let block = request_block("/slow", &format!("127.0.0.1:{}", port));
    for i in 0..5000u32 {
        let id = 1 + 2 * i;
        out.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
        out.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    let _ = s.write_all(&out);
    let (frames, _) = read_frames(&mut s, Duration::from_secs(3));
    drop(s);
    let _ = frames;
    still_serving_then_stop(server);
}

#[test]
fn ten_thousand_streams_at_once_are_refused_beyond_the_limit() {
    let dir = temp_dir("10k-streams");
    // The default limit: 1024 concurrent streams per connection.
    let server = serve(&dir, None, &[]);
    for (name, path) in [("app", "/slow"), ("demo", "/")] {
        let port = server.port(name);
        let mut s = connect(port);
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        let block = request_block(path, &format!("127.0.0.1:{}", port));
        for i in 0..10_000u32 {
            out.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, &block));
        }
        let started = Instant::now();
        // The server may close the connection before it has read it all.
        let _ = s.write_all(&out);
        let (frames, _) = read_frames(&mut s, Duration::from_secs(3));
        let refused: Vec<u32> = frames
            .iter()
            .filter(|f| f.0 == RST_STREAM && f.3 == REFUSED_STREAM.to_be_bytes())
            .map(|f| f.2)
            .collect();
        let goaway = frames.iter().any(|f| f.0 == GOAWAY);
        let answered = frames.iter().filter(|f| f.0 == HEADERS).count();
        println!(
            "{}: {} streams answered, {} refused, GOAWAY: {}",
            name,
            answered,
            refused.len(),
            goaway
        );
        assert!(
            !refused.is_empty(),
            "{}: streams beyond the limit get REFUSED_STREAM (goaway: {}, answered: {})",
            name,
            goaway,
            answered
        );
        // Only streams past the limit are refused: 1023 others were open
        // before any of them.
        assert!(
            refused.iter().all(|&id| id > 2 * 1024 - 1),
            "{}: a stream within the limit was refused",
            name
        );
        // A peer that keeps opening streams past the limit is cut off
        // (after 1024 refusals) instead of being refused forever.
        assert!(goaway, "{}: GOAWAY", name);
        // A refused stream is never answered as well.
        assert!(
            frames
                .iter()
                .filter(|f| f.0 == HEADERS)
                .all(|f| !refused.contains(&f.2)),
            "{}: a refused stream was answered",
            name
        );
        if name == "app" {
            // Each answer takes 400 ms: at most the limit can be served.
            assert!(answered <= 1024, "app: {} streams served at once", answered);
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}: in time",
            name
        );
        drop(s);
    }
    still_serving_then_stop(server);
}

/// What a raw connection went through in a flood.
#[derive(Default)]
struct Peer {
    /// The server closed it (EOF or reset).
    closed: bool,
    /// Bytes the server sent on it.
    received: Vec<u8>,
}

/// Reads whatever each connection has, without blocking, until `done`
/// says the picture is complete or `wait` passes.
fn watch_peers(
    streams: &mut [TcpStream],
    peers: &mut [Peer],
    wait: Duration,
    done: impl Fn(&[Peer]) -> bool,
) {
    let deadline = Instant::now() + wait;
    let mut chunk = [0u8; 4096];
    for s in streams.iter() {
        s.set_nonblocking(true).unwrap();
    }
    while Instant::now() < deadline && !done(peers) {
        for (s, peer) in streams.iter_mut().zip(peers.iter_mut()) {
            while !peer.closed {
                match s.read(&mut chunk) {
                    Ok(0) => peer.closed = true,
                    Ok(n) => peer.received.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => peer.closed = true,
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_connection_flood_beyond_the_limit_is_refused_promptly() {
    const LIMIT: usize = 16;
    const FLOOD: usize = 400;
    let dir = temp_dir("flood");
    let server = serve(
        &dir,
        None,
        &[
            ("VALK_HTTP_MAX_CONNECTIONS", "16"),
            // Connections that say nothing more are kept for the whole test.
            ("VALK_HTTP_HEADER_TIMEOUT_MS", "60000"),
        ],
    );
    let port = server.port("app");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    let started = Instant::now();
    let mut streams = Vec::new();
    for _ in 0..FLOOD {
        let mut s = connect(port);
        // A refused connection may already be closed.
        let _ = s.write_all(&hello);
        streams.push(s);
    }
    let mut peers: Vec<Peer> = (0..FLOOD).map(|_| Peer::default()).collect();
    watch_peers(&mut streams, &mut peers, Duration::from_secs(10), |p| {
        p.iter().filter(|p| p.closed).count() >= FLOOD - LIMIT
    });
    let refused_in = started.elapsed();
    // Anything still to come (a late close, or the held ones' SETTINGS).
    watch_peers(&mut streams, &mut peers, Duration::from_millis(500), |_| {
        false
    });
    let held: Vec<&Peer> = peers.iter().filter(|p| !p.closed).collect();
    let closed = FLOOD - held.len();
    assert_eq!(
        held.len(),
        LIMIT,
        "exactly the limit is kept open ({} of {} closed in {:?})",
        closed,
        FLOOD,
        refused_in
    );
    assert!(
        refused_in < Duration::from_secs(5),
        "the excess is closed promptly, not left waiting ({:?})",
        refused_in
    );
    // The refused ones were told why: SETTINGS, then GOAWAY with last
    // stream 0 and REFUSED_STREAM (unless a reset overtook it).
    let mut told = 0;
    for p in peers.iter().filter(|p| p.closed && !p.received.is_empty()) {
        let frames = parse_frames(&p.received);
        let kinds: Vec<u8> = frames.iter().map(|f| f.0).collect();
        assert_eq!(
            kinds,
            [SETTINGS, GOAWAY],
            "a refused connection gets SETTINGS and GOAWAY"
        );
        assert_eq!(frames[1].3[..8], [0, 0, 0, 0, 0, 0, 0, 7]);
        told += 1;
    }
    assert!(told > 0, "refused connections get a GOAWAY");
    // The connections kept are served: the server's SETTINGS came.
    for p in &held {
        assert!(
            p.received.len() >= 9 && p.received[3] == SETTINGS,
            "a kept connection got the server's SETTINGS"
        );
    }
    // While the flood holds every slot: a new connection to the same
    // server is refused at once rather than left hanging, and the
    // process's other server answers.
    let t = Instant::now();
    let answer = get(port, "/", false);
    assert!(
        answer.starts_with("error:"),
        "refused while full: {}",
        answer
    );
    assert!(t.elapsed() < Duration::from_secs(10), "refused promptly");
    assert_eq!(
        get(server.port("demo"), "/", false),
        "200 Hello from Valk HTTP/2 server!"
    );
    // Once the flood goes away its slots are free again.
    drop(streams);
    let t = Instant::now();
    let mut answer = get(port, "/", false);
    while answer != "200 hello from valk" && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        answer = get(port, "/", false);
    }
    assert_eq!(answer, "200 hello from valk");
    still_serving_then_stop(server);
}

/// The server's resident memory in MiB (None where /proc is missing).
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid)).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// How much the server may grow while a client stalls: MiB of resident
/// memory over what it used after a warm-up of the same requests.
const STALL_BOUND_MIB: f64 = 64.0;
/// Requests a stalled client fires (each for a 1 MiB response).
const STALLED_REQUESTS: usize = 1000;
const BIG: usize = 1 << 20;

/// After a hostile client: the server still answers a normal request, and
/// then stops cleanly when asked.
fn still_serving_then_stop(server: Server) {
    assert_still_serving(&server);
    let out = server.terminate();
    assert_eq!(out.status, Some(0), "{}", out.describe());
}

/// A tokio runtime for the h2 client connections of a test.
fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// An h2 client connection, its driver spawned on the runtime.
async fn h2_client(port: u16, window: u32) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

fn get_request(port: u16, path: &str) -> hyper::Request<()> {
    hyper::Request::builder()
        .method("GET")
        .uri(format!("http://127.0.0.1:{}{}", port, path))
        .body(())
        .unwrap()
}

/// GETs `path` on a fresh connection, reading the whole body: (status, body length).
async fn fetch(port: u16, path: &str) -> (u16, usize) {
    let mut client = h2_client(port, 1 << 20).await.ready().await.unwrap();
    let (response, _) = client
        .send_request(get_request(port, path), true)
        .expect("send");
    let response = response.await.expect("response");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut len = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        len += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    (status, len)
}

/// Samples the server's RSS for `wait` while checking that another client
/// is served normally (a small and a 1 MiB answer); returns the peak.
fn peak_rss_while_serving(rt: &tokio::runtime::Runtime, server: &Server, wait: Duration) -> f64 {
    let port = server.port("app");
    let deadline = Instant::now() + wait;
    let mut peak = 0f64;
    let mut checked = false;
    while Instant::now() < deadline {
        peak = peak.max(rss_mib(server.pid()).expect("VmRSS"));
        if !checked {
            let small = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), fetch(port, "/")).await
            });
            assert_eq!(small.ok(), Some((200, 15)), "another client is served");
            let big = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), fetch(port, "/big")).await
            });
            assert_eq!(
                big.ok(),
                Some((200, BIG)),
                "another client gets big answers"
            );
            checked = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    peak
}

#[test]
fn clients_that_stop_reading_do_not_grow_the_server() {
    let dir = temp_dir("stalled");
    let server = serve(&dir, None, &[]);
    let port = server.port("app");
    if rss_mib(server.pid()).is_none() {
        println!("notice: /proc/PID/status is not available; skipping clients_that_stop_reading_do_not_grow_the_server");
        return;
    }
    let rt = client_runtime();
    // Warm-up: the same 1 MiB answers, read normally, 32 at a time.
    rt.block_on(async {
        for _ in 0..4 {
            let all: Vec<_> = (0..32).map(|_| tokio::spawn(fetch(port, "/big"))).collect();
            for one in all {
                assert_eq!(one.await.unwrap(), (200, BIG));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let baseline = rss_mib(server.pid()).unwrap();
    println!("baseline RSS after warm-up: {:.1} MiB", baseline);

    // 1. An h2 client that grants no flow-control window: the server can
    // send no body byte, ever.
    let stalled = rt.block_on(async {
        let mut client = h2_client(port, 0).await;
        let mut responses = Vec::new();
        for _ in 0..STALLED_REQUESTS {
            let ready = tokio::time::timeout(Duration::from_secs(5), client.clone().ready()).await;
            let Ok(Ok(ready)) = ready else { break };
            client = ready;
            let Ok((response, _)) = client.send_request(get_request(port, "/big"), true) else {
                break;
            };
            responses.push(response);
        }
        (client, responses)
    });
    assert!(
        stalled.1.len() >= 500,
        "the stalled client sent {} requests",
        stalled.1.len()
    );
    let peak = peak_rss_while_serving(&rt, &server, Duration::from_secs(5));
    println!("zero-window client: peak RSS {:.1} MiB", peak);
    assert!(
        peak - baseline < STALL_BOUND_MIB,
        "zero-window client: RSS {:.1} MiB over a baseline of {:.1} MiB",
        peak - baseline,
        baseline
    );
    drop(stalled);
    assert_still_serving(&server);

    // 2. A raw connection that grants the largest windows and never reads
    // a byte: the socket buffers fill, then nothing moves.
    let mut s = connect(port);
    let mut out = PREFACE.to_vec();
    let mut settings = SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
    settings.extend(0x7fff_ffffu32.to_be_bytes());
    out.extend(frame(SETTINGS, 0, 0, &settings));
    out.extend(frame(
        WINDOW_UPDATE,
        0,
        0,
        &(0x7fff_ffffu32 - 65_535).to_be_bytes(),
    ));
    let block = request_block("/big", &format!("127.0.0.1:{}", port));
    for i in 0..STALLED_REQUESTS as u32 {
        out.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, &block));
    }
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&out).unwrap();
    let peak = peak_rss_while_serving(&rt, &server, Duration::from_secs(5));
    println!("client that never reads: peak RSS {:.1} MiB", peak);
    assert!(
        peak - baseline < STALL_BOUND_MIB,
        "client that never reads: RSS {:.1} MiB over a baseline of {:.1} MiB",
        peak - baseline,
        baseline
    );
    drop(s);
    still_serving_then_stop(server);
}

#[test]
fn a_client_that_takes_nothing_is_cut_off_after_the_idle_timeout() {
    let dir = temp_dir("stall-cut");
    let server = serve(&dir, None, &[("VALK_HTTP_IDLE_TIMEOUT_MS", "500")]);
    let port = server.port("app");
    let mut s = connect(port);
    // No flow-control window at all, and more requests for 1 MiB answers
    // than a connection starts at once (32), so some wait on it.
    let mut out = PREFACE.to_vec();
    let mut settings = SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
    settings.extend(0u32.to_be_bytes());
    out.extend(frame(SETTINGS, 0, 0, &settings));
    let block = request_block("/big", &format!("127.0.0.1:{}", port));
    for i in 0..40u32 {
        out.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, &block));
    }
    s.write_all(&out).unwrap();
    let started = Instant::now();
    let (frames, closed) = read_frames(&mut s, Duration::from_secs(10));
    let answered = frames.iter().filter(|f| f.0 == HEADERS).count();
    assert!(
        answered > 0 && answered < 40,
        "answers started but some requests wait ({} answered)",
        answered
    );
    assert!(
        !frames.iter().any(|f| f.0 == 0),
        "no body byte without a window"
    );
    assert!(closed, "the connection is closed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "soon after the idle timeout ({:?})",
        started.elapsed()
    );
    still_serving_then_stop(server);
}

/// Sends `total` GET / requests over 8 connections, 50 at a time on each,
/// reading every answer.
async fn load(port: u16, total: usize) {
    let per = total / 8;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let mut client = h2_client(port, 1 << 20).await;
                let mut done = 0;
                while done < per {
                    let batch = 50.min(per - done);
                    let mut responses = Vec::with_capacity(batch);
                    for _ in 0..batch {
                        client = client.ready().await.expect("ready");
                        let (response, _) = client
                            .send_request(get_request(port, "/"), true)
                            .expect("send");
                        responses.push(response);
                    }
                    for response in responses {
                        let response = response.await.expect("response");
                        assert_eq!(response.status().as_u16(), 200);
                        let mut body = response.into_body();
                        while let Some(chunk) = body.data().await {
                            let chunk = chunk.expect("body");
                            let _ = body.flow_control().release_capacity(chunk.len());
                        }
                    }
                    done += batch;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("load task");
    }
}

#[test]
fn serving_many_requests_does_not_grow_the_server() {
    let dir = temp_dir("many");
    let server = serve(&dir, None, &[]);
    let port = server.port("app");
    if rss_mib(server.pid()).is_none() {
        println!("notice: /proc/PID/status is not available; skipping serving_many_requests_does_not_grow_the_server");
        return;
    }
    let rt = client_runtime();
    rt.block_on(load(port, 50_000));
    let baseline = rss_mib(server.pid()).unwrap();
    let mut peak = baseline;
    for _ in 0..6 {
        rt.block_on(load(port, 25_000));
        peak = peak.max(rss_mib(server.pid()).unwrap());
    }
    println!(
        "RSS after 50,000 requests {:.1} MiB, peak over 150,000 more {:.1} MiB",
        baseline, peak
    );
    // Each request value holds about a kilobyte: kept until a full
    // collection, 150,000 of them would be well over 100 MiB.
    assert!(
        peak - baseline < 48.0,
        "RSS grew {:.1} MiB over {:.1} MiB",
        peak - baseline,
        baseline
    );
    still_serving_then_stop(server);
}

#[test]
fn streams_reset_while_they_wait_are_forgotten() {
    const ROUNDS: u32 = 100;
    /// Rounds before the baseline: the waiting answers and the first
    /// streams' buffers are in place by then.
    const WARM_UP: u32 = 10;
    /// How much the rounds after the warm-up may grow the server.
    const BOUND_MIB: f64 = 16.0;
    const BATCH: u32 = 900;
    let dir = temp_dir("reset-held");
    let server = serve(&dir, None, &[]);
    let port = server.port("app");
    if rss_mib(server.pid()).is_none() {
        println!("notice: /proc/PID/status is not available; skipping streams_reset_while_they_wait_are_forgotten");
        return;
    }
    assert_still_serving(&server);
    let authority = format!("127.0.0.1:{}", port);
    let mut s = connect(port);
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    // No window: 32 answers of 1 MiB fill the send buffer, so every later
    // request waits on the connection, unstarted.
    let mut out = PREFACE.to_vec();
    let mut settings = SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
    settings.extend(0u32.to_be_bytes());
    out.extend(frame(SETTINGS, 0, 0, &settings));
    let big = request_block("/big", &authority);
    for i in 0..32u32 {
        out.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, &big));
    }
    s.write_all(&out).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Then rounds of new streams, each reset once the server has taken it:
    // h2 no longer counts them, so the client may open as many again.
    let block = request_block("/", &authority);
    let mut id = 65u32;
    let mut baseline = 0.0;
    let mut peak = 0.0f64;
    for round in 0..ROUNDS {
        let mut open = Vec::new();
        let mut reset = Vec::new();
        for k in 0..BATCH {
            open.extend(frame(HEADERS, END_STREAM | END_HEADERS, id + 2 * k, &block));
            reset.extend(frame(RST_STREAM, 0, id + 2 * k, &CANCEL.to_be_bytes()));
        }
        s.write_all(&open)
            .unwrap_or_else(|e| panic!("round {}: the connection was closed: {}", round, e));
        std::thread::sleep(Duration::from_millis(30));
        s.write_all(&reset)
            .unwrap_or_else(|e| panic!("round {}: the connection was closed: {}", round, e));
        id += 2 * BATCH;
        if round + 1 == WARM_UP {
            std::thread::sleep(Duration::from_millis(300));
            baseline = rss_mib(server.pid()).unwrap();
        } else if round % 10 == 9 {
            peak = peak.max(rss_mib(server.pid()).unwrap());
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    peak = peak.max(rss_mib(server.pid()).unwrap());
    println!(
        "{} streams opened and reset while 32 answers wait: RSS {:.1} MiB after {} of them, then at most {:.1} MiB",
        ROUNDS * BATCH,
        baseline,
        WARM_UP * BATCH,
        peak
    );
    assert!(
        peak - baseline < BOUND_MIB,
        "RSS grew {:.1} MiB over {:.1} MiB",
        peak - baseline,
        baseline
    );
    drop(s);
    still_serving_then_stop(server);
}

/// POSTs a body of `total` bytes to `/echo` over h2, in 1 MiB chunks as
/// flow control allows (declaring its length when `declare`): the status,
/// and how many bytes the server let the client send.
async fn post_huge(port: u16, total: usize, declare: bool) -> (u16, usize) {
    let mut client = h2_client(port, 1 << 20).await.ready().await.unwrap();
    let mut request = hyper::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{}/echo", port));
    if declare {
        request = request.header("content-length", total.to_string());
    }
    let (response, mut body) = client
        .send_request(request.body(()).unwrap(), false)
        .expect("send");
    let sender = tokio::spawn(async move {
        let chunk = bytes::Bytes::from(vec![b'x'; 1 << 20]);
        let mut sent = 0usize;
        while sent < total {
            body.reserve_capacity(chunk.len().min(total - sent));
            match std::future::poll_fn(|cx| body.poll_capacity(cx)).await {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    if body.send_data(chunk.slice(..n), sent + n == total).is_err() {
                        break;
                    }
                    sent += n;
                }
                // The server reset the stream: nothing more may be sent.
                _ => break,
            }
        }
        sent
    });
    let status = response.await.expect("response").status().as_u16();
    let sent = tokio::time::timeout(Duration::from_secs(20), sender)
        .await
        .expect("the client is stopped from sending")
        .unwrap();
    (status, sent)
}

#[test]
fn a_100_mb_request_body_is_refused_without_buffering_it() {
    const HUNDRED_MB: usize = 100 << 20;
    let dir = temp_dir("huge-body");
    let server = serve(&dir, None, &[]);
    let port = server.port("app");
    let rt = client_runtime();
    assert_still_serving(&server);
    let baseline = rss_mib(server.pid());

    // Declared: refused from the headers, before any of the body.
    let (status, sent) = rt.block_on(post_huge(port, HUNDRED_MB, true));
    assert_eq!(status, 413);
    println!("declared 100 MB body: 413 after {} bytes sent", sent);
    assert!(sent < 16 << 20, "the client sent {} bytes", sent);

    // Streamed without a length: read up to the limit (8 MiB by
    // default), then refused and the stream reset.
    let (status, sent) = rt.block_on(post_huge(port, HUNDRED_MB, false));
    assert_eq!(status, 413);
    println!("streamed 100 MB body: 413 after {} bytes sent", sent);
    assert!(sent < 16 << 20, "the client sent {} bytes", sent);

    if let (Some(before), Some(after)) = (baseline, rss_mib(server.pid())) {
        println!("server RSS {:.1} -> {:.1} MiB", before, after);
        assert!(after - before < 48.0, "RSS grew {:.1} MiB", after - before);
    }
    still_serving_then_stop(server);
}
