//! Memory bounds of whole programs: garbage is reclaimed (cycles included)
//! and tail calls run in constant space. Peak RSS is read from the child's
//! `VmHWM` while it runs.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `src` with valk and returns (stdout, peak RSS in MiB).
fn run_measured(src: &str) -> (String, u64) {
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "valk-mem-{}-{}.valk",
        std::process::id(),
        src.len()
    ));
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(src.as_bytes()))
        .expect("write script");
    let mut child = Command::new(env!("CARGO_BIN_EXE_valk"))
        .arg(&path)
        .env("VALK_DISABLE_AIO", "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn valk");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    let started = Instant::now();
    loop {
        if let Ok(status) = std::fs::read_to_string(&status_path) {
            for line in status.lines() {
                if let Some(v) = line.strip_prefix("VmHWM:") {
                    let kb = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    peak_kb = peak_kb.max(kb);
                }
            }
        }
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "program did not finish"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "valk failed: {:?}", out.status);
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        peak_kb / 1024,
    )
}

#[test]
fn ten_million_tail_calls_in_constant_memory() {
    let (out, mb) =
        run_measured("(fun {loop n acc} {if (== n 0) {acc} {loop (- n 1) (+ acc 1)}})\n(print (loop 10000000 0))\n");
    assert_eq!(out, "10000000");
    assert!(mb < 50, "peak RSS {mb} MiB");
}

#[test]
fn self_referencing_closures_are_collected() {
    // Each iteration makes a closure whose scope holds the closure itself.
    let src = "(fun {make n} {do (= {self} (\\ {x} {self})) self})\n\
               (fun {go n} {if (== n 0) {\"ok\"} {do (make n) (go (- n 1))}})\n\
               (print (go 1000000))\n";
    let (out, mb) = run_measured(src);
    assert_eq!(out, "ok");
    assert!(mb < 100, "peak RSS {mb} MiB");
}

#[test]
fn short_lived_lists_are_collected() {
    let src = "(fun {go n} {if (== n 0) {\"ok\"} {do (range 0 1000) (go (- n 1))}})\n(print (go 200000))\n";
    let (out, mb) = run_measured(src);
    assert_eq!(out, "ok");
    assert!(mb < 100, "peak RSS {mb} MiB");
}

#[test]
fn discarded_map_versions_are_collected() {
    // Each step makes new versions of a 1001-entry map and drops the old.
    let src = "(fun {fill m n} {if (== n 0) {m} {fill (map/put m n n) (- n 1)}})\n\
               (def {base} (fill (map/new {}) 1000))\n\
               (fun {go m n} {if (== n 0) {map/len m} {go (map/put (map/remove m (% n 1000)) (% n 1000) n) (- n 1)}})\n\
               (print (go base 300000))\n";
    let (out, mb) = run_measured(src);
    assert_eq!(out, "1001");
    assert!(mb < 150, "peak RSS {mb} MiB");
}

#[test]
fn a_million_live_cells_stay_right_through_incremental_major_collections() {
    // `big` keeps 1,000,000 cells live. Each step makes a 100,000-cell list
    // straight into the old generation and drops it, so the old generation
    // keeps filling with garbage and goes through one major collection
    // after another; meanwhile the loop's frame (an old scope, rewritten
    // through the write barrier) gathers young lists made by `map`.
    let src = "(def {big} (range 0 1000000))\n\
               (fun {step i kept} {do (= {recent} (range i (+ i 100000))) \
                 (= {fresh} (map (\\ {x} {* x 2}) (range 0 100))) \
                 (if (== (% i 7) 0) {cons fresh kept} {kept})})\n\
               (fun {run i n kept} {if (== i n) {kept} {run (+ i 1) n (step i kept)}})\n\
               (def {kept} (run 0 400 {}))\n\
               (fun {gc-get key} {snd (fst (filter (\\ {entry} {== (fst entry) key}) (gc/stats {})))})\n\
               (print (len big) (foldl + 0 big) (len kept) \
                 (foldl + 0 (map (\\ {l} {foldl + 0 l}) kept)) (>= (gc-get \"major-cycles\") 5))\n";
    let (out, mb) = run_measured(src);
    assert_eq!(out, "1000000 499999500000 58 574200 1");
    assert!(mb < 400, "peak RSS {mb} MiB");
}
