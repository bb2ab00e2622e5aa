//! Summary and description templates: text with `{{placeholder}}`s filled
//! from the alert. Checked when the rules load, so a typo is refused then,
//! not sent to a pager.
//!
//! Placeholders: `{{host}}`, `{{value}}`, `{{rule}}`, `{{severity}}`,
//! `{{entry}}` (the list entry of a `[*]` rule, e.g. the mount point),
//! `{{threshold}}`, `{{window}}` (`for`, `after` or `window` of the rule),
//! and `{{labels.NAME}}` (an agent label of the host, or a label of the rule).

use std::collections::BTreeMap;

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{` with no `}}` after it.
    #[error("`{{{{` without `}}}}` in {0:?}")]
    Unclosed(String),
    /// A placeholder that is not one of the known ones.
    #[error(
        "unknown placeholder `{{{{{0}}}}}` (known: host, value, rule, severity, entry, threshold, window, labels.NAME)"
    )]
    Unknown(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Part>);

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Var(Var),
}

#[derive(Debug, Clone, PartialEq)]
enum Var {
    Host,
    Value,
    Rule,
    Severity,
    Entry,
    Threshold,
    Window,
    Label(String),
}

/// What a template is filled with.
#[derive(Debug)]
pub struct Context<'a> {
    /// The host.
    pub host: &'a str,
    /// The value, formatted.
    pub value: f64,
    /// The rule's name.
    pub rule: &'a str,
    /// Its severity.
    pub severity: &'a str,
    /// The list entry, if any.
    pub entry: Option<&'a str>,
    /// The threshold.
    pub threshold: Option<f64>,
    /// The rule's duration, formatted.
    pub window: &'a str,
    /// Agent labels, then the rule's labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// A number as people read it: at most three decimals, none when whole.
pub fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

impl Template {
    /// Parses `text`; the error names the bad placeholder.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].into()));
            }
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                return Err(TemplateError::Unclosed(text.into()));
            };
            let name = after[..end].trim();
            let var = match name {
                "host" => Var::Host,
                "value" => Var::Value,
                "rule" => Var::Rule,
                "severity" => Var::Severity,
                "entry" => Var::Entry,
                "threshold" => Var::Threshold,
                "window" => Var::Window,
                n if n.starts_with("labels.") && n.len() > 7 => Var::Label(n[7..].into()),
                n => return Err(TemplateError::Unknown(n.into())),
            };
            parts.push(Part::Var(var));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.into()));
        }
        Ok(Self(parts))
    }

    /// The text with every placeholder filled.
    pub fn render(&self, c: &Context<'_>) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(Var::Host) => out.push_str(c.host),
                Part::Var(Var::Value) => out.push_str(&number(c.value)),
                Part::Var(Var::Rule) => out.push_str(c.rule),
                Part::Var(Var::Severity) => out.push_str(c.severity),
                Part::Var(Var::Entry) => out.push_str(c.entry.unwrap_or("")),
                Part::Var(Var::Threshold) => {
                    out.push_str(&c.threshold.map(number).unwrap_or_default())
                }
                Part::Var(Var::Window) => out.push_str(c.window),
                Part::Var(Var::Label(l)) => {
                    out.push_str(c.labels.get(l).map(String::as_str).unwrap_or(""))
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_fill_and_typos_are_refused() {
        let t = Template::parse(
            "{{host}} at {{ value }}% (> {{threshold}}) on {{labels.role}}{{entry}}",
        )
        .unwrap();
        let labels = BTreeMap::from([("role".to_string(), "web".to_string())]);
        let c = Context {
            host: "web-1",
            value: 93.456_78,
            rule: "r",
            severity: "warning",
            entry: None,
            threshold: Some(90.0),
            window: "2m",
            labels: &labels,
        };
        assert_eq!(t.render(&c), "web-1 at 93.457% (> 90) on web");
        let e = Template::parse("{{hots}}").unwrap_err();
        assert_eq!(e, TemplateError::Unknown("hots".into()));
        assert!(
            e.to_string().contains("unknown placeholder `{{hots}}`"),
            "{e}"
        );
        assert!(Template::parse("{{host").is_err());
        assert_eq!(number(0.5), "0.5");
    }
}
