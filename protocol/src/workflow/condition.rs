//! Conditions on node facts (`when:` of a step, `node.wait` on a condition): a small,
//! explicit expression language, its parser and its pure evaluator.
//!
//! ```text
//! expr     := or
//! or       := and ("or" and)*
//! and      := unary ("and" unary)*
//! unary    := "not" unary | primary
//! primary  := "(" expr ")" | "exists" path | "true" | "false" | operand OP operand
//! operand  := path | "params." NAME | STRING | NUMBER | "true" | "false" | "null"
//! path     := "facts" ("." SEGMENT)*
//! SEGMENT  := [A-Za-z0-9_-]+ (digits index lists) | STRING (any key: facts.lan."IP Address")
//! OP       := "==" | "!=" | "<" | "<=" | ">" | ">=" | "contains"
//! ```
//!
//! Semantics, chosen so a missing fact never raises an error at run time:
//! - a path that does not resolve reads as `null`; `exists p` is true when `p` resolves to
//!   something other than `null`;
//! - `==`/`!=` compare JSON values (numbers by value, so `8 == 8.0`);
//! - `<`, `<=`, `>`, `>=` compare two numbers or two strings, and are false otherwise;
//! - `a contains b` is true when `a` is an array with an element equal to `b`, or `a` and `b`
//!   are strings and `b` is a substring of `a`.
//!
//! A bare path (`facts.ready`) is refused: write `facts.ready == true` or `exists
//! facts.ready`, so nobody has to guess what truthiness means. `params.NAME` operands are
//! replaced by the parameter's value when a template is expanded
//! ([`Condition::resolve_params`]); a plan never carries one.
//!
//! Serialized as its canonical text in every format, and parsed again on decode.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Why a condition could not be parsed, resolved or evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    /// Syntax error; `column` is 1-based, in characters.
    #[error("at column {column}: {message}")]
    Syntax {
        /// Where.
        column: usize,
        /// What was expected.
        message: String,
    },
    /// A `params.NAME` operand still present at evaluation time.
    #[error("params.{0} was not substituted (conditions in a plan refer to facts only)")]
    UnresolvedParam(String),
    /// A parameter named in the condition has no value.
    #[error("params.{0} is not a parameter of this template")]
    UnknownParam(String),
    /// A parameter whose value is a list or map cannot be compared.
    #[error("params.{0} is a list or map; conditions compare strings, numbers and booleans")]
    NonScalarParam(String),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `contains`
    Contains,
}

impl CompareOp {
    fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Contains => "contains",
        }
    }
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A path into the node's facts (segments after `facts.`).
    Fact(Vec<String>),
    /// A template parameter, replaced at expansion.
    Param(String),
    /// A string, number, boolean or null.
    Literal(Value),
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// A constant.
    Const(bool),
    /// The fact exists and is not null.
    Exists(Vec<String>),
    /// A comparison.
    Compare {
        /// Left side.
        left: Operand,
        /// Operator.
        op: CompareOp,
        /// Right side.
        right: Operand,
    },
    /// Negation.
    Not(Box<Condition>),
    /// Every operand holds (two or more).
    And(Vec<Condition>),
    /// Some operand holds (two or more).
    Or(Vec<Condition>),
}

