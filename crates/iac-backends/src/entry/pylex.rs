//! A small Python lexer and literal reader, enough to read Python source *statically*: find a
//! real top-level `if __name__ == "__main__":` guard, read `setup(entry_points=...)` from a
//! setup.py, and read `DJANGO_SETTINGS_MODULE` / `WSGI_APPLICATION` values. Nothing here runs
//! Python.
//!
//! The lexer skips comments, understands every string literal form (single, double and
//! triple-quoted; `r`, `b`, `u`, `f`, `t` prefixes and their combinations; escapes; f-string
//! replacement fields with nested strings as allowed since Python 3.12), tracks bracket depth
//! (newlines inside brackets do not end a logical line) and backslash continuations, and marks the
//! first token of every logical line with its column, which is what "top level" means.

use std::fmt;

/// What a [`Token`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokKind {
    /// An identifier or keyword.
    Name,
    /// A numeric literal.
    Number,
    /// A string literal; `text` is the raw source including prefix and quotes.
    Str,
    /// An operator or delimiter.
    Op,
    /// The end of a logical line.
    Newline,
}

/// One token of Python source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// What kind of token it is.
    pub kind: TokKind,
    /// Raw source text of the token (empty for [`TokKind::Newline`]).
    pub text: String,
    /// 1-based line where the token starts.
    pub line: usize,
    /// 0-based column (in characters) where the token starts.
    pub col: usize,
    /// Whether this token starts a logical line (so `col == 0` means a top-level statement).
    pub line_start: bool,
}

impl Token {
    /// The operator or delimiter `op` (e.g. `(`, `=`).
    pub fn is_op(&self, op: &str) -> bool {
        self.kind == TokKind::Op && self.text == op
    }
    /// The identifier or keyword `name`.
    pub fn is_name(&self, name: &str) -> bool {
        self.kind == TokKind::Name && self.text == name
    }
    /// The value of a plain (non-bytes, non-f/t) string literal token.
    pub fn str_value(&self) -> Option<String> {
        if self.kind == TokKind::Str {
            string_value(&self.text)
        } else {
            None
        }
    }
}

/// Source that is not valid Python at the lexical level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LexError {
    /// 1-based line of the error.
    pub line: usize,
    /// What is wrong (unterminated string, bad indentation, …).
    pub message: String,
}

impl fmt::Display for LexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for LexError {}

const OPS3: &[&str] = &["**=", "//=", ">>=", "<<=", "..."];
const OPS2: &[&str] = &[
    "==", "!=", "<=", ">=", "->", "**", "//", "<<", ">>", ":=", "+=", "-=", "*=", "/=", "%=", "&=",
    "|=", "^=", "@=",
];

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Whether `p` (already known to be followed by a quote) is a valid string prefix.
fn is_string_prefix(p: &str) -> bool {
    matches!(
        p.to_ascii_lowercase().as_str(),
        "r" | "u" | "b" | "f" | "t" | "br" | "rb" | "fr" | "rf" | "tr" | "rt"
    )
}

struct Lexer {
    s: Vec<char>,
    i: usize,
    line: usize,
    col: usize,
}

