//! The reader: source text -> values. Every list cell it builds carries the
//! `file:line:col` of its element so compiled code and errors can point at
//! source. Read errors name the position and what was expected. Nesting is
//! bounded by `MAX_NESTING`; the reader itself never recurses.

use crate::error::{ReadError, Span};
use crate::heap::Heap;
use crate::symbol::Symbols;
use crate::value::Value;

/// Deepest bracket nesting accepted in source.
pub const MAX_NESTING: usize = 10_000;

/// Bytes that may appear in a symbol (or number) token.
const SYMBOL_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'_' | b'+'
                    | b'-'
                    | b'*'
                    | b'/'
                    | b'\\'
                    | b'='
                    | b'<'
                    | b'>'
                    | b'!'
                    | b'&'
                    | b'?'
                    | b'%'
                    | b'.'
                    | b':'
                    | b'$'
                    | b'^'
                    | b'~'
                    | b'|'
            );
        b += 1;
    }
    table
};

#[inline]
pub fn is_symbol_byte(b: u8) -> bool {
    SYMBOL_BYTES[b as usize]
}

/// What a token of symbol characters denotes.
pub enum Atom {
    Int(i64),
    Float(f64),
    Symbol,
    IntOutOfRange,
}

/// Classifies a token: integer, float, or symbol.
pub fn classify(tok: &str) -> Atom {
    let b = tok.as_bytes();
    let digits_from = if b.first() == Some(&b'-') { 1 } else { 0 };
    let body = &b[digits_from..];
    if body.is_empty() || !body[0].is_ascii_digit() {
        return Atom::Symbol;
    }
    if body.iter().all(u8::is_ascii_digit) {
        return match tok.parse::<i64>() {
            Ok(n) => Atom::Int(n),
            Err(_) => Atom::IntOutOfRange,
        };
    }
    // digits [. digits*] [e [+-] digits]
    let mut i = 0;
    while i < body.len() && body[i].is_ascii_digit() {
        i += 1;
    }
    let mut is_float = false;
    if i < body.len() && body[i] == b'.' {
        is_float = true;
        i += 1;
        while i < body.len() && body[i].is_ascii_digit() {
            i += 1;
        }
    }
    if i < body.len() && (body[i] == b'e' || body[i] == b'E') {
        let mut j = i + 1;
        if j < body.len() && (body[j] == b'+' || body[j] == b'-') {
            j += 1;
        }
        let start = j;
        while j < body.len() && body[j].is_ascii_digit() {
            j += 1;
        }
        if j == start {
            return Atom::Symbol;
        }
        is_float = true;
        i = j;
    }
    if is_float && i == body.len() {
        match tok.parse::<f64>() {
            Ok(f) => Atom::Float(f),
            Err(_) => Atom::Symbol,
        }
    } else {
        Atom::Symbol
    }
}

/// A bracket being read. Its elements so far are `items[start..]` of the
/// reader's one stack of elements, which every open list shares: a list
/// needs no vector of its own, grown as it is read and freed after.
struct Open {
    close: u8,
    open: char,
    span: Span,
    start: usize,
}

struct Lexer<'a> {
    src: &'a [u8],
    text: &'a str,
    pos: usize,
    line: u32,
    col: u32,
    file: u32,
}

impl<'a> Lexer<'a> {
    fn span(&self) -> Span {
        Span {
            file: self.file,
            line: self.line,
            col: self.col,
        }
    }

    fn bump(&mut self) -> u8 {
        let b = self.src[self.pos];
        self.pos += 1;
        if b == b'\n' {
            self.line += 1;
            self.col = 1;
        } else if b & 0xC0 != 0x80 {
            self.col += 1;
        }
        b
    }

    fn error(&self, message: String, span: Span) -> ReadError {
        ReadError { message, span }
    }

    /// Skips whitespace and comments.
    fn skip_trivia(&mut self) {
        while let Some(&b) = self.src.get(self.pos) {
            match b {
                b'\n' => {
                    self.pos += 1;
                    self.line += 1;
                    self.col = 1;
                }
                b' ' | b'\t' | b'\r' | 0x0b | 0x0c => {
                    self.pos += 1;
                    self.col += 1;
                }
                b';' => {
                    // To the end of the line, in one scan; the newline is
                    // left for the loop.
                    let rest = &self.src[self.pos..];
                    let len = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
                    self.advance_on_line(len);
                }
                _ => break,
            }
        }
    }

