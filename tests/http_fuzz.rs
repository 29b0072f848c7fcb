//! The `server_request` fuzz target's harness (fuzz/src/http_server.rs,
//! included here) run on its seed corpus, with what each seed must get,
//! and on every input the fuzzer found a problem with.

#[path = "http/frames.rs"]
mod frames;
#[path = "../fuzz/src/http_server.rs"]
mod http_server;

use std::path::Path;

use frames::{parse_frames, DATA, GOAWAY, HEADERS, RST_STREAM, SETTINGS};

/// The body the server sent on `stream`, as text.
fn body(output: &[u8], stream: u32) -> String {
    let mut bytes = Vec::new();
    for f in parse_frames(output) {
        if f.0 == DATA && f.2 == stream {
            bytes.extend_from_slice(&f.3);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn seed(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus/server_request")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {}", path.display(), e))
}

#[test]
fn every_seed_is_served_and_the_connection_closed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/server_request");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("seed corpus") {
        let path = entry.unwrap().path();
        let out = http_server::serve(&std::fs::read(&path).unwrap());
        let first = parse_frames(&out.output);
        assert!(
            first.first().is_some_and(|f| f.0 == SETTINGS),
            "{}: the server starts with its SETTINGS",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 10, "the seed corpus has {} inputs", seen);
}

#[test]
fn seeds_get_their_answers() {
    let out = http_server::serve(&seed("get_root"));
    assert_eq!(out.handled, 1);
    assert!(
        body(&out.output, 1).starts_with("GET / 127.0.0.1:8080 "),
        "{:?}",
        body(&out.output, 1)
    );

    let out = http_server::serve(&seed("post_data"));
    let text = body(&out.output, 1);
    assert!(
        text.starts_with("POST /echo 127.0.0.1:8080 ") && text.ends_with(" 17"),
        "the body in two DATA frames reaches the handler: {:?}",
        text
    );

    let out = http_server::serve(&seed("many_streams_hpack"));
    assert_eq!(
        out.handled, 20,
        "20 streams, the authority from the HPACK table"
    );
    assert!(body(&out.output, 39).starts_with("GET /s19 127.0.0.1:8080 "));

    let out = http_server::serve(&seed("big_windows"));
    assert_eq!(body(&out.output, 1).len(), 65536, "a 64 KiB answer in full");
    assert_eq!(body(&out.output, 3).len(), 65536);
    assert!(out.written > 2 * 65536);

    // No window but 1000 bytes for the stream: so much of the body goes.
    let out = http_server::serve(&seed("zero_window"));
    assert_eq!(out.handled, 1);
    assert!(parse_frames(&out.output)
        .iter()
        .any(|f| f.0 == HEADERS && f.2 == 1));
    assert_eq!(body(&out.output, 1).len(), 1000);

    // Stream 1 is reset before it could start: only stream 3 is handled.
    let out = http_server::serve(&seed("json_reset"));
    assert_eq!(out.handled, 1);
    assert_eq!(
        body(&out.output, 3),
        r#"{"method":"GET","path":"/json?x=1"}"#
    );

    // Refused by its content-length, before any handler runs.
    let out = http_server::serve(&seed("oversized_body"));
    assert_eq!(out.handled, 0);
    assert_eq!(body(&out.output, 1), "Payload Too Large\n");

    let out = http_server::serve(&seed("continuation"));
    assert!(body(&out.output, 1).starts_with("GET /continued 127.0.0.1:8080 "));

    // GOAWAY from the client: stream 3 was sent before it and is served.
    let out = http_server::serve(&seed("head_empty_priority"));
    assert!(body(&out.output, 3).starts_with("DELETE / "));
    assert!(!parse_frames(&out.output)
        .iter()
        .any(|f| f.0 == RST_STREAM || f.0 == GOAWAY && f.3[4..8] != [0, 0, 0, 0]));
}
