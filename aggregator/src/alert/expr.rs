//! The expression language of alert rules: its syntax tree and evaluation
//! (the parser is the `parse` submodule).
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
pub use parse::parse_condition;

mod parse;

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

#[cfg(test)]
mod tests;
