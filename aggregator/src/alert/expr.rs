//! The expression language of alert rules: parsing and evaluation.
//!
//! A condition is an arithmetic expression over a host's numeric fields,
//! compared with a number:
//!
//! ```text
//! condition := expr ("<" | "<=" | ">" | ">=") number
//! expr      := term (("+" | "-") term)*
//! term      := unary (("*" | "/") unary)*
//! unary     := "-" unary | number | field | "(" expr ")"
//! field     := family "." name ("[" select "]")? ("." name)*
//! select    := "*" | key "=" string
//! ```
//!
//! A field is named as in the host topics' JSON (`cpu.total_pct`,
//! `memory.used_bytes`, `filesystems.mounts[mount="/"].used_bytes`,
//! `temperatures.sensors[*].celsius`) and must be one of the numeric fields
//! the store keeps ([`crate::store::series::FIELDS`]). A list entry is
//! chosen by its label (`mount`, `interface`, `device`, `sensor`, `core`;
//! `name` and `label` are accepted for the JSON keys of interfaces, devices
//! and sensors) or `*` for every entry: a rule with `*` is evaluated, and
//! alerts, per entry, and every `*` field of one expression joins on the
//! same entry, so all of them must be of one list.
//!
//! Hand-written recursive descent: the grammar is a dozen lines, and the
//! general expression crates (`evalexpr`, `fasteval`) have neither the
//! dotted paths with entry selectors nor errors that point at the column,
//! while bringing a language (strings, functions, assignment) a rule does
//! not need.

use std::collections::{HashMap, HashSet};

use crate::store::series::FIELDS;

/// Why an expression was refused: where (byte offset) and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("at column {}: {reason}", .at + 1)]
pub struct ExprError {
    /// Byte offset in the expression.
    pub at: usize,
    /// What is wrong.
    pub reason: String,
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Cmp {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

impl Cmp {
    /// Whether `v cmp threshold` holds.
    pub fn holds(self, v: f64, threshold: f64) -> bool {
        match self {
            Cmp::Gt => v > threshold,
            Cmp::Ge => v >= threshold,
            Cmp::Lt => v < threshold,
            Cmp::Le => v <= threshold,
        }
    }

    /// Whether the condition points upwards (`>`, `>=`).
    pub fn upwards(self) -> bool {
        matches!(self, Cmp::Gt | Cmp::Ge)
    }

    /// Its spelling.
    pub fn symbol(self) -> &'static str {
        match self {
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
        }
    }
}

/// Which entries of a list a field takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Select {
    /// Not a list field.
    Plain,
    /// Every entry.
    Each,
    /// The entry with this label value.
    Is(String),
}

/// A numeric field of a host sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The store's field name (`filesystems.used_bytes`).
    pub name: &'static str,
    /// Which entries.
    pub select: Select,
}

/// An arithmetic expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A number.
    Num(f64),
    /// A field.
    Field(Field),
    /// `-e`
    Neg(Box<Expr>),
    /// `a op b`, op one of `+ - * /`.
    Bin(char, Box<Expr>, Box<Expr>),
}

/// `expr cmp threshold`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The left side.
    pub expr: Expr,
    /// The comparison.
    pub cmp: Cmp,
    /// The right side.
    pub threshold: f64,
}

/// The values of one sample, by field and entry label.
#[derive(Debug, Default)]
pub struct Values {
    plain: HashMap<&'static str, f64>,
    listed: HashMap<&'static str, Vec<(String, f64)>>,
}

impl Values {
    /// The fields of `sample` in `wanted` (the fields some rule reads:
    /// nothing else is copied).
    pub fn of(sample: &hostpulse_proto::Sample, wanted: &HashSet<&'static str>) -> Self {
        let mut v = Values::default();
        crate::store::series::for_each_field(sample, |name, label, value| {
            if !wanted.contains(name) {
                return;
            }
            match label {
                None => {
                    v.plain.insert(name, value);
                }
                Some((_, entry)) => v
                    .listed
                    .entry(name)
                    .or_default()
                    .push((entry.to_string(), value)),
            }
        });
        v
    }

    fn get(&self, field: &Field, entry: Option<&str>) -> Option<f64> {
        match &field.select {
            Select::Plain => self.plain.get(field.name).copied(),
            Select::Is(want) => self.entry(field.name, want),
            Select::Each => self.entry(field.name, entry?),
        }
    }

    fn entry(&self, name: &str, want: &str) -> Option<f64> {
        self.listed
            .get(name)?
            .iter()
            .find(|(e, _)| e == want)
            .map(|(_, v)| *v)
    }
}