impl Condition {
    /// Parse the text form.
    pub fn parse(text: &str) -> Result<Condition, ConditionError> {
        let tokens = lex(text)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            end: text.chars().count() + 1,
        };
        let c = p.or()?;
        if let Some(t) = p.peek() {
            return Err(syntax(
                t.column,
                format!("unexpected {} after a complete condition", t.tok.describe()),
            ));
        }
        Ok(c)
    }

    /// Names of the parameters it refers to.
    pub fn params(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.walk_operands(&mut |o| {
            if let Operand::Param(p) = o {
                out.insert(p.clone());
            }
        });
        out
    }

    fn walk_operands(&self, f: &mut dyn FnMut(&Operand)) {
        match self {
            Condition::Const(_) | Condition::Exists(_) => {}
            Condition::Compare { left, right, .. } => {
                f(left);
                f(right);
            }
            Condition::Not(c) => c.walk_operands(f),
            Condition::And(cs) | Condition::Or(cs) => cs.iter().for_each(|c| c.walk_operands(f)),
        }
    }

    /// Replace every `params.NAME` by the parameter's value.
    pub fn resolve_params(
        &self,
        params: &BTreeMap<String, Value>,
    ) -> Result<Condition, ConditionError> {
        let operand = |o: &Operand| -> Result<Operand, ConditionError> {
            match o {
                Operand::Param(name) => match params.get(name) {
                    None => Err(ConditionError::UnknownParam(name.clone())),
                    Some(Value::Array(_) | Value::Object(_)) => {
                        Err(ConditionError::NonScalarParam(name.clone()))
                    }
                    Some(v) => Ok(Operand::Literal(v.clone())),
                },
                other => Ok(other.clone()),
            }
        };
        Ok(match self {
            Condition::Const(_) | Condition::Exists(_) => self.clone(),
            Condition::Compare { left, op, right } => Condition::Compare {
                left: operand(left)?,
                op: *op,
                right: operand(right)?,
            },
            Condition::Not(c) => Condition::Not(Box::new(c.resolve_params(params)?)),
            Condition::And(cs) => Condition::And(
                cs.iter()
                    .map(|c| c.resolve_params(params))
                    .collect::<Result<_, _>>()?,
            ),
            Condition::Or(cs) => Condition::Or(
                cs.iter()
                    .map(|c| c.resolve_params(params))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    /// Evaluate against a node's facts (the JSON object the node reported and steps merged
    /// into). Pure: the same facts always give the same answer.
    pub fn evaluate(&self, facts: &Value) -> Result<bool, ConditionError> {
        Ok(match self {
            Condition::Const(b) => *b,
            Condition::Exists(path) => !lookup(facts, path).is_null(),
            Condition::Compare { left, op, right } => {
                let l = operand_value(left, facts)?;
                let r = operand_value(right, facts)?;
                compare(l, *op, r)
            }
            Condition::Not(c) => !c.evaluate(facts)?,
            Condition::And(cs) => {
                for c in cs {
                    if !c.evaluate(facts)? {
                        return Ok(false);
                    }
                }
                true
            }
            Condition::Or(cs) => {
                for c in cs {
                    if c.evaluate(facts)? {
                        return Ok(true);
                    }
                }
                false
            }
        })
    }
}

static NULL: Value = Value::Null;

fn lookup<'a>(facts: &'a Value, path: &[String]) -> &'a Value {
    let mut at = facts;
    for seg in path {
        at = match at {
            Value::Object(m) => m.get(seg).unwrap_or(&NULL),
            Value::Array(a) => seg
                .parse::<usize>()
                .ok()
                .and_then(|i| a.get(i))
                .unwrap_or(&NULL),
            _ => &NULL,
        };
    }
    at
}

fn operand_value<'a>(o: &'a Operand, facts: &'a Value) -> Result<&'a Value, ConditionError> {
    match o {
        Operand::Fact(path) => Ok(lookup(facts, path)),
        Operand::Literal(v) => Ok(v),
        Operand::Param(p) => Err(ConditionError::UnresolvedParam(p.clone())),
    }
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn compare(l: &Value, op: CompareOp, r: &Value) -> bool {
    use std::cmp::Ordering;
    let ordering = || -> Option<Ordering> {
        match (l, r) {
            (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
            (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
            _ => None,
        }
    };
    match op {
        CompareOp::Eq => json_eq(l, r),
        CompareOp::Ne => !json_eq(l, r),
        CompareOp::Lt => ordering() == Some(Ordering::Less),
        CompareOp::Le => matches!(ordering(), Some(Ordering::Less | Ordering::Equal)),
        CompareOp::Gt => ordering() == Some(Ordering::Greater),
        CompareOp::Ge => matches!(ordering(), Some(Ordering::Greater | Ordering::Equal)),
        CompareOp::Contains => match (l, r) {
            (Value::Array(items), _) => items.iter().any(|i| json_eq(i, r)),
            (Value::String(hay), Value::String(needle)) => hay.contains(needle.as_str()),
            _ => false,
        },
    }
}

fn syntax(column: usize, message: impl Into<String>) -> ConditionError {
    ConditionError::Syntax {
        column,
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    /// A dotted path with quoted segments (`facts.lan."IP Address"`), split.
    Path(Vec<String>),
    Str(String),
    Num(serde_json::Number),
    Op(CompareOp),
    LParen,
    RParen,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Path(p) => format!("`{}`", fmt_segments(p)),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Num(n) => format!("number {n}"),
            Tok::Op(op) => format!("`{}`", op.as_str()),
            Tok::LParen => "`(`".to_owned(),
            Tok::RParen => "`)`".to_owned(),
        }
    }
}

#[derive(Debug)]
struct Spanned {
    tok: Tok,
    column: usize,
}

/// A path's segments as written: plain where the grammar allows, quoted otherwise.
fn fmt_segments(segs: &[String]) -> String {
    segs.iter()
        .map(|seg| {
            let plain = !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
            if plain {
                seg.clone()
            } else {
                quote(seg)
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// A string literal in the grammar's syntax.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Reads the string literal whose opening quote is at `chars[i]`; returns it and the index
/// after its closing quote.
fn lex_string(chars: &[char], mut i: usize) -> Result<(String, usize), ConditionError> {
    let column = i + 1;
    let mut s = String::new();
    i += 1;
    loop {
        match chars.get(i) {
            None => return Err(syntax(column, "unterminated string")),
            Some('"') => return Ok((s, i + 1)),
            Some('\\') => {
                match chars.get(i + 1) {
                    Some('"') => s.push('"'),
                    Some('\\') => s.push('\\'),
                    Some('n') => s.push('\n'),
                    Some('t') => s.push('\t'),
                    _ => return Err(syntax(i + 1, "unknown escape (use \\\", \\\\, \\n or \\t)")),
                }
                i += 2;
            }
            Some(ch) => {
                s.push(*ch);
                i += 1;
            }
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

fn lex(text: &str) -> Result<Vec<Spanned>, ConditionError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
        let op2 = match two.as_str() {
            "==" => Some(CompareOp::Eq),
            "!=" => Some(CompareOp::Ne),
            "<=" => Some(CompareOp::Le),
            ">=" => Some(CompareOp::Ge),
            _ => None,
        };
        if let Some(op) = op2 {
            out.push(Spanned {
                tok: Tok::Op(op),
                column,
            });
            i += 2;
            continue;
        }
        let tok = match c {
            '<' => Tok::Op(CompareOp::Lt),
            '>' => Tok::Op(CompareOp::Gt),
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '"' => {
                let (text, next) = lex_string(&chars, i)?;
                i = next;
                out.push(Spanned {
                    tok: Tok::Str(text),
                    column,
                });
                continue;
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let n = serde_json::from_str::<serde_json::Number>(&text)
                    .map_err(|_| syntax(column, format!("invalid number {text:?}")))?;
                out.push(Spanned {
                    tok: Tok::Num(n),
                    column,
                });
                continue;
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && is_word_char(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if let Some(head) = word
                    .strip_suffix('.')
                    .filter(|_| chars.get(i) == Some(&'"'))
                {
                    let mut segs: Vec<String> = head.split('.').map(str::to_owned).collect();
                    loop {
                        let (seg, next) = lex_string(&chars, i)?;
                        segs.push(seg);
                        i = next;
                        if chars.get(i) != Some(&'.') {
                            break;
                        }
                        i += 1;
                        if chars.get(i) == Some(&'"') {
                            continue;
                        }
                        let from = i;
                        while i < chars.len() && is_word_char(chars[i]) {
                            i += 1;
                        }
                        let chunk: String = chars[from..i].iter().collect();
                        match chunk.strip_suffix('.') {
                            Some(body) if chars.get(i) == Some(&'"') => {
                                segs.extend(body.split('.').map(str::to_owned));
                            }
                            _ => {
                                segs.extend(chunk.split('.').map(str::to_owned));
                                break;
                            }
                        }
                    }
                    out.push(Spanned {
                        tok: Tok::Path(segs),
                        column,
                    });
                    continue;
                }
                let tok = if word == "contains" {
                    Tok::Op(CompareOp::Contains)
                } else {
                    Tok::Word(word)
                };
                out.push(Spanned { tok, column });
                continue;
            }
            other => {
                let hint = match other {
                    '&' | '|' | '!' => " (write `and`, `or`, `not`)",
                    '\'' => " (strings use double quotes)",
                    '=' => " (equality is `==`)",
                    _ => "",
                };
                return Err(syntax(
                    column,
                    format!("unexpected character {other:?}{hint}"),
                ));
            }
        };
        out.push(Spanned { tok, column });
        i += 1;
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Spanned>,
    pos: usize,
    end: usize,
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Parser {
    fn peek(&self) -> Option<&Spanned> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<&Spanned> {
        let t = self.tokens.get(self.pos);
        self.pos += 1;
        t
    }

    fn peek_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Spanned { tok: Tok::Word(x), .. }) if x == w)
    }

    fn or(&mut self) -> Result<Condition, ConditionError> {
        let mut parts = vec![self.and()?];
        while self.peek_word("or") {
            self.pos += 1;
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Condition::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Condition, ConditionError> {
        let mut parts = vec![self.unary()?];
        while self.peek_word("and") {
            self.pos += 1;
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Condition::And(parts)
        })
    }

    fn unary(&mut self) -> Result<Condition, ConditionError> {
        if self.peek_word("not") {
            self.pos += 1;
            return Ok(Condition::Not(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Condition, ConditionError> {
        let end = self.end;
        let Some(t) = self.peek() else {
            return Err(syntax(end, "expected a condition, found the end"));
        };
        match &t.tok {
            Tok::LParen => {
                self.pos += 1;
                let inner = self.or()?;
                match self.next() {
                    Some(Spanned {
                        tok: Tok::RParen, ..
                    }) => Ok(inner),
                    Some(t) => Err(syntax(
                        t.column,
                        format!("expected `)`, found {}", t.tok.describe()),
                    )),
                    None => Err(syntax(end, "expected `)`, found the end")),
                }
            }
            Tok::Word(w) if w == "exists" => {
                self.pos += 1;
                let at = self.peek().map_or(end, |t| t.column);
                match self.operand()? {
                    Operand::Fact(path) => Ok(Condition::Exists(path)),
                    _ => Err(syntax(at, "`exists` takes a fact path like facts.disks")),
                }
            }
            _ => {
                let left = self.operand()?;
                let op = match self.peek() {
                    Some(Spanned {
                        tok: Tok::Op(op), ..
                    }) => *op,
                    other => {
                        if let Operand::Literal(Value::Bool(b)) = left {
                            return Ok(Condition::Const(b));
                        }
                        let at = other.map_or(end, |t| t.column);
                        let hint = match &left {
                            Operand::Fact(p) => {
                                format!(
                                    "; to test presence write `exists facts.{}`",
                                    fmt_segments(p)
                                )
                            }
                            _ => String::new(),
                        };
                        return Err(syntax(
                            at,
                            format!(
                                "expected a comparison (==, !=, <, <=, >, >=, contains) after {}{hint}",
                                display_operand(&left)
                            ),
                        ));
                    }
                };
                self.pos += 1;
                let right = self.operand()?;
                Ok(Condition::Compare { left, op, right })
            }
        }
    }

    fn operand(&mut self) -> Result<Operand, ConditionError> {
        let end = self.end;
        let Some(t) = self.next() else {
            return Err(syntax(end, "expected a value or fact path, found the end"));
        };
        let column = t.column;
        match &t.tok {
            Tok::Str(s) => Ok(Operand::Literal(Value::String(s.clone()))),
            Tok::Num(n) => Ok(Operand::Literal(Value::Number(n.clone()))),
            Tok::Path(segs) => match segs.split_first() {
                Some((head, path))
                    if head == "facts"
                        && !path.is_empty()
                        && path.iter().all(|p| !p.is_empty()) =>
                {
                    Ok(Operand::Fact(path.to_vec()))
                }
                _ => Err(syntax(
                    column,
                    format!(
                        "invalid fact path `{}` (like facts.bmc.ip or facts.lan.\"IP Address\")",
                        fmt_segments(segs)
                    ),
                )),
            },
            Tok::Word(w) => match w.as_str() {
                "true" => Ok(Operand::Literal(Value::Bool(true))),
                "false" => Ok(Operand::Literal(Value::Bool(false))),
                "null" => Ok(Operand::Literal(Value::Null)),
                _ => {
                    let mut segs = w.split('.');
                    match segs.next() {
                        Some("facts") => {
                            let path: Vec<String> = segs.map(str::to_owned).collect();
                            if path.is_empty() || path.iter().any(String::is_empty) {
                                return Err(syntax(
                                    column,
                                    format!("invalid fact path `{w}` (like facts.bmc.ip)"),
                                ));
                            }
                            Ok(Operand::Fact(path))
                        }
                        Some("params") => {
                            let rest: Vec<&str> = segs.collect();
                            match rest.as_slice() {
                                [name] if is_ident(name) => Ok(Operand::Param((*name).to_owned())),
                                _ => Err(syntax(
                                    column,
                                    format!("invalid parameter reference `{w}` (like params.name)"),
                                )),
                            }
                        }
                        _ => Err(syntax(
                            column,
                            format!(
                                "unknown name `{w}`: operands are facts.PATH, params.NAME, \"strings\", numbers, true, false or null"
                            ),
                        )),
                    }
                }
            },
            other => Err(syntax(
                column,
                format!("expected a value or fact path, found {}", other.describe()),
            )),
        }
    }
}

fn display_operand(o: &Operand) -> String {
    match o {
        Operand::Fact(p) => format!("facts.{}", fmt_segments(p)),
        Operand::Param(p) => format!("params.{p}"),
        Operand::Literal(Value::String(s)) => quote(s),
        Operand::Literal(v) => v.to_string(),
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Const(b) => write!(f, "{b}"),
            Condition::Exists(p) => write!(f, "exists facts.{}", fmt_segments(p)),
            Condition::Compare { left, op, right } => write!(
                f,
                "{} {} {}",
                display_operand(left),
                op.as_str(),
                display_operand(right)
            ),
            Condition::Not(c) => match **c {
                Condition::And(_) | Condition::Or(_) => write!(f, "not ({c})"),
                _ => write!(f, "not {c}"),
            },
            Condition::And(cs) => {
                for (i, c) in cs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" and ")?;
                    }
                    match c {
                        Condition::Or(_) => write!(f, "({c})")?,
                        _ => write!(f, "{c}")?,
                    }
                }
                Ok(())
            }
            Condition::Or(cs) => {
                for (i, c) in cs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" or ")?;
                    }
                    write!(f, "{c}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for Condition {
    type Err = ConditionError;
    fn from_str(s: &str) -> Result<Self, ConditionError> {
        Condition::parse(s)
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Condition::parse(&text).map_err(|e| D::Error::custom(format!("condition {text:?}: {e}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(text: &str, facts: &Value) -> bool {
        Condition::parse(text).unwrap().evaluate(facts).unwrap()
    }

    #[test]
    fn evaluates_on_facts() {
        let facts = json!({
            "bmc": {"ip": "10.0.0.5"},
            "lan": {"IP Address": "10.0.0.9", "Subnet Mask": "255.255.255.0", "MAC \"Address\"": "x"},
            "cpus": 8,
            "mem_gib": 15.5,
            "disks": [{"name": "sda", "size": 100}, {"name": "sdb", "size": 200}],
            "tags": ["gpu", "lab"],
            "vendor": "Dell Inc.",
            "nothing": null
        });
        let cases = [
            (r#"facts.bmc.ip == "10.0.0.5""#, true),
            (r#"facts.bmc.ip != "10.0.0.5""#, false),
            ("exists facts.disks", true),
            ("exists facts.nothing", false),
            ("exists facts.missing.deeper", false),
            ("facts.cpus >= 8", true),
            ("facts.cpus > 8", false),
            ("facts.cpus == 8.0", true),
            ("facts.mem_gib < 16", true),
            ("facts.disks.1.size == 200", true),
            ("facts.disks.7.size == null", true),
            (r#"facts.tags contains "gpu""#, true),
            (r#"facts.vendor contains "Dell""#, true),
            (r#"facts.vendor contains 3"#, false),
            (r#"facts.missing == "x""#, false),
            (r#"facts.missing != "x""#, true),
            ("facts.missing >= 1", false),
            (r#"facts.vendor > 3"#, false),
            (r#"facts.vendor >= "Dell""#, true),
            ("facts.cpus >= 8 and exists facts.bmc", true),
            ("facts.cpus >= 16 or exists facts.bmc", true),
            ("not exists facts.bmc", false),
            ("not (facts.cpus >= 16 or facts.cpus < 4)", true),
            ("true", true),
            ("false or (true and not false)", true),
            ("8 <= facts.cpus", true),
            (r#"facts.lan."IP Address" == "10.0.0.9""#, true),
            (r#"exists facts."lan"."Subnet Mask".x"#, false),
            (r#"exists facts.lan."MAC \"Address\"""#, true),
            (r#"facts.lan."IP Address".0 == null"#, true),
        ];
        for (text, want) in cases {
            assert_eq!(eval(text, &facts), want, "{text}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in [
            r#"facts.bmc.ip == "10.0.0.5""#,
            "exists facts.disks and (facts.cpus >= 8 or facts.gpu == true)",
            "not (exists facts.a and exists facts.b)",
            "not exists facts.a",
            r#"facts.name == "quote \" and \\ backslash""#,
            "facts.x == -2.5 or facts.y != null",
            r#"facts.lan."IP Address" == "10.0.0.9" and exists facts.a."b c".d"#,
        ] {
            let c = Condition::parse(text).unwrap();
            assert_eq!(c.to_string(), text);
            assert_eq!(Condition::parse(&c.to_string()).unwrap(), c);
        }
        let c = Condition::parse("(facts.a == 1 and facts.b == 2) or facts.c == 3").unwrap();
        assert_eq!(
            c.to_string(),
            "facts.a == 1 and facts.b == 2 or facts.c == 3"
        );
        assert_eq!(Condition::parse(&c.to_string()).unwrap(), c);
    }

    #[test]
    fn syntax_errors_say_where_and_what() {
        let cases = [
            ("", "at column 1: expected a condition, found the end"),
            (
                "facts.ready",
                "at column 12: expected a comparison (==, !=, <, <=, >, >=, contains) after facts.ready; to test presence write `exists facts.ready`",
            ),
            (
                "facts.a = 1",
                "at column 9: unexpected character '=' (equality is `==`)",
            ),
            (
                "facts.a == 1 && facts.b == 2",
                "at column 14: unexpected character '&' (write `and`, `or`, `not`)",
            ),
            (
                "facts.a == 'x'",
                "at column 12: unexpected character '\\'' (strings use double quotes)",
            ),
            (r#"facts.a == "x"#, "at column 12: unterminated string"),
            (
                "cpus >= 8",
                "at column 1: unknown name `cpus`: operands are facts.PATH, params.NAME, \"strings\", numbers, true, false or null",
            ),
            ("facts. == 1", "at column 1: invalid fact path `facts.` (like facts.bmc.ip)"),
            (
                "(facts.a == 1",
                "at column 14: expected `)`, found the end",
            ),
            (
                "facts.a == 1 facts.b == 2",
                "at column 14: unexpected `facts.b` after a complete condition",
            ),
            (
                r#"exists "x""#,
                "at column 8: `exists` takes a fact path like facts.disks",
            ),
            (
                "params.a.b == 1",
                "at column 1: invalid parameter reference `params.a.b` (like params.name)",
            ),
            ("facts.a == 1.2.3", "at column 12: invalid number \"1.2.3\""),
            (r#"facts."x == 1"#, "at column 7: unterminated string"),
            (
                r#"facts.lan."".x == 1"#,
                r#"at column 1: invalid fact path `facts.lan."".x` (like facts.bmc.ip or facts.lan."IP Address")"#,
            ),
            (
                r#"facts.lan."a". == 1"#,
                r#"at column 1: invalid fact path `facts.lan.a.""` (like facts.bmc.ip or facts.lan."IP Address")"#,
            ),
            (
                r#"params."x" == 1"#,
                "at column 1: invalid fact path `params.x` (like facts.bmc.ip or facts.lan.\"IP Address\")",
            ),
        ];
        for (text, want) in cases {
            let err = Condition::parse(text).unwrap_err();
            assert_eq!(err.to_string(), want, "{text}");
        }
    }

    #[test]
    fn params_resolve_to_literals() {
        let c = Condition::parse(r#"facts.bmc.ip == params.bmc_ip and params.hook != """#).unwrap();
        assert_eq!(
            c.params().into_iter().collect::<Vec<_>>(),
            ["bmc_ip", "hook"]
        );
        assert_eq!(
            c.evaluate(&json!({})),
            Err(ConditionError::UnresolvedParam("bmc_ip".into()))
        );
        let params = BTreeMap::from([
            ("bmc_ip".to_owned(), json!("10.0.0.5")),
            ("hook".to_owned(), json!("http://hook")),
        ]);
        let r = c.resolve_params(&params).unwrap();
        assert_eq!(
            r.to_string(),
            r#"facts.bmc.ip == "10.0.0.5" and "http://hook" != """#
        );
        assert!(r.evaluate(&json!({"bmc": {"ip": "10.0.0.5"}})).unwrap());
        assert!(r.params().is_empty());
        let list = BTreeMap::from([
            ("bmc_ip".to_owned(), json!(["a"])),
            ("hook".to_owned(), json!("")),
        ]);
        assert_eq!(
            c.resolve_params(&list),
            Err(ConditionError::NonScalarParam("bmc_ip".into()))
        );
        assert_eq!(
            c.resolve_params(&BTreeMap::new()),
            Err(ConditionError::UnknownParam("bmc_ip".into()))
        );
    }

    #[test]
    fn serde_is_the_text_in_every_format() {
        let c = Condition::parse("facts.cpus >= 8").unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), r#""facts.cpus >= 8""#);
        let bin = postcard::to_stdvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<Condition>(&bin).unwrap(), c);
        let err = serde_json::from_str::<Condition>(r#""facts.cpus >=""#).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(r#"condition "facts.cpus >=": at column 14: expected a value"#),
            "{err}"
        );
    }
}