impl Lexer {
    fn peek(&self, k: usize) -> Option<char> {
        self.s.get(self.i + k).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.s.get(self.i).copied()?;
        self.i += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 0;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn starts_with(&self, pat: &str) -> bool {
        pat.chars()
            .enumerate()
            .all(|(k, c)| self.peek(k) == Some(c))
    }

    fn err<T>(&self, line: usize, message: impl Into<String>) -> Result<T, LexError> {
        Err(LexError {
            line,
            message: message.into(),
        })
    }

    /// Lexes a string literal whose prefix has already been consumed; `self.i` is at the opening
    /// quote.
    fn string(&mut self, prefix: &str, start_line: usize) -> Result<(), LexError> {
        let lower = prefix.to_ascii_lowercase();
        let formatted = lower.contains('f') || lower.contains('t');
        let raw = lower.contains('r');
        let q = self.bump().expect("caller checked the quote");
        let triple = self.peek(0) == Some(q) && self.peek(1) == Some(q);
        if triple {
            self.bump();
            self.bump();
        }
        loop {
            let Some(c) = self.peek(0) else {
                let what = if triple {
                    "triple-quoted string"
                } else {
                    "string"
                };
                return self.err(start_line, format!("unterminated {what} starting here"));
            };
            if c == q && (!triple || (self.peek(1) == Some(q) && self.peek(2) == Some(q))) {
                self.bump();
                if triple {
                    self.bump();
                    self.bump();
                }
                return Ok(());
            }
            if c == '\n' && !triple {
                return self.err(
                    start_line,
                    "unterminated string literal (newline before the closing quote)",
                );
            }
            if c == '\\' {
                self.bump();
                match self.peek(0) {
                    // In f-strings a backslash does not escape a brace: `rf"\{{"`, `f"\{x}"`.
                    Some('{' | '}') if formatted => {}
                    // `\N{NAME}` in a non-raw f-string is a named escape, not a field.
                    Some('N') if formatted && !raw && self.peek(1) == Some('{') => {
                        while self
                            .peek(0)
                            .is_some_and(|c| c != '}' && c != q && c != '\n')
                        {
                            self.bump();
                        }
                        if self.peek(0) == Some('}') {
                            self.bump();
                        }
                    }
                    Some(_) => {
                        self.bump();
                    }
                    None => {}
                }
                continue;
            }
            if formatted && c == '{' {
                if self.peek(1) == Some('{') {
                    self.bump();
                    self.bump();
                    continue;
                }
                self.bump();
                self.replacement_field(q, triple, start_line)?;
                continue;
            }
            self.bump();
        }
    }

    /// Skips an f-string replacement field; `self.i` is just after its `{`. Returns after the
    /// matching `}`.
    fn replacement_field(
        &mut self,
        q: char,
        triple: bool,
        start_line: usize,
    ) -> Result<(), LexError> {
        let mut depth = 0usize;
        // Expression part.
        loop {
            let Some(c) = self.peek(0) else {
                return self.err(start_line, "unterminated f-string replacement field");
            };
            match c {
                '\n' if !triple => {
                    return self.err(
                        start_line,
                        "unterminated f-string replacement field (newline)",
                    );
                }
                '(' | '[' | '{' => {
                    depth += 1;
                    self.bump();
                }
                ')' | ']' => {
                    depth = depth.saturating_sub(1);
                    self.bump();
                }
                '}' if depth > 0 => {
                    depth -= 1;
                    self.bump();
                }
                '}' => {
                    self.bump();
                    return Ok(());
                }
                ':' if depth == 0 => {
                    self.bump();
                    break;
                }
                '#' => {
                    while self.peek(0).is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                }
                '\'' | '"' => {
                    let line = self.line;
                    self.string("", line)?;
                }
                c if is_ident_start(c) => {
                    let start = self.i;
                    while self.peek(0).is_some_and(is_ident_char) {
                        self.bump();
                    }
                    let word: String = self.s[start..self.i].iter().collect();
                    if matches!(self.peek(0), Some('\'' | '"')) && is_string_prefix(&word) {
                        let line = self.line;
                        self.string(&word, line)?;
                    }
                }
                _ => {
                    self.bump();
                }
            }
        }
        // Format spec: literal text with nested replacement fields.
        loop {
            let Some(c) = self.peek(0) else {
                return self.err(start_line, "unterminated f-string format spec");
            };
            match c {
                '{' => {
                    self.bump();
                    self.replacement_field(q, triple, start_line)?;
                }
                '}' => {
                    self.bump();
                    return Ok(());
                }
                '\n' if !triple => {
                    return self.err(start_line, "unterminated f-string format spec (newline)");
                }
                c if c == q && !triple => {
                    return self.err(
                        start_line,
                        "f-string format spec not closed before the quote",
                    );
                }
                _ => {
                    self.bump();
                }
            }
        }
    }
}

/// Tokenizes Python source. Comments and whitespace produce no tokens; a [`TokKind::Newline`]
/// ends every logical line that had tokens.
pub fn tokenize(src: &str) -> Result<Vec<Token>, LexError> {
    let normalized = src
        .strip_prefix('\u{feff}')
        .unwrap_or(src)
        .replace("\r\n", "\n")
        .replace('\r', "\n");
    let mut lx = Lexer {
        s: normalized.chars().collect(),
        i: 0,
        line: 1,
        col: 0,
    };
    let mut out: Vec<Token> = Vec::new();
    let mut depth = 0usize;
    let mut logical_start = true;
    let mut line_has_tokens = false;

    let push = |out: &mut Vec<Token>,
                kind,
                text: String,
                line,
                col,
                logical_start: &mut bool,
                has: &mut bool| {
        out.push(Token {
            kind,
            text,
            line,
            col,
            line_start: *logical_start,
        });
        *logical_start = false;
        *has = true;
    };

    while let Some(c) = lx.peek(0) {
        let (line, col, start) = (lx.line, lx.col, lx.i);
        match c {
            '\n' => {
                lx.bump();
                if depth == 0 {
                    if line_has_tokens {
                        out.push(Token {
                            kind: TokKind::Newline,
                            text: String::new(),
                            line,
                            col,
                            line_start: false,
                        });
                    }
                    line_has_tokens = false;
                    logical_start = true;
                }
            }
            '\\' if lx.peek(1) == Some('\n') => {
                lx.bump();
                lx.bump();
            }
            '\\' => {
                return lx.err(
                    line,
                    "unexpected character '\\' outside a string (expected a line continuation)",
                );
            }
            ' ' | '\t' | '\u{c}' => {
                lx.bump();
            }
            '#' => {
                while lx.peek(0).is_some_and(|c| c != '\n') {
                    lx.bump();
                }
            }
            '\'' | '"' => {
                lx.string("", line)?;
                let text: String = lx.s[start..lx.i].iter().collect();
                push(
                    &mut out,
                    TokKind::Str,
                    text,
                    line,
                    col,
                    &mut logical_start,
                    &mut line_has_tokens,
                );
            }
            c if is_ident_start(c) => {
                while lx.peek(0).is_some_and(is_ident_char) {
                    lx.bump();
                }
                let word: String = lx.s[start..lx.i].iter().collect();
                if matches!(lx.peek(0), Some('\'' | '"')) && is_string_prefix(&word) {
                    lx.string(&word, line)?;
                    let text: String = lx.s[start..lx.i].iter().collect();
                    push(
                        &mut out,
                        TokKind::Str,
                        text,
                        line,
                        col,
                        &mut logical_start,
                        &mut line_has_tokens,
                    );
                } else {
                    push(
                        &mut out,
                        TokKind::Name,
                        word,
                        line,
                        col,
                        &mut logical_start,
                        &mut line_has_tokens,
                    );
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && lx.peek(1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let hex_like = c == '0'
                    && lx
                        .peek(1)
                        .is_some_and(|x| matches!(x, 'x' | 'X' | 'o' | 'O' | 'b' | 'B'));
                lx.bump();
                while let Some(d) = lx.peek(0) {
                    let prev = lx.s[lx.i - 1];
                    let exponent_sign =
                        (d == '+' || d == '-') && !hex_like && matches!(prev, 'e' | 'E');
                    if d.is_ascii_alphanumeric() || d == '_' || d == '.' || exponent_sign {
                        lx.bump();
                    } else {
                        break;
                    }
                }
                let text: String = lx.s[start..lx.i].iter().collect();
                push(
                    &mut out,
                    TokKind::Number,
                    text,
                    line,
                    col,
                    &mut logical_start,
                    &mut line_has_tokens,
                );
            }
            _ => {
                let op = OPS3
                    .iter()
                    .chain(OPS2.iter())
                    .find(|op| lx.starts_with(op))
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| c.to_string());
                for _ in 0..op.chars().count() {
                    lx.bump();
                }
                match op.as_str() {
                    "(" | "[" | "{" => depth += 1,
                    ")" | "]" | "}" => depth = depth.saturating_sub(1),
                    _ => {}
                }
                push(
                    &mut out,
                    TokKind::Op,
                    op,
                    line,
                    col,
                    &mut logical_start,
                    &mut line_has_tokens,
                );
            }
        }
    }
    if line_has_tokens {
        out.push(Token {
            kind: TokKind::Newline,
            text: String::new(),
            line: lx.line,
            col: lx.col,
            line_start: false,
        });
    }
    Ok(out)
}

/// The value of a plain string literal (`'…'`, `"…"`, triple-quoted, `r`/`u` prefixes), with
/// escapes decoded (`\N{…}` named escapes, and lone surrogates such as `\uD800` that a Rust
/// `String` cannot hold, are kept verbatim). `None` for bytes, f-strings and t-strings, which are not plain `str` values.
pub fn string_value(raw: &str) -> Option<String> {
    let qpos = raw.find(['\'', '"'])?;
    let prefix = raw[..qpos].to_ascii_lowercase();
    if prefix.contains('b') || prefix.contains('f') || prefix.contains('t') {
        return None;
    }
    let body = &raw[qpos..];
    let q = body.chars().next()?;
    let triple: String = std::iter::repeat_n(q, 3).collect();
    let inner = if body.len() >= 6 && body.starts_with(&triple) && body.ends_with(&triple) {
        &body[3..body.len() - 3]
    } else if body.len() >= 2 {
        &body[1..body.len() - 1]
    } else {
        return None;
    };
    if prefix.contains('r') {
        return Some(inner.to_string());
    }
    let mut out = String::new();
    let mut it = inner.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(e) = it.next() else {
            out.push('\\');
            break;
        };
        match e {
            '\n' => {}
            '\\' => out.push('\\'),
            '\'' => out.push('\''),
            '"' => out.push('"'),
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'a' => out.push('\u{7}'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'v' => out.push('\u{b}'),
            '0'..='7' => {
                let mut v = e.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match it.peek().and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            v = v * 8 + d;
                            it.next();
                        }
                        None => break,
                    }
                }
                out.extend(char::from_u32(v));
            }
            'x' | 'u' | 'U' => {
                let n = match e {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let hex: String = (0..n)
                    .filter_map(|_| it.next_if(|d| d.is_ascii_hexdigit()))
                    .collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(ch) if hex.len() == n => out.push(ch),
                    _ => {
                        out.push('\\');
                        out.push(e);
                        out.push_str(&hex);
                    }
                }
            }
            other => {
                out.push('\\');
                out.push(other);
            }
        }
    }
    Some(out)
}