    /// Moves past `len` bytes that hold no newline (columns count
    /// characters: UTF-8 continuation bytes add none).
    fn advance_on_line(&mut self, len: usize) {
        let run = &self.src[self.pos..self.pos + len];
        self.col += run.iter().filter(|&&c| c & 0xC0 != 0x80).count() as u32;
        self.pos += len;
    }

    fn read_string(&mut self, start: Span) -> Result<String, ReadError> {
        self.bump(); // opening quote
        let mut out = String::new();
        loop {
            if self.pos >= self.src.len() {
                return Err(self.error(
                    format!(
                        "unexpected end of input: expected '\"' to close string at {}:{}",
                        start.line, start.col
                    ),
                    self.span(),
                ));
            }
            // Copy a run of plain characters at once: up to the next quote
            // or backslash, a line at a time.
            let run_start = self.pos;
            loop {
                let rest = &self.src[self.pos..];
                let len = rest
                    .iter()
                    .position(|&c| matches!(c, b'"' | b'\\' | b'\n'))
                    .unwrap_or(rest.len());
                self.advance_on_line(len);
                match self.src.get(self.pos) {
                    Some(b'\n') => {
                        self.bump();
                    }
                    _ => break,
                }
            }
            out.push_str(&self.text[run_start..self.pos]);
            if self.pos >= self.src.len() {
                continue;
            }
            let esc_span = self.span();
            if self.bump() == b'"' {
                return Ok(out);
            }
            if self.pos >= self.src.len() {
                continue;
            }
            let c = self.bump();
            match c {
                b'a' => out.push('\x07'),
                b'b' => out.push('\x08'),
                b'f' => out.push('\x0c'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'v' => out.push('\x0b'),
                b'0' => out.push('\0'),
                b'\\' => out.push('\\'),
                b'\'' => out.push('\''),
                b'"' => out.push('"'),
                b'x' => {
                    let hex = self.text.get(self.pos..self.pos + 2).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(v) if hex.len() == 2 && v < 0x80 => {
                            self.bump();
                            self.bump();
                            out.push(v as char);
                        }
                        _ => {
                            return Err(self.error(
                                "invalid escape: expected two hex digits (00-7f) after \\x".into(),
                                esc_span,
                            ))
                        }
                    }
                }
                b'u' => {
                    let rest = &self.text[self.pos..];
                    let close = rest.find('}');
                    let ok = rest.starts_with('{') && close.is_some_and(|c| c > 1 && c <= 7);
                    let cp = if ok {
                        u32::from_str_radix(&rest[1..close.unwrap_or(1)], 16)
                            .ok()
                            .and_then(char::from_u32)
                    } else {
                        None
                    };
                    match cp {
                        Some(ch) => {
                            for _ in 0..=close.unwrap_or(0) {
                                self.bump();
                            }
                            out.push(ch);
                        }
                        None => {
                            return Err(self.error(
                                "invalid escape: expected \\u{HEX} with a valid code point".into(),
                                esc_span,
                            ))
                        }
                    }
                }
                other => {
                    let shown = if other.is_ascii_graphic() {
                        (other as char).to_string()
                    } else {
                        format!("\\x{:02x}", other)
                    };
                    return Err(
                        self.error(format!("invalid escape '\\{}' in string", shown), esc_span)
                    );
                }
            }
        }
    }
}

/// Where the text after `text` starts, in file `file`: its line and
/// column as the reader counts them (columns in characters), for errors
/// about what follows it.
pub fn end_position(text: &str, file: u32) -> Span {
    let line_start = text.rfind('\n').map_or(0, |i| i + 1);
    Span {
        file,
        line: (text.bytes().filter(|&b| b == b'\n').count() + 1) as u32,
        col: (text[line_start..].chars().count() + 1) as u32,
    }
}

