//! The interactive REPL: a rustyline editor with persistent history,
//! multi-line input until brackets balance, bracket highlighting and
//! completion of bound names (help on a name is the `doc` builtin).
//! Ctrl-C abandons the line being typed or interrupts a running
//! evaluation; Ctrl-D exits. Nothing typed ends the REPL except `exit`: errors, interrupts and even internal panics are
//! reported and the session (with its definitions) carries on.

use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::{Highlighter, MatchingBracketHighlighter};
use rustyline::hint::Hinter;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Config, Context, Editor, Helper};

use crate::reader;
use crate::Interpreter;

pub const PROMPT: &str = "valkyria> ";
const CONTINUATION: &str = "      ... ";

/// Editor helper: validation, highlighting, completion.
struct ReplHelper {
    brackets: MatchingBracketHighlighter,
    names: Vec<String>,
}

impl Validator for ReplHelper {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        if reader::is_complete(ctx.input()) {
            Ok(ValidationResult::Valid(None))
        } else {
            Ok(ValidationResult::Incomplete)
        }
    }
}

impl Highlighter for ReplHelper {
    fn highlight<'l>(&self, line: &'l str, pos: usize) -> Cow<'l, str> {
        self.brackets.highlight(line, pos)
    }

    fn highlight_char(&self, line: &str, pos: usize, forced: bool) -> bool {
        self.brackets.highlight_char(line, pos, forced)
    }

    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(
        &'s self,
        prompt: &'p str,
        default: bool,
    ) -> Cow<'b, str> {
        if default {
            Cow::Borrowed(prompt)
        } else {
            Cow::Borrowed(CONTINUATION)
        }
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
}

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let start = line[..pos]
            .rfind(|c: char| !(c.is_ascii() && reader::is_symbol_byte(c as u8)))
            .map_or(0, |i| i + 1);
        let prefix = &line[start..pos];
        if prefix.is_empty() {
            return Ok((pos, Vec::new()));
        }
        let matches = self
            .names
            .iter()
            .filter(|n| n.starts_with(prefix))
            .map(|n| Pair {
                display: n.clone(),
                replacement: n.clone(),
            })
            .collect();
        Ok((start, matches))
    }
}

impl Helper for ReplHelper {}

fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VALK_HISTORY") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".valk_history"))
}

/// What one REPL entry came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// The readable form of its value.
    Value(String),
    /// A rendered Error (an internal panic is reported as one too).
    Error(String),
    /// `exit` (or `shutdown` outside the REPL) asked to end with this code.
    Exit(i32),
}

/// Evaluates one entry, catching internal panics as a last resort: they
/// are reported as an Error and the session, with its definitions, goes on.
pub fn evaluate(interp: &mut Interpreter, text: &str) -> Entry {
    interp.vm.interrupt.store(false, Ordering::Relaxed);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let v = interp.eval_str(text, "<repl>")?;
        // A value too large to print is an Error, not a flood of text.
        interp.vm.span = crate::error::Span::NONE;
        match interp.vm.format_checked(v, true) {
            Ok(shown) => Ok(shown),
            Err(e) => Err(interp.vm.render_error(e)),
        }
    }));
    let entry = match outcome {
        Ok(Ok(shown)) => Entry::Value(shown),
        Ok(Err(rendered)) => Entry::Error(rendered),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown".into());
            interp.vm.recover();
            Entry::Error(format!(
                "Error: internal error: {} (the session continues)",
                what
            ))
        }
    };
    match interp.exit_requested() {
        Some(code) => Entry::Exit(code),
        None => entry,
    }
}

/// Evaluates one entry and prints its value or error. Returns the exit
/// code if the entry asked to end the program.
pub fn eval_entry(interp: &mut Interpreter, text: &str) -> Option<i32> {
    match evaluate(interp, text) {
        Entry::Value(shown) => println!("{}", shown),
        Entry::Error(rendered) => eprintln!("{}", rendered),
        Entry::Exit(code) => return Some(code),
    }
    None
}

/// Lines in a row that are not UTF-8 the REPL skips before it stops.
const MAX_UNDECODABLE: u32 = 1000;

/// Runs the REPL until Ctrl-D or `exit`; returns the exit status.
pub fn run(interp: &mut Interpreter) -> i32 {
    let flag = interp.vm.interrupt.clone();
    // Ctrl-C while evaluating: the VM sees the flag at its next call.
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed));
    let config = Config::builder()
        .auto_add_history(false)
        .max_history_size(10_000)
        .map(|b| b.build());
    let config = config.unwrap_or_default();
    let mut editor: Editor<ReplHelper, rustyline::history::DefaultHistory> =
        match Editor::with_config(config) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("valk: cannot start the line editor: {}", e);
                return 1;
            }
        };
    let history = history_path();
    if let Some(p) = &history {
        let _ = editor.load_history(p);
    }
    println!(
        "Valkyria {} — (doc f) describes f, Tab completes names, Ctrl-D exits, Ctrl-C interrupts",
        env!("CARGO_PKG_VERSION")
    );
    let mut code = 0;
    // Lines in a row that were not text: past a bound the input is taken
    // to be broken rather than a user's typing, and the REPL stops.
    let mut undecodable = 0;
    loop {
        let names = interp
            .vm
            .global_names()
            .into_iter()
            .map(|s| interp.vm.syms.name(s).to_string())
            .collect();
        editor.set_helper(Some(ReplHelper {
            brackets: MatchingBracketHighlighter::new(),
            names,
        }));
        match editor.readline(PROMPT) {
            Ok(line) => {
                undecodable = 0;
                if line.trim().is_empty() {
                    continue;
                }
                let _ = editor.add_history_entry(line.as_str());
                if let Some(p) = &history {
                    let _ = editor.save_history(p);
                }
                if let Some(c) = eval_entry(interp, &line) {
                    code = c;
                    break;
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            // Bytes that are not UTF-8: that line is skipped (read and
            // dropped) and the session goes on.
            Err(ReadlineError::Io(e))
                if e.kind() == std::io::ErrorKind::InvalidData && undecodable < MAX_UNDECODABLE =>
            {
                undecodable += 1;
                eprintln!("Error: the line is not valid UTF-8 text; it was skipped");
            }
            Err(e) => {
                eprintln!("valk: input error: {}", e);
                code = 1;
                break;
            }
        }
    }
    code
}
