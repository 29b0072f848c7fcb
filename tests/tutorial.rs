//! Checks docs/TUTORIAL.md: every ```lisp block is run as a program of its
//! own (saved as `tutorial.valk` in a fresh scratch directory) and must
//! print exactly the ```output block that follows it. A following ```error
//! block means the program must exit with status 1 and each of its lines
//! must appear in standard error; otherwise it must exit with status 0.

use std::process::Command;

/// One runnable example of the tutorial.
struct Example {
    line: usize,
    code: String,
    output: Option<String>,
    error: Option<String>,
}

/// The fenced blocks of a Markdown text: (info string, body, first line).
fn fenced_blocks(text: &str) -> Vec<(String, String, usize)> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let mut body = String::new();
        for (_, inner) in lines.by_ref() {
            if inner.starts_with("```") {
                break;
            }
            body.push_str(inner);
            body.push('\n');
        }
        blocks.push((info.trim().to_string(), body, n + 1));
    }
    blocks
}

fn examples(text: &str) -> Vec<Example> {
    let blocks = fenced_blocks(text);
    let mut out = Vec::new();
    for (i, (info, body, line)) in blocks.iter().enumerate() {
        if info != "lisp" {
            continue;
        }
        let mut example = Example {
            line: *line,
            code: body.clone(),
            output: None,
            error: None,
        };
        for (next_info, next_body, _) in blocks.iter().skip(i + 1).take(2) {
            match next_info.as_str() {
                "output" if example.output.is_none() => example.output = Some(next_body.clone()),
                "error" if example.output.is_some() => example.error = Some(next_body.clone()),
                _ => break,
            }
        }
        out.push(example);
    }
    out
}

fn run(example: &Example, index: usize) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("valk-tutorial-{}-{}", std::process::id(), index));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("tutorial.valk"), &example.code).map_err(|e| e.to_string())?;
    let result = Command::new(env!("CARGO_BIN_EXE_valk"))
        .arg("tutorial.valk")
        .current_dir(&dir)
        .env_remove("VALK_PATH")
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let result = result.map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    let want_status = if example.error.is_some() { 1 } else { 0 };
    let mut problems = Vec::new();
    if result.status.code() != Some(want_status) {
        problems.push(format!(
            "exit status {:?}, expected {}",
            result.status.code(),
            want_status
        ));
    }
    if let Some(want) = &example.output {
        if stdout != *want {
            problems.push(format!(
                "output differs\n--- expected\n{}--- actual\n{}---",
                want, stdout
            ));
        }
    }
    for line in example.error.as_deref().unwrap_or("").lines() {
        if !line.trim().is_empty() && !stderr.contains(line) {
            problems.push(format!("stderr lacks {:?}", line));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}\n--- stderr\n{}", problems.join("\n"), stderr))
    }
}

#[test]
fn every_tutorial_example_prints_what_it_shows() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/TUTORIAL.md");
    let text = std::fs::read_to_string(path).expect("docs/TUTORIAL.md");
    let examples = examples(&text);
    assert!(
        examples.len() >= 15,
        "found only {} examples",
        examples.len()
    );
    let mut failures = Vec::new();
    for (i, example) in examples.iter().enumerate() {
        if example.output.is_none() {
            failures.push(format!(
                "== TUTORIAL.md line {}: no ```output block follows",
                example.line
            ));
            continue;
        }
        if let Err(why) = run(example, i) {
            failures.push(format!("== TUTORIAL.md line {}: {}", example.line, why));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