impl Expr {
    /// Its value for one entry (`None` for an expression without `*`), or
    /// `None` when the sample lacks a field it reads (or divides by zero).
    pub fn eval(&self, values: &Values, entry: Option<&str>) -> Option<f64> {
        let v = match self {
            Expr::Num(n) => *n,
            Expr::Field(f) => values.get(f, entry)?,
            Expr::Neg(e) => -e.eval(values, entry)?,
            Expr::Bin(op, a, b) => {
                let (a, b) = (a.eval(values, entry)?, b.eval(values, entry)?);
                match op {
                    '+' => a + b,
                    '-' => a - b,
                    '*' => a * b,
                    _ => a / b,
                }
            }
        };
        v.is_finite().then_some(v)
    }

    /// The entries an expression with `*` runs over in `values` (the
    /// entries of its first `*` field); `[None]` without `*`.
    pub fn entries(&self, values: &Values) -> Vec<Option<String>> {
        match self.each_field() {
            None => vec![None],
            Some(name) => values
                .listed
                .get(name)
                .map(|l| l.iter().map(|(e, _)| Some(e.clone())).collect())
                .unwrap_or_default(),
        }
    }

    /// Adds the name of every field it reads to `out`.
    pub fn fields(&self, out: &mut HashSet<&'static str>) {
        match self {
            Expr::Num(_) => {}
            Expr::Field(f) => {
                out.insert(f.name);
            }
            Expr::Neg(e) => e.fields(out),
            Expr::Bin(_, a, b) => {
                a.fields(out);
                b.fields(out);
            }
        }
    }

    /// The first field selected with `*`.
    pub fn each_field(&self) -> Option<&'static str> {
        match self {
            Expr::Num(_) => None,
            Expr::Field(f) => (f.select == Select::Each).then_some(f.name),
            Expr::Neg(e) => e.each_field(),
            Expr::Bin(_, a, b) => a.each_field().or_else(|| b.each_field()),
        }
    }

    /// The label key of the list the `*` fields are entries of.
    pub fn each_key(&self) -> Option<&'static str> {
        self.each_field().and_then(label_key)
    }

    fn each_keys(&self, out: &mut Vec<&'static str>) {
        match self {
            Expr::Num(_) => {}
            Expr::Field(f) => {
                if f.select == Select::Each {
                    out.extend(label_key(f.name));
                }
            }
            Expr::Neg(e) => e.each_keys(out),
            Expr::Bin(_, a, b) => {
                a.each_keys(out);
                b.each_keys(out);
            }
        }
    }
}

fn label_key(name: &str) -> Option<&'static str> {
    FIELDS
        .iter()
        .find(|(f, _)| *f == name)
        .and_then(|(_, k)| *k)
}

/// The JSON names of the lists whose entries carry a label, dropped from a
/// path (`filesystems.mounts[...]` reads the store's `filesystems.*{mount}`).
const LISTS: [&str; 4] = ["interfaces", "devices", "mounts", "sensors"];

/// Other spellings of a label key (the entry's key in the JSON payload).
fn key_matches(label: &str, given: &str) -> bool {
    label == given
        || matches!(
            (label, given),
            ("interface", "name") | ("device", "name") | ("sensor", "label")
        )
}