/// Reads every top-level form of `src`. `file` indexes the interpreter's
/// file table and is recorded in every span.
pub fn read_all(
    heap: &mut Heap,
    syms: &mut Symbols,
    src: &str,
    file: u32,
) -> Result<Vec<(Value, Span)>, ReadError> {
    let mut lx = Lexer {
        src: src.as_bytes(),
        text: src,
        pos: 0,
        line: 1,
        col: 1,
        file,
    };
    // A `#!` first line lets a script be run directly (`#!/usr/bin/env valk`).
    if src.starts_with("#!") {
        while lx.pos < lx.src.len() && lx.src[lx.pos] != b'\n' {
            lx.bump();
        }
    }
    // Dense source makes an object for every three or four bytes (a
    // token and the space after it; commented code fewer): room for that
    // many spares growing the heap's object table, and copying it, again
    // and again while a large file is read. Only what is used is touched.
    heap.reserve(src.len() / 3);
    let mut top: Vec<(Value, Span)> = Vec::new();
    let mut stack: Vec<Open> = Vec::new();
    let mut items: Vec<(Value, Span)> = Vec::new();
    loop {
        lx.skip_trivia();
        let span = lx.span();
        if lx.pos >= lx.src.len() {
            if let Some(open) = stack.last() {
                return Err(lx.error(
                    format!(
                        "unexpected end of input: expected '{}' to close '{}' at {}:{}",
                        open.close as char, open.open, open.span.line, open.span.col
                    ),
                    span,
                ));
            }
            return Ok(top);
        }
        let b = lx.src[lx.pos];
        let value = match b {
            b'(' | b'{' => {
                if stack.len() >= MAX_NESTING {
                    return Err(lx.error(
                        format!("nesting too deep (limit {} levels)", MAX_NESTING),
                        span,
                    ));
                }
                lx.bump();
                stack.push(Open {
                    close: if b == b'(' { b')' } else { b'}' },
                    open: b as char,
                    span,
                    start: items.len(),
                });
                continue;
            }
            b')' | b'}' => {
                lx.bump();
                match stack.pop() {
                    Some(open) if open.close == b => {
                        let cells = heap.list_cells(items.drain(open.start..).rev(), None);
                        let v = match (open.open, cells) {
                            ('(', Some(g)) => Value::S(g),
                            ('(', None) => Value::Unit,
                            (_, Some(g)) => Value::Q(g),
                            (_, None) => Value::Nil,
                        };
                        // The list's own span is where it opened.
                        push_item(&stack, &mut items, &mut top, v, open.span);
                        continue;
                    }
                    Some(open) => {
                        return Err(lx.error(
                            format!(
                                "unexpected '{}': expected '{}' to close '{}' at {}:{}",
                                b as char,
                                open.close as char,
                                open.open,
                                open.span.line,
                                open.span.col
                            ),
                            span,
                        ))
                    }
                    None => {
                        return Err(lx.error(
                            format!(
                                "unexpected '{}' with no matching opening bracket",
                                b as char
                            ),
                            span,
                        ))
                    }
                }
            }
            b'"' => {
                let s = lx.read_string(span)?;
                heap.string_value(&s)
            }
            b if is_symbol_byte(b) => {
                // Symbol bytes are ASCII and never newlines: advance in bulk.
                let start = lx.pos;
                let mut end = start;
                while end < lx.src.len() && is_symbol_byte(lx.src[end]) {
                    end += 1;
                }
                lx.col += (end - start) as u32;
                lx.pos = end;
                let tok = &src[start..lx.pos];
                match classify(tok) {
                    Atom::Int(n) => Value::Num(n),
                    Atom::Float(f) => Value::Float(f),
                    Atom::IntOutOfRange => {
                        return Err(lx.error(
                            format!("integer literal {} is out of range (64-bit signed)", tok),
                            span,
                        ))
                    }
                    Atom::Symbol => Value::Sym(syms.intern(tok)),
                }
            }
            _ => {
                let ch = src[lx.pos..].chars().next().unwrap_or('?');
                return Err(lx.error(
                    format!(
                        "unexpected character '{}': expected a number, symbol, string or bracket",
                        ch.escape_default()
                    ),
                    span,
                ));
            }
        };
        push_item(&stack, &mut items, &mut top, value, span);
    }
}

/// Adds an element to the innermost open list, or to the top-level forms.
fn push_item(
    stack: &[Open],
    items: &mut Vec<(Value, Span)>,
    top: &mut Vec<(Value, Span)>,
    v: Value,
    span: Span,
) {
    if stack.is_empty() {
        top.push((v, span));
    } else {
        items.push((v, span));
    }
}

