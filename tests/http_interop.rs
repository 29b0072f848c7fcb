//! HTTP/2 interoperability with independent peers: curl against the
//! server (h2c with prior knowledge, and TLS with ALPN), h2load runs with
//! no failed request, nghttpd as the server for the Valkyria client, and
//! the examples queried as their comments say.
//! Each test skips with a printed notice when its tool is not installed.

#[path = "http/support.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const TIMEOUT: Duration = Duration::from_secs(60);

/// `curl ARGS… -w '\n%{http_version} %{http_code}'`: (body, "2 200").
fn curl(args: &[&str]) -> (String, String) {
    let mut all: Vec<&str> = vec![
        "-sS",
        "--max-time",
        "20",
        "-w",
        "\n%{http_version} %{http_code}",
    ];
    all.extend_from_slice(args);
    let out = run("curl", &all, &[], TIMEOUT);
    assert_eq!(out.status, Some(0), "curl {:?}\n{}", args, out.describe());
    let (body, status) = out.stdout.rsplit_once('\n').unwrap_or(("", &out.stdout));
    (body.to_string(), status.to_string())
}

#[test]
fn curl_prior_knowledge_h2c() {
    if !tool("curl", "curl_prior_knowledge_h2c") {
        return;
    }
    let dir = temp_dir("curl-h2c");
    let server = serve(&dir, None, &[]);
    let demo = format!("http://127.0.0.1:{}/", server.port("demo"));
    let app = format!("http://127.0.0.1:{}", server.port("app"));
    let h2c = "--http2-prior-knowledge";
    assert_eq!(
        curl(&[h2c, &demo]),
        ("Hello from Valk HTTP/2 server!".into(), "2 200".into())
    );
    assert_eq!(
        curl(&[h2c, &format!("{}/", app)]),
        ("hello from valk".into(), "2 200".into())
    );
    assert_eq!(curl(&[h2c, &format!("{}/boom", app)]).1, "2 500");
    assert_eq!(
        curl(&[h2c, &format!("{}/", app)]),
        ("hello from valk".into(), "2 200".into()),
        "still serving after a handler Error"
    );
    assert_eq!(
        curl(&[h2c, "-d", "abc", &format!("{}/echo", app)]),
        ("POST abc".into(), "2 200".into())
    );
    let (head, status) = curl(&[h2c, "-i", &format!("{}/json", app)]);
    assert_eq!(status, "2 201");
    assert!(head.contains("content-type: application/json"), "{}", head);
    assert!(head.contains("x-valk: yes"), "{}", head);
    let out = server.terminate();
    assert_eq!(out.status, Some(0), "{}", out.describe());
}

#[test]
fn curl_tls_alpn_h2() {
    if !tool("curl", "curl_tls_alpn_h2") {
        return;
    }
    let dir = temp_dir("curl-tls");
    let cert = make_cert(&dir);
    let server = serve(&dir, Some(&cert), &[]);
    let demo = server.port("tls-demo");
    let app = server.port("tls-app");
    assert_eq!(
        curl(&["-k", "--http2", &format!("https://127.0.0.1:{}/", demo)]),
        ("Hello from Valk HTTP/2 server!".into(), "2 200".into())
    );
    // Verified against the test certificate, by name.
    let resolve = format!("localhost:{}:127.0.0.1", app);
    assert_eq!(
        curl(&[
            "--http2",
            "--cacert",
            &cert.1,
            "--resolve",
            &resolve,
            &format!("https://localhost:{}/", app)
        ]),
        ("hello from valk".into(), "2 200".into())
    );
    assert_eq!(
        curl(&["-k", "--http2", &format!("https://127.0.0.1:{}/boom", app)]).1,
        "2 500"
    );
    assert_eq!(
        curl(&[
            "-k",
            "--http2",
            "-d",
            "x",
            &format!("https://127.0.0.1:{}/echo", app)
        ]),
        ("POST x".into(), "2 200".into())
    );
    let out = server.terminate();
    assert_eq!(out.status, Some(0), "{}", out.describe());
}

/// Runs h2load and checks that every request succeeded.
fn h2load(url: &str, n: usize) {
    let total = n.to_string();
    let out = run(
        "h2load",
        &["-n", &total, "-c", "4", "-m", "4", url],
        &[],
        TIMEOUT,
    );
    assert_eq!(out.status, Some(0), "h2load {}\n{}", url, out.describe());
    let expected =
        format!("requests: {n} total, {n} started, {n} done, {n} succeeded, 0 failed, 0 errored");
    assert!(
        out.stdout.contains(&expected),
        "h2load {}\n{}",
        url,
        out.describe()
    );
    assert!(
        out.stdout.contains(&format!("status codes: {} 2xx", n)),
        "h2load {}\n{}",
        url,
        out.describe()
    );
}

#[test]
fn h2load_without_failures() {
    if !tool("h2load", "h2load_without_failures") {
        return;
    }
    let dir = temp_dir("h2load");
    let cert = make_cert(&dir);
    let server = serve(&dir, Some(&cert), &[]);
    h2load(&format!("http://127.0.0.1:{}/", server.port("demo")), 1000);
    h2load(&format!("http://127.0.0.1:{}/", server.port("app")), 1000);
    h2load(
        &format!("https://127.0.0.1:{}/", server.port("tls-app")),
        1000,
    );
    let out = server.terminate();
    assert_eq!(out.status, Some(0), "{}", out.describe());
}

