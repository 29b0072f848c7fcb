//! HTTP/2 from Valkyria scripts: owns tests/http/*.valk. A script starts a
//! server and queries it with the client (h2c, and TLS with a certificate
//! made here), and a served program's lifetime: graceful SIGTERM with a
//! request in flight, `shutdown` from a handler, handlers on several
//! isolates. Everything runs on 127.0.0.1 with ports picked by the system.

#[path = "http/support.rs"]
mod support;

use std::time::Duration;

use support::*;

fn assert_suite_passed(out: &Outcome) {
    assert_eq!(out.status, Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains(" passed, 0 failed"),
        "{}",
        out.describe()
    );
}

#[test]
fn script_server_and_client_over_h2c() {
    let out = valk(
        &["tests/http/roundtrip_h2c.valk"],
        &[],
        Duration::from_secs(60),
    );
    assert_suite_passed(&out);
    assert!(
        out.stderr.contains("http2 handler error for GET /boom"),
        "handler errors are logged\n{}",
        out.describe()
    );
}

#[test]
fn script_server_and_client_over_tls_verified() {
    let dir = temp_dir("tls-verified");
    let (key, cert) = make_cert(&dir);
    let params = params(
        &dir,
        &[
            ("tls-key", quoted(&key)),
            ("tls-cert", quoted(&cert)),
            ("tls-verify", "1".into()),
        ],
    );
    let out = valk(
        &[&params, "tests/http/roundtrip_tls.valk"],
        &[("SSL_CERT_FILE", &cert)],
        Duration::from_secs(60),
    );
    assert_suite_passed(&out);
}

#[test]
fn script_over_tls_without_verification_warns() {
    let dir = temp_dir("tls-unverified");
    let (key, cert) = make_cert(&dir);
    let params = params(
        &dir,
        &[
            ("tls-key", quoted(&key)),
            ("tls-cert", quoted(&cert)),
            ("tls-verify", "0".into()),
        ],
    );
    let out = valk(
        &[&params, "tests/http/roundtrip_tls.valk"],
        &[("VALK_TLS_VERIFY", "0")],
        Duration::from_secs(60),
    );
    assert_suite_passed(&out);
    assert!(
        out.stderr.contains("NOT verified"),
        "a warning\n{}",
        out.describe()
    );
}

