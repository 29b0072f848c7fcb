//! Golden programs: owns `tests/golden/*.valk`. Each program is run by the
//! `valk` binary from the crate root (30 s limit). Its stdout must equal
//! `NAME.out` (timings `123 µs` are compared as `N µs`), its exit code must
//! equal `NAME.status` (default 0), and every non-empty line of the optional
//! `NAME.err` must occur in its stderr. All mismatches are reported together.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);

/// What one run of `valk` produced.
struct Outcome {
    stdout: String,
    stderr: String,
    /// `None` when the process was killed (timeout or signal).
    status: Option<i32>,
    timed_out: bool,
}

/// Replaces every run of digits directly followed by ` µs` with `N µs`.
fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        out.push_str(&rest[..start]);
        let digits = &rest[start..];
        let len = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        rest = &digits[len..];
        if rest.starts_with(" µs") {
            out.push('N');
        } else {
            out.push_str(&digits[..len]);
        }
    }
    out.push_str(rest);
    out
}

/// Drains a child's pipe on its own thread so a chatty program cannot block.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs `valk <program>` from the crate root, killing it after `TIMEOUT`.
fn run(program: &Path) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_valk"))
        .arg(program)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start valk");
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let started = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot wait for valk") {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("cannot reap valk");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        status: status.code(),
        timed_out,
    }
}

/// Checks one program against its expectations; `Err` describes the mismatch.
fn check(program: &Path) -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let expected = |ext: &str| fs::read_to_string(root.join(program.with_extension(ext))).ok();
    let Some(want_stdout) = expected("out") else {
        return Err("missing .out file".to_string());
    };
    let want_status: i32 = match expected("status") {
        Some(text) => text
            .trim()
            .parse()
            .map_err(|_| "bad .status file".to_string())?,
        None => 0,
    };
    let outcome = run(program);
    let mut problems = Vec::new();
    if outcome.timed_out {
        problems.push(format!("timed out after {} s", TIMEOUT.as_secs()));
    }
    if normalise(&outcome.stdout) != normalise(&want_stdout) {
        problems.push(format!(
            "stdout differs\n--- expected\n{}--- actual\n{}---",
            want_stdout, outcome.stdout
        ));
    }
    if outcome.status != Some(want_status) {
        problems.push(format!(
            "exit status {:?}, expected {}",
            outcome.status, want_status
        ));
    }
    for line in expected("err").unwrap_or_default().lines() {
        if !line.trim().is_empty() && !outcome.stderr.contains(line) {
            problems.push(format!("stderr lacks {:?}", line));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}\n--- stderr\n{}---",
            problems.join("\n"),
            outcome.stderr
        ))
    }
}

#[test]
fn golden_programs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut programs: Vec<PathBuf> = fs::read_dir(root.join("tests/golden"))
        .expect("tests/golden is missing")
        .map(|entry| entry.unwrap().file_name())
        .filter(|name| Path::new(name).extension().is_some_and(|ext| ext == "valk"))
        .map(|name| Path::new("tests/golden").join(name))
        .collect();
    programs.sort();

    // Programs are independent: run them on a few worker threads.
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let workers = thread::available_parallelism().map_or(2, |n| n.get().min(8));
    thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Some(program) = programs.get(next.fetch_add(1, Ordering::SeqCst)) {
                    if let Err(why) = check(program) {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("== {}: {}", program.display(), why));
                    }
                }
            });
        }
    });

    println!("golden: {} files checked", programs.len());
    let mut failures = failures.into_inner().unwrap();
    failures.sort();
    if !failures.is_empty() {
        panic!(
            "{} of {} golden programs failed:\n\n{}",
            failures.len(),
            programs.len(),
            failures.join("\n\n")
        );
    }
}