/// Parses `expr cmp number`.
pub fn parse_condition(text: &str) -> Result<Condition, ExprError> {
    let mut p = Parser { text, pos: 0 };
    let expr = p.expr()?;
    p.skip_ws();
    let at = p.pos;
    let cmp = if p.eat(">=") {
        Cmp::Ge
    } else if p.eat("<=") {
        Cmp::Le
    } else if p.eat(">") {
        Cmp::Gt
    } else if p.eat("<") {
        Cmp::Lt
    } else {
        return Err(p.error(
            at,
            "expected a comparison (>, >=, <, <=) after the expression",
        ));
    };
    p.skip_ws();
    let at = p.pos;
    let threshold = match p.unary()? {
        Expr::Num(n) => n,
        Expr::Neg(e) if matches!(*e, Expr::Num(_)) => match *e {
            Expr::Num(n) => -n,
            _ => unreachable!(),
        },
        _ => return Err(p.error(at, "the right side of a comparison must be a number")),
    };
    p.skip_ws();
    if p.pos < text.len() {
        return Err(p.error(p.pos, "unexpected text after the condition"));
    }
    let mut keys = Vec::new();
    expr.each_keys(&mut keys);
    keys.dedup();
    if keys.len() > 1 {
        return Err(p.error(
            0,
            &format!(
                "`[*]` fields of one expression must be entries of one list, not {}",
                keys.join(" and ")
            ),
        ));
    }
    Ok(Condition {
        expr,
        cmp,
        threshold,
    })
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, at: usize, reason: &str) -> ExprError {
        ExprError {
            at,
            reason: reason.into(),
        }
    }

    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    fn eat(&mut self, s: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.rest().chars().next()
    }

    fn expr(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.term()?;
        while let Some(op @ ('+' | '-')) = self.peek() {
            self.pos += 1;
            left = Expr::Bin(op, Box::new(left), Box::new(self.term()?));
        }
        Ok(left)
    }

    fn term(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.unary()?;
        while let Some(op @ ('*' | '/')) = self.peek() {
            self.pos += 1;
            left = Expr::Bin(op, Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        let at = self.pos;
        match self.peek() {
            Some('-') => {
                self.pos += 1;
                Ok(Expr::Neg(Box::new(self.unary()?)))
            }
            Some('(') => {
                self.pos += 1;
                let e = self.expr()?;
                if !self.eat(")") {
                    return Err(self.error(self.pos, "expected `)`"));
                }
                Ok(e)
            }
            Some(c) if c.is_ascii_digit() || c == '.' => self.number(),
            Some(c) if c.is_ascii_alphabetic() => self.field(),
            Some(c) => Err(self.error(self.pos, &format!("unexpected `{c}`"))),
            None => Err(self.error(at.max(self.pos), "expected a number or a field")),
        }
    }

    fn number(&mut self) -> Result<Expr, ExprError> {
        let at = self.pos;
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
            .unwrap_or(self.rest().len());
        let raw = &self.rest()[..len];
        let n: f64 = raw
            .replace('_', "")
            .parse()
            .map_err(|_| self.error(at, &format!("`{raw}` is not a number")))?;
        self.pos += len;
        Ok(Expr::Num(n))
    }

    fn ident(&mut self) -> Option<&str> {
        let rest = self.rest();
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if len == 0 {
            return None;
        }
        let start = self.pos;
        self.pos += len;
        Some(&self.text[start..start + len])
    }

    fn field(&mut self) -> Result<Expr, ExprError> {
        let at = self.pos;
        let mut parts: Vec<String> = Vec::new();
        let mut select: Option<(usize, Option<(String, String)>)> = None;
        loop {
            let Some(name) = self.ident() else {
                return Err(self.error(self.pos, "expected a field name"));
            };
            parts.push(name.to_string());
            if self.rest().starts_with('[') {
                if select.is_some() {
                    return Err(self.error(self.pos, "only one `[...]` per field"));
                }
                let sat = self.pos;
                self.pos += 1;
                let s = self.selector()?;
                select = Some((sat, s));
            }
            if self.rest().starts_with('.') {
                self.pos += 1;
                continue;
            }
            break;
        }
        let spelled = &self.text[at..self.pos];
        let family = parts.remove(0);
        parts.retain(|p| !LISTS.contains(&p.as_str()));
        let name = format!("{family}.{}", parts.join("."));
        let Some((name, key)) = FIELDS
            .iter()
            .find(|(f, _)| *f == name)
            .map(|(f, k)| (*f, *k))
        else {
            return Err(self.error(
                at,
                &format!(
                    "`{spelled}` is not a numeric field of a host topic (see README, \"Alerting\")"
                ),
            ));
        };
        let select = match (key, select) {
            (None, None) => Select::Plain,
            (None, Some((sat, _))) => {
                return Err(self.error(sat, &format!("`{name}` is not a list: no `[...]`")));
            }
            (Some(key), None) => {
                return Err(self.error(
                    at,
                    &format!("`{spelled}` is a list entry's field: choose entries with `[{key}=\"...\"]` or `[*]`"),
                ));
            }
            (Some(_), Some((_, None))) => Select::Each,
            (Some(key), Some((sat, Some((k, v))))) => {
                if !key_matches(key, &k) {
                    return Err(self.error(
                        sat,
                        &format!("entries of `{name}` are chosen by `{key}`, not `{k}`"),
                    ));
                }
                Select::Is(v)
            }
        };
        Ok(Expr::Field(Field { name, select }))
    }

    /// After `[`: `*]` or `key="value"]`.
    fn selector(&mut self) -> Result<Option<(String, String)>, ExprError> {
        if self.eat("*") {
            if !self.eat("]") {
                return Err(self.error(self.pos, "expected `]` after `[*`"));
            }
            return Ok(None);
        }
        self.skip_ws();
        let Some(key) = self.ident().map(str::to_string) else {
            return Err(self.error(self.pos, "expected `*` or key=\"value\" in `[...]`"));
        };
        if !self.eat("=") {
            return Err(self.error(self.pos, "expected `=` after the key"));
        }
        self.skip_ws();
        if !self.rest().starts_with('"') {
            return Err(self.error(self.pos, "expected a quoted value"));
        }
        self.pos += 1;
        let mut value = String::new();
        let mut chars = self.rest().char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, c)) => value.push(c),
                    None => return Err(self.error(self.text.len(), "unterminated string")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err(self.error(self.text.len(), "unterminated string")),
            }
        };
        self.pos += end + 1;
        if !self.eat("]") {
            return Err(self.error(self.pos, "expected `]`"));
        }
        Ok(Some((key, value)))
    }
}

#[cfg(test)]
mod tests;
