//! The parser of conditions: hand-written recursive descent over the
//! grammar in [`super`], with field paths checked against the store's
//! numeric fields and every error pointing at its column.

use super::{Cmp, Condition, Expr, ExprError, Field, Select};
use crate::store::series::FIELDS;

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