#[test]
fn unverifiable_certificate_is_an_error() {
    let dir = temp_dir("tls-unknown-issuer");
    let (key, cert) = make_cert(&dir);
    let expr = format!(
        "(def {{s}} (await (http2/listen aio \"127.0.0.1\" 0 {} {}))) (print (try {{await (http2/connect aio \"127.0.0.1\" (http2/server-port s) \"localhost\")}} (\\ {{m}} {{m}}))) (shutdown 0)",
        quoted(&key),
        quoted(&cert)
    );
    let out = valk(&["-e", &expr], &[], Duration::from_secs(30));
    assert_eq!(out.status, Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains("TLS handshake with 127.0.0.1:")
            && out
                .stdout
                .contains("the server's certificate is refused: no trusted authority signed it"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_burst_past_the_servers_stream_limit_is_sent_again_not_failed() {
    // Fifty requests at once, before the server's SETTINGS (4 streams)
    // reached the client: the streams it refuses are sent again.
    let expr = "(def {s} (await (http2/listen aio \"127.0.0.1\" 0 \"\" \"\"))) \
        (def {c} (await (http2/connect aio \"127.0.0.1\" (http2/server-port s) \"\" \"h2c\"))) \
        (print (len (await (aio/all (map (\\ {i} {http2/send (http2/request \"GET\" \"http\" \"\" \"/\") c}) (range 0 50)))))) \
        (shutdown 0)";
    for _ in 0..3 {
        let out = valk(
            &["-e", expr],
            &[("VALK_HTTP_MAX_STREAMS", "4")],
            Duration::from_secs(30),
        );
        assert_eq!(out.status, Some(0), "{}", out.describe());
        assert_eq!(out.stdout.trim(), "50", "{}", out.describe());
    }
}

#[test]
fn a_missing_ssl_cert_file_is_a_warning() {
    let (key, cert) = make_cert(&temp_dir("tls-missing-bundle"));
    let expr = format!(
        "(def {{s}} (await (http2/listen aio \"127.0.0.1\" 0 {} {}))) (try {{await (http2/connect aio \"127.0.0.1\" (http2/server-port s))}} (\\ {{m}} {{m}})) (shutdown 0)",
        quoted(&key),
        quoted(&cert)
    );
    let out = valk(
        &["-e", &expr],
        &[("SSL_CERT_FILE", "/nonexistent/bundle.pem")],
        Duration::from_secs(30),
    );
    assert!(
        out.stderr
            .contains("warning: trusted certificates not loaded")
            && out.stderr.contains("/nonexistent/bundle.pem"),
        "{}",
        out.describe()
    );
}

#[test]
fn key_file_errors_say_what_is_wrong() {
    let (key, cert) = make_cert(&temp_dir("tls-key-a"));
    let (other_key, _) = make_cert(&temp_dir("tls-key-b"));
    let listen = |key: &str| {
        let expr = format!(
            "(print (try {{await (http2/listen aio \"127.0.0.1\" 0 {} {})}} (\\ {{m}} {{m}}))) (shutdown 0)",
            quoted(key),
            quoted(&cert)
        );
        valk(&["-e", &expr], &[], Duration::from_secs(30)).stdout
    };
    let mismatch = listen(&other_key);
    assert!(
        mismatch.contains("does not belong to the certificate"),
        "{mismatch}"
    );
    let not_a_key = listen(&cert);
    assert!(not_a_key.contains("no private key found in"), "{not_a_key}");
    assert!(
        listen(&key).contains("<http2_server"),
        "a fitting pair serves"
    );
}

#[test]
fn server_keeps_running_until_sigterm_and_finishes_in_flight_requests() {
    // With one isolate the waiting handler is on the isolate the signal
    // interrupts; with the default, on whichever took the connection.
    for isolates in ["1", "0"] {
        let dir = temp_dir("graceful");
        let envs: &[(&str, &str)] = if isolates == "1" {
            &[("VALK_ISOLATES", "1")]
        } else {
            &[]
        };
        let server = serve(&dir, None, envs);
        let port = server.port("app");
        assert_eq!(get(port, "/", false), "200 hello from valk");
        // A slow request (400 ms) in flight when the signal arrives.
        let expr = format!(
            "(print (http2/response-body (await (http2/send (http2/request \"GET\" \"http\" \"\" \"/slow\") (await (http2/connect aio \"127.0.0.1\" {} \"\" \"h2c\"))))))",
            port
        );
        let client = std::thread::spawn(move || valk(&["-e", &expr], &[], Duration::from_secs(20)));
        std::thread::sleep(Duration::from_millis(150));
        let out = server.terminate();
        assert_eq!(out.status, Some(0), "graceful exit\n{}", out.describe());
        let answered = client.join().unwrap();
        assert!(
            answered.stdout.contains("slow done"),
            "the in-flight request finished (isolates {isolates})\n{}",
            answered.describe()
        );
        assert!(
            get(port, "/", false).starts_with("error:"),
            "no longer listening"
        );
    }
}

#[test]
fn a_server_whose_stderr_is_closed_keeps_serving_and_stops_on_sigterm() {
    let dir = temp_dir("no-stderr");
    let params = params(
        &dir,
        &[("tls-key", "\"\"".into()), ("tls-cert", "\"\"".into())],
    );
    // The log pipe is gone: every write to standard error fails.
    let server = Server::start_with(&[&params, "tests/http/serve.valk"], &[], false);
    let port = server.port("app");
    // Each handler error is logged to standard error; with nowhere to log
    // it the client still gets a 500 and every isolate keeps serving.
    for _ in 0..8 {
        assert_eq!(get(port, "/boom", false), "500 Internal Server Error");
    }
    for _ in 0..4 {
        assert_eq!(get(port, "/", false), "200 hello from valk");
    }
    // The signal handler reports that it stops the servers: it must
    // still stop them.
    let out = server.terminate();
    assert_eq!(out.status, Some(0), "graceful exit\n{}", out.describe());
}

#[test]
fn shutdown_in_a_handler_ends_the_program_with_its_code() {
    let dir = temp_dir("quit");
    let server = serve(&dir, None, &[]);
    let port = server.port("app");
    get(port, "/quit", false);
    let out = server.wait(Duration::from_secs(20));
    assert_eq!(out.status, Some(7), "{}", out.describe());
}

#[test]
fn a_signal_ends_a_program_still_running_after_it_started_a_server() {
    // The program goes on after `http2/listen`: one waits in a loop of
    // `await`s, one computes without end. The signal stops the servers
    // and ends the program, as `(shutdown 0)` would.
    for (name, rest) in [
        (
            "awaits",
            "(fun {tick n} {do (await (aio/sleep 50)) (tick (+ n 1))}) (tick 0)",
        ),
        ("spins", "(fun {spin n} {spin (+ n 1)}) (spin 0)"),
    ] {
        let program = format!(
            "(def {{s}} (await (http2/listen aio \"127.0.0.1\" 0 \"\" \"\")))\n\
             (print \"app-port\" (http2/server-port s))\n(print \"ready\")\n{rest}\n"
        );
        let dir = temp_dir(&format!("signal-{name}"));
        let file = dir.join("program.valk");
        std::fs::write(&file, program).unwrap();
        let server = Server::start(&[file.to_str().unwrap()], &[]);
        let port = server.port("app");
        assert!(get(port, "/", false).starts_with("200"), "{name}");
        let out = server.terminate();
        assert_eq!(out.status, Some(0), "{name}\n{}", out.describe());
    }
}

#[test]
fn a_handler_waiting_at_await_does_not_hold_up_one_that_started_before_it() {
    // One isolate, whose program has ended: it only serves. /quick waits
    // 100 ms, /slow 400 ms; /slow is sent while /quick waits. Each is
    // answered when its own wait is over: /quick while /slow still waits
    // (a handler run inside the wait of another would finish first, and
    // hold the other's answer back until then).
    let dir = temp_dir("await-order");
    let server = serve(&dir, None, &[("VALK_ISOLATES", "1")]);
    let port = server.port("app");
    let client = format!(
        "(def {{c}} (await (http2/connect aio \"127.0.0.1\" {port} \"\" \"h2c\")))\n\
         (fun {{send path}} {{http2/send (http2/request \"GET\" \"http\" \"\" path) c}})\n\
         (def {{quick}} (send \"/quick\"))\n\
         (await (aio/sleep 30))\n\
         (def {{slow}} (send \"/slow\"))\n\
         (print \"quick:\" (http2/response-body (await quick)) (show slow))\n\
         (print \"then:\" (http2/response-body (await slow)))\n\
         (def {{many}} (map (\\ {{i}} {{send \"/hold\"}}) (range 0 100)))\n\
         (print \"held:\" (len (filter (\\ {{r}} {{== (http2/response-body r) \"1000 999\"}}) (await (aio/all many) 5000))))\n"
    );
    let out = valk(&["-e", &client], &[], Duration::from_secs(30));
    assert_eq!(out.status, Some(0), "{}", out.describe());
    assert_eq!(
        out.stdout,
        "quick: quick done <future pending>\nthen: slow done\nheld: 100\n()\n",
        "{}",
        out.describe()
    );
    let out = server.terminate();
    assert_eq!(out.status, Some(0), "{}", out.describe());
}

#[test]
fn sigint_stops_gracefully_too() {
    let dir = temp_dir("sigint");
    let server = serve(&dir, None, &[]);
    server.signal("INT");
    let out = server.wait(Duration::from_secs(20));
    assert_eq!(out.status, Some(0), "{}", out.describe());
}

#[test]
fn handlers_run_on_several_isolates_and_output_appears_once() {
    let dir = temp_dir("isolates");
    let server = serve(&dir, None, &[("VALK_ISOLATES", "3")]);
    let port = server.port("app");
    let expr = format!(
        "(def {{c}} (await (http2/connect aio \"127.0.0.1\" {} \"\" \"h2c\"))) \
         (def {{ids}} (map http2/response-body (await (aio/all (map (\\ {{i}} {{http2/send (http2/request \"GET\" \"http\" \"\" \"/isolate\") c}}) (range 0 2000)))))) \
         (print (filter (\\ {{i}} {{exists i ids}}) {{\"0\" \"1\" \"2\"}}))",
        port
    );
    // Each connection is served by one isolate, the least busy when it
    // was accepted: one client after another, the workers get their turn.
    // They start once the main isolate is serving; give them a moment.
    let mut seen = String::new();
    for _ in 0..20 {
        let out = valk(&["-e", &expr], &[], Duration::from_secs(30));
        seen.push_str(out.stdout.lines().next().unwrap_or_default());
        if seen.contains("\"1\"") && seen.contains("\"2\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = server.terminate();
    assert!(
        seen.contains("\"1\"") && seen.contains("\"2\""),
        "workers served requests: {}",
        seen
    );
    assert_eq!(out.status, Some(0), "{}", out.describe());
    assert_eq!(
        out.stdout.matches("ready").count(),
        1,
        "worker isolates print nothing while loading\n{}",
        out.describe()
    );
}

#[test]
fn a_busy_isolate_does_not_hold_up_connections_on_another() {
    let dir = temp_dir("busy-isolate");
    let server = serve(&dir, None, &[("VALK_ISOLATES", "2")]);
    let port = server.port("app");
    // Two connections from one client land on different isolates once
    // the worker serves (the least busy takes each new connection). One
    // computes for seconds; the other must answer meanwhile.
    let expr = format!(
        "(def {{c1}} (await (http2/connect aio \"127.0.0.1\" {port} \"\" \"h2c\"))) \
         (def {{c2}} (await (http2/connect aio \"127.0.0.1\" {port} \"\" \"h2c\"))) \
         (fun {{get c path}} {{http2/send (http2/request \"GET\" \"http\" \"\" path) c}}) \
         (def {{i1}} (http2/response-body (await (get c1 \"/isolate\")))) \
         (def {{i2}} (http2/response-body (await (get c2 \"/isolate\")))) \
         (if (== i1 i2) {{print \"same isolate\"}} {{do \
           (def {{busy}} (get c1 \"/spin\")) \
           (await (aio/sleep 100)) \
           (print \"other:\" (http2/response-body (await (get c2 \"/\") 5000))) \
           (print \"busy:\" (show busy)) \
           (print \"busy:\" (http2/response-body (await busy 60000)))}})"
    );
    let mut out = valk(&["-e", &expr], &[], Duration::from_secs(90));
    for _ in 0..20 {
        if !out.stdout.contains("same isolate") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        out = valk(&["-e", &expr], &[], Duration::from_secs(90));
    }
    assert_eq!(out.status, Some(0), "{}", out.describe());
    // (`-e` prints the value of the last expression after these.)
    let lines: Vec<&str> = out.stdout.lines().take(3).collect();
    assert_eq!(
        lines,
        [
            "other: hello from valk",
            "busy: <future pending>",
            "busy: spun"
        ],
        "{}",
        out.describe()
    );
    let out = server.terminate();
    assert_eq!(out.status, Some(0), "{}", out.describe());
}
