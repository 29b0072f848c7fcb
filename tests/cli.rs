//! The `valk` command line: which arguments are files to run and which
//! become the program's `args`, `--`, `-e`, `#!` scripts, and where
//! `import` looks (next to the importing file, then `VALK_PATH`).

use std::path::PathBuf;
use std::process::Command;

/// A scratch directory with the given files; removed by the caller.
fn scratch(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("valk-cli-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, text) in files {
        std::fs::write(dir.join(file), text).unwrap();
    }
    dir
}

/// Runs `valk` in `dir` with `args`; returns (status, stdout, stderr).
fn valk(dir: &PathBuf, args: &[&str]) -> (i32, String, String) {
    valk_with(dir, args, None)
}

/// Runs `valk` with `VALK_PATH` set to `search` (unset when `None`).
fn valk_with(dir: &PathBuf, args: &[&str], search: Option<&str>) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_valk"));
    command.args(args).current_dir(dir).env_remove("VALK_PATH");
    if let Some(search) = search {
        command.env("VALK_PATH", search);
    }
    let out = command.output().expect("cannot run valk");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn arguments_after_the_script_are_args() {
    let dir = scratch(
        "args",
        &[
            ("main.valk", "(print \"main\" args)"),
            ("more.valk", "(print \"more\" (len args))"),
        ],
    );
    let run = |args: &[&str]| valk(&dir, args).1;
    assert_eq!(run(&["main.valk"]), "main {}\n");
    assert_eq!(
        run(&["main.valk", "a", "b c", "-x", "--flag"]),
        "main {\"a\" \"b c\" \"-x\" \"--flag\"}\n"
    );
    // Further .valk files run in order, until the first other argument.
    assert_eq!(
        run(&["main.valk", "more.valk", "x"]),
        "main {\"x\"}\nmore 1\n"
    );
    assert_eq!(
        run(&["main.valk", "x", "more.valk"]),
        "main {\"x\" \"more.valk\"}\n"
    );
    // `--` ends the files; everything after it is an argument.
    assert_eq!(
        run(&["main.valk", "--", "more.valk", "-e"]),
        "main {\"more.valk\" \"-e\"}\n"
    );
    assert_eq!(run(&["main.valk", "a", "--", "b"]), "main {\"a\" \"b\"}\n");
    assert_eq!(run(&["-e", "(len args)", "--", "p", "q"]), "2\n");
    assert_eq!(run(&["-e", "args"]), "{}\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_script_is_an_error() {
    let dir = scratch("missing", &[]);
    let (status, _, stderr) = valk(&dir, &["nope.valk", "arg"]);
    assert_eq!(status, 1);
    assert!(stderr.contains("cannot read `nope.valk`"), "{}", stderr);
    // No call site to show: not a position in the prelude that ran before.
    assert!(!stderr.contains("\n  at "), "{}", stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_shebang_line_is_skipped() {
    let dir = scratch(
        "shebang",
        &[(
            "tool",
            "#!/usr/bin/env valk\n(print \"ran\" args)\n(error \"line 3\")\n",
        )],
    );
    let (status, stdout, stderr) = valk(&dir, &["tool", "x"]);
    assert_eq!(status, 1);
    assert_eq!(stdout, "ran {\"x\"}\n");
    assert!(stderr.contains("tool:3:"), "{}", stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn import_looks_next_to_the_importer_then_in_valk_path() {
    let dir = scratch(
        "import",
        &[
            ("main.valk", "(import \"app/mod\") (print (twice 4) shared)"),
            ("local.valk", "(def {local} \"from the current directory\")"),
        ],
    );
    std::fs::create_dir_all(dir.join("app")).unwrap();
    std::fs::create_dir_all(dir.join("lib1")).unwrap();
    std::fs::create_dir_all(dir.join("lib2")).unwrap();
    // app/mod.valk imports "helpers": not next to it, so from VALK_PATH.
    std::fs::write(dir.join("app/mod.valk"), "(import \"helpers\")").unwrap();
    std::fs::write(
        dir.join("lib2/helpers.valk"),
        "(fun {twice x} {* 2 x}) (import \"shared.valk\")",
    )
    .unwrap();
    std::fs::write(dir.join("lib2/shared.valk"), "(def {shared} \"lib2\")").unwrap();
    std::fs::write(dir.join("lib1/shared.valk"), "(def {shared} \"lib1\")").unwrap();

    let (status, stdout, stderr) = valk_with(&dir, &["main.valk"], Some("lib1:lib2"));
    assert_eq!(status, 0, "{}", stderr);
    // shared.valk is found next to helpers.valk (lib2) before VALK_PATH's lib1.
    assert_eq!(stdout, "8 lib2\n");

    let (status, _, stderr) = valk_with(&dir, &["main.valk"], None);
    assert_eq!(status, 1);
    assert!(
        stderr.contains("`import` cannot find `helpers`"),
        "{}",
        stderr
    );

    // From -e (no file), relative imports start in the current directory.
    let (_, stdout, _) = valk(&dir, &["-e", "(import \"local\")", "-e", "local"]);
    assert_eq!(stdout, "()\n\"from the current directory\"\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_exit_status_is_the_codes_low_eight_bits() {
    let dir = scratch("status", &[]);
    for (expr, status) in [
        ("(exit 3)", 3),
        ("(exit -1)", 255),
        ("(exit -2)", 254),
        ("(exit 256)", 0),
        ("(exit 257)", 1),
        ("(shutdown -1)", 255),
        ("(shutdown)", 0),
        // Too many arguments: an Error, not an exit with the first.
        ("(exit 5 2)", 1),
        ("(shutdown 5 2)", 1),
    ] {
        assert_eq!(valk(&dir, &["-e", expr]).0, status, "{}", expr);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_source_file_that_is_not_utf8_is_an_error_at_its_position() {
    let dir = scratch("utf8", &[]);
    std::fs::write(
        dir.join("bad.valk"),
        b"(print 1)\n  (print \"\xc3\xa9\xff\")\n",
    )
    .unwrap();
    let (status, stdout, stderr) = valk(&dir, &["bad.valk"]);
    assert_eq!(status, 1);
    assert_eq!(stdout, "");
    assert!(stderr.contains("not valid UTF-8"), "{}", stderr);
    // Line 2, after two spaces, `(print "` and one character.
    assert!(stderr.contains("at bad.valk:2:12"), "{}", stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_repl_skips_a_line_that_is_not_utf8_and_goes_on() {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_valk"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run valk");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"(print \"a\xffb\")\n(+ 1 2)\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{}", stderr);
    assert!(stderr.contains("not valid UTF-8"), "{}", stderr);
    assert!(stdout.lines().any(|l| l == "3"), "{}", stdout);
}