/// Runs tests/http/client_peer.valk against an nghttpd on `port`.
fn client_against_nghttpd(dir: &std::path::Path, port: u16, tls: Option<&str>) {
    let body = "hello from nghttpd\n";
    let (transport, scheme) = if tls.is_some() {
        ("tls", "https")
    } else {
        ("h2c", "http")
    };
    let params = params(
        dir,
        &[
            ("peer-port", port.to_string()),
            ("peer-transport", quoted(transport)),
            ("peer-scheme", quoted(scheme)),
            ("peer-body", quoted(body)),
        ],
    );
    let envs: Vec<(&str, &str)> = tls.map(|c| ("SSL_CERT_FILE", c)).into_iter().collect();
    let out = valk(&[&params, "tests/http/client_peer.valk"], &envs, TIMEOUT);
    assert_eq!(out.status, Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains(" passed, 0 failed"),
        "{}",
        out.describe()
    );
}

/// Starts nghttpd serving `dir`; it is killed when the guard drops.
struct Nghttpd(std::process::Child);

impl Drop for Nghttpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts nghttpd on a free port and returns it with the port. A port
/// found free may be taken before nghttpd binds it (by another test's
/// sockets): then nghttpd exits, and another port is tried.
fn nghttpd(dir: &std::path::Path, tls: Option<&(String, String)>) -> (Nghttpd, u16) {
    let docroot = dir.join("www");
    std::fs::create_dir_all(&docroot).unwrap();
    std::fs::write(docroot.join("index.html"), "hello from nghttpd\n").unwrap();
    for _ in 0..5 {
        let port = free_port();
        let mut cmd = Command::new("nghttpd");
        cmd.arg("-d").arg(&docroot);
        match tls {
            None => {
                cmd.arg("--no-tls").arg(port.to_string());
            }
            Some((key, cert)) => {
                cmd.arg(port.to_string()).arg(key).arg(cert);
            }
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start nghttpd");
        let mut guard = Nghttpd(child);
        if wait_for_listener(&mut guard.0, port, Duration::from_secs(10)) {
            return (guard, port);
        }
    }
    panic!("nghttpd did not listen on any of five free ports");
}

#[test]
fn client_against_nghttpd_h2c() {
    if !tool("nghttpd", "client_against_nghttpd_h2c") {
        return;
    }
    let dir = temp_dir("nghttpd-h2c");
    let (_peer, port) = nghttpd(&dir, None);
    client_against_nghttpd(&dir, port, None);
}

#[test]
fn client_against_nghttpd_tls() {
    if !tool("nghttpd", "client_against_nghttpd_tls") {
        return;
    }
    let dir = temp_dir("nghttpd-tls");
    let cert = make_cert(&dir);
    let (_peer, port) = nghttpd(&dir, Some(&cert));
    client_against_nghttpd(&dir, port, Some(&cert.1));
}

/// The URL an example printed in its first line ("Serving … on URL", "API
/// on URL (h2c)").
fn printed_url(server: &Server) -> String {
    let first = server.lines().first().expect("the example printed nothing");
    first
        .split_whitespace()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no URL in {:?}", first))
        .trim_end_matches('/')
        .to_string()
}

/// The examples a newcomer runs first answer curl as their comments say:
/// hello_server over h2c and, given a key and certificate, over TLS;
/// api_server's routes, status codes and JSON bodies.
#[test]
fn examples_answer_curl() {
    if !tool("curl", "examples_answer_curl") {
        return;
    }
    let h2c = "--http2-prior-knowledge";
    let hello = Server::start_until(&["examples/hello_server.valk", "0"], &[], "Serving");
    let url = printed_url(&hello);
    assert!(url.starts_with("http://127.0.0.1:"), "{}", url);
    assert_eq!(
        curl(&[h2c, &format!("{}/", url)]),
        ("Hello from Valkyria!\n".into(), "2 200".into())
    );
    let out = hello.terminate();
    assert_eq!(out.status, Some(0), "{}", out.describe());

    let dir = temp_dir("examples");
    let (key, cert) = make_cert(&dir);
    let hello = Server::start_until(
        &["examples/hello_server.valk", "0", &key, &cert],
        &[],
        "Serving",
    );
    let url = printed_url(&hello);
    assert!(url.starts_with("https://127.0.0.1:"), "{}", url);
    assert_eq!(
        curl(&["-k", "--http2", &format!("{}/", url)]),
        ("Hello from Valkyria!\n".into(), "2 200".into())
    );
    let out = hello.terminate();
    assert_eq!(out.status, Some(0), "{}", out.describe());

    let api = Server::start_until(&["examples/api_server.valk", "0"], &[], "API on");
    let base = printed_url(&api);
    let (body, status) = curl(&[h2c, &format!("{}/items", base)]);
    assert_eq!(status, "2 200");
    assert_eq!(
        body,
        "{\"count\":3,\"items\":[\"apples\",\"bread\",\"coffee\"]}\n"
    );
    let (body, status) = curl(&[
        h2c,
        "-d",
        "{\"name\": \"milk\", \"qty\": 2}",
        &format!("{}/echo", base),
    ]);
    assert_eq!(status, "2 200");
    assert_eq!(
        body,
        "{\"keys\":[\"name\",\"qty\"],\"received\":{\"name\":\"milk\",\"qty\":2}}\n"
    );
    let (body, status) = curl(&[h2c, "-d", "{\"name\": ", &format!("{}/echo", base)]);
    assert_eq!(status, "2 400");
    assert!(body.starts_with("{\"error\":"), "{}", body);
    let (head, status) = curl(&[h2c, "-i", &format!("{}/items", base), "-X", "DELETE"]);
    assert_eq!(status, "2 405");
    assert!(head.contains("content-type: application/json"), "{}", head);
    let (body, status) = curl(&[h2c, &format!("{}/nowhere", base)]);
    assert_eq!(status, "2 404");
    assert_eq!(body, "{\"error\":\"not found\",\"path\":\"/nowhere\"}\n");
    let out = api.terminate();
    assert_eq!(out.status, Some(0), "{}", out.describe());
}