/// A Python literal value, as far as static reading needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    /// A string literal, escapes processed (adjacent literals joined).
    Str(String),
    /// `[...]`.
    List(Vec<PyValue>),
    /// `(...)`.
    Tuple(Vec<PyValue>),
    /// `{key: value, ...}`, in source order.
    Dict(Vec<(PyValue, PyValue)>),
    /// `True` or `False`.
    Bool(bool),
    /// `None`.
    None,
    /// A number literal, as written.
    Number(String),
}

impl PyValue {
    /// A short description of the value's type, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            PyValue::Str(_) => "a string",
            PyValue::List(_) => "a list",
            PyValue::Tuple(_) => "a tuple",
            PyValue::Dict(_) => "a dict",
            PyValue::Bool(_) => "a bool",
            PyValue::None => "None",
            PyValue::Number(_) => "a number",
        }
    }

    /// The value for a string key in a dict.
    pub fn get(&self, key: &str) -> Option<&PyValue> {
        match self {
            PyValue::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, PyValue::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Describes the token at `pos` for an error message.
pub fn describe(tokens: &[Token], pos: usize) -> String {
    match tokens.get(pos) {
        None => "the end of the file".to_string(),
        Some(t) if t.kind == TokKind::Newline => format!("the end of line {}", t.line),
        Some(t) => {
            let what = match t.kind {
                TokKind::Name => "the name",
                TokKind::Str => "the string",
                TokKind::Number => "the number",
                _ => "",
            };
            let text: String = t.text.chars().take(40).collect();
            if what.is_empty() {
                format!("`{text}` (line {})", t.line)
            } else {
                format!("{what} `{text}` (line {})", t.line)
            }
        }
    }
}

/// Parses a Python literal (strings incl. implicit concatenation, lists, tuples, dicts,
/// `dict(key=literal, …)`, True/False/None, numbers) starting at `pos`. Returns the value and the
/// position after it. Anything else is an error describing what was found.
pub fn parse_literal(tokens: &[Token], pos: usize) -> Result<(PyValue, usize), String> {
    let Some(t) = tokens.get(pos) else {
        return Err("expected a literal, found the end of the file".to_string());
    };
    match t.kind {
        TokKind::Str => {
            let mut s = String::new();
            let mut p = pos;
            while let Some(t) = tokens.get(p).filter(|t| t.kind == TokKind::Str) {
                match t.str_value() {
                    Some(v) => s.push_str(&v),
                    None => {
                        return Err(format!(
                            "{} is an f-string or bytes, not a plain string literal",
                            describe(tokens, p)
                        ));
                    }
                }
                p += 1;
            }
            Ok((PyValue::Str(s), p))
        }
        TokKind::Number => Ok((PyValue::Number(t.text.clone()), pos + 1)),
        TokKind::Name if t.text == "True" => Ok((PyValue::Bool(true), pos + 1)),
        TokKind::Name if t.text == "False" => Ok((PyValue::Bool(false), pos + 1)),
        TokKind::Name if t.text == "None" => Ok((PyValue::None, pos + 1)),
        TokKind::Name if t.text == "dict" && tokens.get(pos + 1).is_some_and(|t| t.is_op("(")) => {
            let mut p = pos + 2;
            let mut items = Vec::new();
            loop {
                if tokens.get(p).is_some_and(|t| t.is_op(")")) {
                    return Ok((PyValue::Dict(items), p + 1));
                }
                let key = match tokens.get(p) {
                    Some(k)
                        if k.kind == TokKind::Name
                            && tokens.get(p + 1).is_some_and(|t| t.is_op("=")) =>
                    {
                        k.text.clone()
                    }
                    _ => {
                        return Err(format!(
                            "expected `key=value` in dict(...), found {}",
                            describe(tokens, p)
                        ));
                    }
                };
                let (v, next) = parse_literal(tokens, p + 2)?;
                items.push((PyValue::Str(key), v));
                p = next;
                match tokens.get(p) {
                    Some(t) if t.is_op(",") => p += 1,
                    Some(t) if t.is_op(")") => {}
                    _ => {
                        return Err(format!(
                            "expected `,` or `)` in dict(...), found {}",
                            describe(tokens, p)
                        ));
                    }
                }
            }
        }
        TokKind::Op if t.text == "[" || t.text == "(" => {
            let close = if t.text == "[" { "]" } else { ")" };
            let mut p = pos + 1;
            let mut items = Vec::new();
            let mut saw_comma = false;
            loop {
                if tokens.get(p).is_some_and(|t| t.is_op(close)) {
                    let v = if close == "]" {
                        PyValue::List(items)
                    } else if items.len() == 1 && !saw_comma {
                        items.pop().expect("one item")
                    } else {
                        PyValue::Tuple(items)
                    };
                    return Ok((v, p + 1));
                }
                let (v, next) = parse_literal(tokens, p)?;
                items.push(v);
                p = next;
                match tokens.get(p) {
                    Some(t) if t.is_op(",") => {
                        saw_comma = true;
                        p += 1;
                    }
                    Some(t) if t.is_op(close) => {}
                    _ => {
                        return Err(format!(
                            "expected `,` or `{close}`, found {}",
                            describe(tokens, p)
                        ));
                    }
                }
            }
        }
        TokKind::Op if t.text == "{" => {
            let mut p = pos + 1;
            let mut items = Vec::new();
            loop {
                if tokens.get(p).is_some_and(|t| t.is_op("}")) {
                    return Ok((PyValue::Dict(items), p + 1));
                }
                let (k, next) = parse_literal(tokens, p)?;
                if !tokens.get(next).is_some_and(|t| t.is_op(":")) {
                    return Err(format!(
                        "expected `:` after a dict key, found {}",
                        describe(tokens, next)
                    ));
                }
                let (v, next) = parse_literal(tokens, next + 1)?;
                items.push((k, v));
                p = next;
                match tokens.get(p) {
                    Some(t) if t.is_op(",") => p += 1,
                    Some(t) if t.is_op("}") => {}
                    _ => {
                        return Err(format!(
                            "expected `,` or `}}` in a dict, found {}",
                            describe(tokens, p)
                        ));
                    }
                }
            }
        }
        _ => Err(format!(
            "expected a literal, found {}",
            describe(tokens, pos)
        )),
    }
}

/// Where a real top-level `if __name__ == "__main__":` guard starts (1-based line), if any.
/// Accepts `==` in either order and optional parentheses around the condition; the `if` must
/// start a logical line at column 0, so guards in strings, comments or nested blocks never count.
pub fn main_guard_line(tokens: &[Token]) -> Option<usize> {
    tokens.iter().enumerate().find_map(|(i, t)| {
        if !(t.line_start && t.col == 0 && t.is_name("if")) {
            return None;
        }
        let mut cond: Vec<&Token> = Vec::new();
        for t in &tokens[i + 1..] {
            if t.is_op(":") || t.kind == TokKind::Newline {
                if !t.is_op(":") {
                    return None;
                }
                break;
            }
            cond.push(t);
        }
        while cond.len() >= 2 && cond[0].is_op("(") && cond[cond.len() - 1].is_op(")") {
            cond = cond[1..cond.len() - 1].to_vec();
        }
        let is_main = |t: &Token| t.str_value().as_deref() == Some("__main__");
        let ok = cond.len() == 3
            && cond[1].is_op("==")
            && ((cond[0].is_name("__name__") && is_main(cond[2]))
                || (is_main(cond[0]) && cond[2].is_name("__name__")));
        ok.then_some(t.line)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<(TokKind, String)> {
        tokenize(src)
            .unwrap()
            .into_iter()
            .map(|t| (t.kind, t.text))
            .collect()
    }

    #[test]
    fn basic_tokens_and_newlines() {
        let k = kinds("x = 1  # comment\nif x == 2:\n    y()\n");
        let texts: Vec<&str> = k.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            texts,
            [
                "x", "=", "1", "", "if", "x", "==", "2", ":", "", "y", "(", ")", ""
            ]
        );
        assert_eq!(k[3].0, TokKind::Newline);
        assert_eq!(k[0].0, TokKind::Name);
        assert_eq!(k[2].0, TokKind::Number);
    }

    #[test]
    fn comments_hide_code() {
        let toks = tokenize("# if __name__ == '__main__':\n#x\n").unwrap();
        assert!(toks.is_empty());
    }

    #[test]
    fn string_forms() {
        let src = r#"a = 'x' "y" '''t
'' ''' """u
""" r'\'' rb"\"" f'{x}' Rb'z' u"w" F"{a!r:>{w}}" t"{x}" b'\x00'"#;
        let toks = tokenize(src).unwrap();
        let strs: Vec<&str> = toks
            .iter()
            .filter(|t| t.kind == TokKind::Str)
            .map(|t| t.text.as_str())
            .collect();
        assert_eq!(
            strs,
            [
                "'x'",
                "\"y\"",
                "'''t\n'' '''",
                "\"\"\"u\n\"\"\"",
                r"r'\''",
                r#"rb"\"""#,
                "f'{x}'",
                "Rb'z'",
                "u\"w\"",
                "F\"{a!r:>{w}}\"",
                "t\"{x}\"",
                r"b'\x00'"
            ]
        );
    }

    #[test]
    fn fstring_nested_quotes_pep701() {
        let toks = tokenize("s = f\"{d[\"k\"]} and {'}'}\"\nz = 1\n").unwrap();
        let strs: Vec<&Token> = toks.iter().filter(|t| t.kind == TokKind::Str).collect();
        assert_eq!(strs.len(), 1);
        assert!(
            toks.iter()
                .any(|t| t.is_name("z") && t.line_start && t.line == 2)
        );
    }

    #[test]
    fn fstring_backslashes_do_not_escape_braces() {
        // A raw f-string `\{{` is a backslash then a literal brace; `\N{...}` is a named escape.
        let src = "a = rf'(\\{{)({x})'\nb = f'\\N{EM DASH} {y}'\nc = f'\\{z}'\nd = 1\n";
        let toks = tokenize(src).unwrap();
        assert_eq!(toks.iter().filter(|t| t.kind == TokKind::Str).count(), 3);
        let starts: Vec<&str> = toks
            .iter()
            .filter(|t| t.line_start)
            .map(|t| t.text.as_str())
            .collect();
        assert_eq!(starts, ["a", "b", "c", "d"]);
    }

    #[test]
    fn fstring_double_braces_are_literal() {
        let toks = tokenize("s = f'{{not a field' + 'x'\n").unwrap();
        assert_eq!(toks.iter().filter(|t| t.kind == TokKind::Str).count(), 2);
    }

    #[test]
    fn brackets_and_continuations_join_lines() {
        let toks = tokenize("x = (1,\n     2)\ny = 1 + \\\n  2\nz\n").unwrap();
        let starts: Vec<(&str, usize)> = toks
            .iter()
            .filter(|t| t.line_start)
            .map(|t| (t.text.as_str(), t.line))
            .collect();
        assert_eq!(starts, [("x", 1), ("y", 3), ("z", 5)]);
        assert_eq!(
            toks.iter().filter(|t| t.kind == TokKind::Newline).count(),
            3
        );
    }

    #[test]
    fn line_and_column_tracking() {
        let toks = tokenize("def f():\n    if a:\n        pass\n").unwrap();
        let ifs = toks.iter().find(|t| t.is_name("if")).unwrap();
        assert_eq!((ifs.line, ifs.col, ifs.line_start), (2, 4, true));
    }

    #[test]
    fn unterminated_strings_are_errors_with_line() {
        let e = tokenize("x = 1\ny = '''never closed\n\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("triple-quoted"), "{e}");
        let e = tokenize("a\nb = 'oops\nc = 1\n").unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn crlf_and_bom() {
        let toks = tokenize("\u{feff}if __name__ == '__main__':\r\n    main()\r\n").unwrap();
        assert_eq!(main_guard_line(&toks), Some(1));
    }

    #[test]
    fn numbers_with_exponents_and_hex() {
        let k = kinds("a = 1e-5 + 0x1E - 3\n");
        let texts: Vec<&str> = k.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(texts, ["a", "=", "1e-5", "+", "0x1E", "-", "3", ""]);
    }

    #[test]
    fn string_values_decode_escapes() {
        assert_eq!(string_value(r"'a\nb'").as_deref(), Some("a\nb"));
        assert_eq!(string_value(r"r'a\nb'").as_deref(), Some(r"a\nb"));
        assert_eq!(
            string_value(r#""\x41\u00e9\101\q""#).as_deref(),
            Some("AéA\\q")
        );
        assert_eq!(string_value("'''x\ny'''").as_deref(), Some("x\ny"));
        assert_eq!(string_value("''").as_deref(), Some(""));
        assert_eq!(string_value("b'x'"), None);
        assert_eq!(string_value("f'x'"), None);
        assert_eq!(string_value("U'x'").as_deref(), Some("x"));
    }

    #[test]
    fn main_guard_forms() {
        let g = |s: &str| main_guard_line(&tokenize(s).unwrap());
        assert_eq!(
            g("import x\n\nif __name__ == \"__main__\":\n    x.run()\n"),
            Some(3)
        );
        assert_eq!(g("if '__main__' == __name__: main()\n"), Some(1));
        assert_eq!(g("if (__name__ == '__main__'):\n  pass\n"), Some(1));
        assert_eq!(g("if __name__ == r'__main__':\n  pass\n"), Some(1));
        // Nested, commented, in strings, or not a comparison: no guard.
        assert_eq!(
            g("def f():\n    if __name__ == '__main__':\n        pass\n"),
            None
        );
        assert_eq!(g("# if __name__ == '__main__':\n"), None);
        assert_eq!(
            g("s = '''\nif __name__ == '__main__':\n    main()\n'''\n"),
            None
        );
        assert_eq!(
            g("s = \"\"\"\nif __name__ == \"__main__\":\n\"\"\"\n"),
            None
        );
        assert_eq!(g("x = f'''{1}\nif __name__ == \"__main__\":\n'''\n"), None);
        assert_eq!(g("if __name__ != '__main__':\n  pass\n"), None);
        assert_eq!(g("if __name__ == b'__main__':\n  pass\n"), None);
        assert_eq!(g("if __name__ == f'__main__':\n  pass\n"), None);
        assert_eq!(g("x = [\nif_ := 1]\n"), None);
        // A line continuation puts the `if` mid-line, so it is not a statement start.
        assert_eq!(g("x = 1 + \\\nif __name__ == '__main__' else 2\n"), None);
    }

    #[test]
    fn literals() {
        let toks = tokenize("x = {'console_scripts': ['a = b:c', \"d=e:f\"], 'k': ('t',), 'n': None, 'z': dict(q='1' 'x')}\n").unwrap();
        let (v, next) = parse_literal(&toks, 2).unwrap();
        assert_eq!(toks[next].kind, TokKind::Newline);
        assert_eq!(
            v.get("console_scripts"),
            Some(&PyValue::List(vec![
                PyValue::Str("a = b:c".into()),
                PyValue::Str("d=e:f".into())
            ]))
        );
        assert_eq!(
            v.get("k"),
            Some(&PyValue::Tuple(vec![PyValue::Str("t".into())]))
        );
        assert_eq!(v.get("n"), Some(&PyValue::None));
        assert_eq!(
            v.get("z").and_then(|z| z.get("q")),
            Some(&PyValue::Str("1x".into()))
        );
        let toks = tokenize("x = ENTRY\n").unwrap();
        let e = parse_literal(&toks, 2).unwrap_err();
        assert!(e.contains("the name `ENTRY`"), "{e}");
        let toks = tokenize("x = {'a': f'{y}'}\n").unwrap();
        assert!(parse_literal(&toks, 2).unwrap_err().contains("f-string"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_input(src in "(?s)[ -~\\n\\t'\"{}()\\[\\]#\\\\éfrbuFRBU:=]{0,200}") {
            if let Ok(toks) = tokenize(&src) {
                let _ = main_guard_line(&toks);
                for i in 0..toks.len() {
                    let _ = parse_literal(&toks, i);
                    let _ = toks[i].str_value();
                }
            }
        }
    }
}