/// Whether `src` is complete enough to evaluate: every bracket and string
/// opened is closed. Used by the REPL to continue multi-line input; a
/// stray closing bracket counts as complete (the reader reports it).
pub fn is_complete(src: &str) -> bool {
    let b = src.as_bytes();
    let mut depth: i64 = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b';' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                loop {
                    if i >= b.len() {
                        return false;
                    }
                    match b[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
            }
            b'(' | b'{' => depth += 1,
            b')' | b'}' => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => {}
        }
        i += 1;
    }
    depth <= 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{Printer, Value};

    fn read(src: &str) -> Result<String, ReadError> {
        let mut heap = Heap::new(1 << 20);
        let mut syms = Symbols::default();
        let forms = read_all(&mut heap, &mut syms, src, 1)?;
        let mut p = Printer {
            heap: &heap,
            syms: &syms,
            builtin_names: &[],
            out: String::new(),
            max_len: usize::MAX,
        };
        for (i, (v, _)) in forms.iter().enumerate() {
            if i > 0 {
                p.out.push('|');
            }
            p.write(*v, true);
        }
        Ok(p.out)
    }

    #[test]
    fn numbers_symbols_and_floats() {
        assert_eq!(
            read("1 -2 - 1abc foo/bar 1.5 -0.25 2e3").unwrap(),
            "1|-2|-|1abc|foo/bar|1.5|-0.25|2000.0"
        );
        assert_eq!(read("9223372036854775807").unwrap(), "9223372036854775807");
        assert!(read("9223372036854775808")
            .unwrap_err()
            .message
            .contains("out of range"));
        assert_eq!(
            read("-9223372036854775808").unwrap(),
            "-9223372036854775808"
        );
    }

    #[test]
    fn lists_and_comments() {
        assert_eq!(
            read("(+ 1 {2 3}) ; comment\n{}()").unwrap(),
            "(+ 1 {2 3})|{}|()"
        );
    }

    #[test]
    fn strings_and_escapes() {
        assert_eq!(read(r#""a\nb\t\"q\"\\""#).unwrap(), r#""a\nb\t\"q\"\\""#);
        assert_eq!(read(r#""\x41\u{48}\'""#).unwrap(), r#""AH'""#);
        assert!(read(r#""\q""#)
            .unwrap_err()
            .message
            .contains("invalid escape"));
        assert_eq!(read("\"héllo\"").unwrap(), "\"héllo\"");
    }

    #[test]
    fn errors_name_positions() {
        let e = read("(+ 1\n  (2").unwrap_err();
        assert_eq!(
            e.message,
            "unexpected end of input: expected ')' to close '(' at 2:3"
        );
        assert_eq!((e.span.line, e.span.col), (2, 5));
        let e = read("(1 }").unwrap_err();
        assert!(e.message.starts_with("unexpected '}': expected ')'"));
        assert_eq!((e.span.line, e.span.col), (1, 4));
        let e = read("  #").unwrap_err();
        assert_eq!((e.span.line, e.span.col), (1, 3));
        assert!(read("\"abc").unwrap_err().message.contains("close string"));
    }

    #[test]
    fn positions_count_characters_across_comments_and_strings() {
        // A comment and a string with multi-byte characters, the string
        // over two lines: columns count characters, lines count newlines.
        let e = read("; héllo wörld\n\"ä\nöü\" #").unwrap_err();
        assert_eq!((e.span.line, e.span.col), (3, 5));
        let e = read("\"日本\" ; ç\n  \"é\\n\" )").unwrap_err();
        assert_eq!((e.span.line, e.span.col), (2, 9));
    }

    #[test]
    fn nesting_limit_is_an_error() {
        let deep = "(".repeat(MAX_NESTING + 1);
        assert!(read(&deep)
            .unwrap_err()
            .message
            .contains("nesting too deep"));
    }

    #[test]
    fn completeness_for_the_repl() {
        assert!(is_complete("(+ 1 2)"));
        assert!(!is_complete("(+ 1\n"));
        assert!(!is_complete("\"abc"));
        assert!(is_complete("\"a(\""));
        assert!(is_complete("; (\n1"));
        assert!(is_complete(")"));
    }

    #[test]
    fn value_spans_point_at_source() {
        let mut heap = Heap::new(1 << 20);
        let mut syms = Symbols::default();
        let forms = read_all(&mut heap, &mut syms, "\n  (foo bar)", 3).unwrap();
        let (v, span) = forms[0];
        assert_eq!((span.file, span.line, span.col), (3, 2, 3));
        let cell = v.list_cell().unwrap();
        let second = heap.cons(heap.cons(cell).tail.unwrap());
        assert_eq!((second.span.line, second.span.col), (2, 8));
        assert!(matches!(second.head, Value::Sym(_)));
    }
}
