//! Shared by the HTTP/2 test files (tests/http*.rs): running `valk` with a
//! deadline, a background server that reports its ports, test certificates
//! made with rcgen, and checks for optional external tools.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub const VALK: &str = env!("CARGO_BIN_EXE_valk");
pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What one finished run produced.
#[derive(Debug)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    /// None when it was killed (timeout or signal).
    pub status: Option<i32>,
}

impl Outcome {
    pub fn describe(&self) -> String {
        format!(
            "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits for a child, killing it after `timeout`.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<i32> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("cannot wait for child") {
            return status.code();
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a command from the crate root with a deadline.
pub fn run(program: &str, args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> Outcome {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(ROOT)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {}", program, e));
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let status = wait_with_timeout(&mut child, timeout);
    Outcome {
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        status,
    }
}

/// Runs `valk ARGS…` with a deadline.
pub fn valk(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> Outcome {
    run(VALK, args, envs, timeout)
}

/// A fresh directory for one test's files.
pub fn temp_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("valk-http-{}-{}-{}", std::process::id(), name, n));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("cannot make a temp dir");
    dir
}

/// Writes a self-signed certificate for localhost and 127.0.0.1 into
/// `dir`; returns (key path, certificate path).
pub fn make_cert(dir: &Path) -> (String, String) {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let certified = rcgen::generate_simple_self_signed(names).expect("rcgen");
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    (
        key.to_string_lossy().into_owned(),
        cert.to_string_lossy().into_owned(),
    )
}

/// Writes a Valkyria file of `(def {name} value)` lines; values are given
/// as source text.
pub fn params(dir: &Path, defs: &[(&str, String)]) -> String {
    let mut text = String::new();
    for (name, value) in defs {
        text.push_str(&format!("(def {{{}}} {})\n", name, value));
    }
    let path = dir.join("params.valk");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// A Valkyria string literal.
pub fn quoted(s: &str) -> String {
    format!("{:?}", s)
}

/// Whether an external tool is installed; prints a notice when it is not.
pub fn tool(name: &str, test: &str) -> bool {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        println!(
            "notice: {} is not installed; skipping {} (apt-get install curl nghttp2-client nghttp2-server)",
            name, test
        );
    }
    found
}

/// A free loopback port (for peers that cannot pick their own).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `child` accepts connections on the port: true once
/// something does while the child still runs (so the port is its own);
/// false when the child exits first (it could not listen there) or on the
/// timeout.
pub fn wait_for_listener(child: &mut Child, port: u16, timeout: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child.try_wait().unwrap().is_none();
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A `valk` server running in the background.
pub struct Server {
    child: Child,
    pub ports: HashMap<String, u16>,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Server {
    /// Starts `valk ARGS…` and waits for its "ready" line, collecting the
    /// "NAME-port N" lines before it.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Server {
        Server::start_with(args, envs, true)
    }

    /// As `start`; with `keep_stderr` false the read end of the server's
    /// standard error is closed at once, so every write to it fails.
    pub fn start_with(args: &[&str], envs: &[(&str, &str)], keep_stderr: bool) -> Server {
        Server::launch(args, envs, keep_stderr, |line| line == "ready")
    }

    /// Starts `valk ARGS…` and waits for the first line of its output that
    /// starts with `prefix` (a program that does not print "ready", such
    /// as the examples); `lines` holds what it printed up to there.
    pub fn start_until(args: &[&str], envs: &[(&str, &str)], prefix: &str) -> Server {
        Server::launch(args, envs, true, |line| line.starts_with(prefix))
    }

    /// What the server printed up to the line it was waited for.
    pub fn lines(&self) -> &[String] {
        &self.stdout
    }

    fn launch(
        args: &[&str],
        envs: &[(&str, &str)],
        keep_stderr: bool,
        ready: impl Fn(&str) -> bool,
    ) -> Server {
        let mut cmd = Command::new(VALK);
        cmd.args(args)
            .current_dir(ROOT)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("cannot start valk");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr_pipe = child.stderr.take().unwrap();
        let stderr = if keep_stderr {
            Some(drain(stderr_pipe))
        } else {
            drop(stderr_pipe);
            Some(thread::spawn(String::new))
        };
        let mut server = Server {
            child,
            ports: HashMap::new(),
            lines,
            stdout: Vec::new(),
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match server.lines.recv_timeout(left) {
                Ok(line) => {
                    server.stdout.push(line.clone());
                    if ready(&line) {
                        break;
                    }
                    let mut parts = line.split_whitespace();
                    if let (Some(name), Some(port)) = (parts.next(), parts.next()) {
                        if let (Some(name), Ok(port)) = (name.strip_suffix("-port"), port.parse()) {
                            server.ports.insert(name.to_string(), port);
                        }
                    }
                }
                Err(_) => {
                    let _ = server.child.kill();
                    let err = server.stderr.take().unwrap().join().unwrap_or_default();
                    panic!(
                        "server did not get ready; stdout:\n{}\nstderr:\n{}",
                        server.stdout.join("\n"),
                        err
                    );
                }
            }
        }
        server
    }

    pub fn port(&self, name: &str) -> u16 {
        *self
            .ports
            .get(name)
            .unwrap_or_else(|| panic!("no {}-port line", name))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (TERM, INT).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{}", name), &self.child.id().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -{} failed", name);
    }

    /// Waits for the process to end by itself; returns its outcome.
    pub fn wait(mut self, timeout: Duration) -> Outcome {
        let status = wait_with_timeout(&mut self.child, timeout);
        let mut stdout = std::mem::take(&mut self.stdout);
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            stdout.push(line);
        }
        Outcome {
            stdout: stdout.join("\n"),
            stderr: self.stderr.take().unwrap().join().unwrap_or_default(),
            status,
        }
    }

    /// SIGTERM, then waits for a graceful exit.
    pub fn terminate(self) -> Outcome {
        self.signal("TERM");
        self.wait(Duration::from_secs(20))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts tests/http/serve.valk (with TLS servers when `tls` is given).
pub fn serve(dir: &Path, tls: Option<&(String, String)>, envs: &[(&str, &str)]) -> Server {
    let (key, cert) = match tls {
        Some((k, c)) => (quoted(k), quoted(c)),
        None => ("\"\"".to_string(), "\"\"".to_string()),
    };
    let params = params(dir, &[("tls-key", key), ("tls-cert", cert)]);
    Server::start(&[&params, "tests/http/serve.valk"], envs)
}

/// GETs `path` from a local server with the valk client; returns
/// "STATUS BODY" (or the Error's message).
pub fn get(port: u16, path: &str, tls: bool) -> String {
    let (scheme, connect) = if tls {
        (
            "https",
            format!("(http2/connect aio \"127.0.0.1\" {} \"localhost\")", port),
        )
    } else {
        (
            "http",
            format!("(http2/connect aio \"127.0.0.1\" {} \"\" \"h2c\")", port),
        )
    };
    let expr = format!(
        "(try {{do (= {{r}} (await (http2/send (http2/request \"GET\" \"{}\" \"\" {}) (await {})))) (print (http2/response-status r) (http2/response-body r))}} (\\ {{m}} {{print \"error:\" m}}))",
        scheme,
        quoted(path),
        connect
    );
    let out = valk(
        &["-e", &expr],
        &[("VALK_TLS_VERIFY", "0")],
        Duration::from_secs(20),
    );
    out.stdout.lines().next().unwrap_or_default().to_string()
}
