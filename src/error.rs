//! Error values: a message, the place it was raised and the call trace it
//! unwound through. Every runtime and read error is built and rendered here.

use std::fmt;

/// A position in source text. `file` indexes the interpreter's file table
/// (0 means "no known source").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub file: u32,
    pub line: u32,
    pub col: u32,
}

impl Span {
    pub const NONE: Span = Span {
        file: 0,
        line: 0,
        col: 0,
    };

    pub fn is_known(self) -> bool {
        self.line != 0
    }
}

/// One step of a call trace: the function called and where the call was.
#[derive(Clone, Debug)]
pub struct TraceEntry {
    pub name: String,
    pub span: Span,
}

/// The payload of an Error value.
#[derive(Clone, Debug)]
pub struct ErrorData {
    pub message: String,
    pub span: Span,
    pub trace: Vec<TraceEntry>,
    /// Trace entries not kept because the trace was full.
    pub dropped: usize,
}

/// How many trace entries are kept; deeper traces keep the innermost ones
/// and count the rest.
pub const TRACE_LIMIT: usize = 24;

impl ErrorData {
    pub fn new(message: impl Into<String>, span: Span) -> Self {
        ErrorData {
            message: message.into(),
            span,
            trace: Vec::new(),
            dropped: 0,
        }
    }

    /// Records that the error unwound through a call of `name` at `span`.
    pub fn push_trace(&mut self, name: String, span: Span) {
        if self.trace.len() < TRACE_LIMIT {
            self.trace.push(TraceEntry { name, span });
        } else {
            self.dropped += 1;
        }
    }
}

/// A read (syntax) error with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadError {
    pub message: String,
    pub span: Span,
}

/// Formats a span as `file:line:col` given the interpreter's file table.
pub fn format_span(files: &[String], span: Span) -> String {
    let file = files
        .get(span.file as usize)
        .map(String::as_str)
        .unwrap_or("<unknown>");
    format!("{}:{}:{}", file, span.line, span.col)
}

/// Renders an error for a human: message, location and trace.
pub fn render(files: &[String], err: &ErrorData) -> String {
    let mut out = format!("Error: {}", err.message);
    if err.span.is_known() {
        out.push_str(&format!("\n  at {}", format_span(files, err.span)));
    }
    for entry in &err.trace {
        if entry.span.is_known() {
            out.push_str(&format!(
                "\n  in {} called at {}",
                entry.name,
                format_span(files, entry.span)
            ));
        } else {
            out.push_str(&format!("\n  in {}", entry.name));
        }
    }
    if err.dropped > 0 {
        out.push_str(&format!("\n  ... {} more frames", err.dropped));
    }
    out
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}
