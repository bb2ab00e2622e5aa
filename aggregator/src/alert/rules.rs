//! The rules file (`deploy/alerts.toml`): rules as data, then validation
//! into [`Rule`]s the evaluator runs.
//!
//! Every refusal names the file, the rule (`rule[2] "RootFull"`), the key
//! and the reason, like the rest of the configuration. Durations are
//! written as humantime strings (`"90s"`, `"5m"`, `"4h"`), as operators
//! write them in Prometheus rules; the unit is in the value.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hostpulse_common::config::ConfigError;
use serde::{Deserialize, Serialize};

use super::expr::{Cmp, Condition, parse_condition};
use super::template::Template;

/// The rules file as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// The rules, in order.
    #[serde(default)]
    pub rule: Vec<RuleConfig>,
}

/// What a rule watches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `expr` holds (for `for`), until it crosses `clear`.
    #[default]
    Threshold,
    /// The host sent nothing for `after`.
    Absent,
    /// A straight line fitted to `expr`'s values over `window` crosses the
    /// threshold within `horizon`.
    Predict,
}

impl Kind {
    /// Its name with its article, for messages.
    pub fn article(self) -> &'static str {
        match self {
            Kind::Threshold => "a threshold",
            Kind::Absent => "an absent",
            Kind::Predict => "a predict",
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Threshold => "threshold",
            Kind::Absent => "absent",
            Kind::Predict => "predict",
        }
    }
}

/// One `[[rule]]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique name; the `alertname` label.
    pub name: String,
    /// `threshold` (default), `absent` or `predict`.
    #[serde(default)]
    pub kind: Kind,
    /// The condition (`threshold`, `predict`): `expr cmp number`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
    /// How long the condition must hold before firing (`threshold`,
    /// `predict`); none: at once.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    /// Once firing, resolve only when the value is back past this number
    /// (hysteresis); none: the threshold itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear: Option<f64>,
    /// `absent`: silence that fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// `predict`: how far back the line is fitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// `predict`: how far ahead the crossing is looked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon: Option<String>,
    /// `critical`, `warning` or `info`.
    #[serde(default = "default_severity")]
    pub severity: String,
    /// Host name globs (`*`, `?`) the rule applies to; none: every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Agent labels a host must carry (all of them, exactly).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Labels added to the alert.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// One line; `{{host}}`, `{{value}}`, ... (README, "Alerting").
    #[serde(default)]
    pub summary: String,
    /// More detail, same placeholders.
    #[serde(default)]
    pub description: String,
}

fn default_severity() -> String {
    "warning".into()
}

/// Severities a rule may have.
pub const SEVERITIES: [&str; 3] = ["critical", "warning", "info"];

/// Most rules in one file.
pub const MAX_RULES: usize = 1000;

/// A rule checked and ready to evaluate.
#[derive(Debug)]
pub struct Rule {
    /// As written (printed by `--check-config`).
    pub config: RuleConfig,
    /// Its name.
    pub name: Arc<str>,
    /// Its kind.
    pub kind: Kind,
    /// The condition (`threshold`, `predict`).
    pub condition: Option<Condition>,
    /// `for`.
    pub hold: Duration,
    /// Where a firing alert resolves (`threshold`, `predict`).
    pub clear: f64,
    /// `after`, `window`, `horizon` (zero where not used).
    pub after: Duration,
    /// `window`.
    pub window: Duration,
    /// `horizon`.
    pub horizon: Duration,
    /// The summary.
    pub summary: Template,
    /// The description.
    pub description: Template,
}

impl Rule {
    /// Whether the rule selects a host named `host` carrying `labels`.
    pub fn selects(&self, host: &str, labels: &BTreeMap<String, String>) -> bool {
        (self.config.hosts.is_empty() || self.config.hosts.iter().any(|g| glob(g, host)))
            && self
                .config
                .match_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
    }

    /// One line saying what the rule watches, as understood.
    pub fn describe(&self) -> String {
        let hosts = match self.config.hosts.is_empty() {
            true => "*".to_string(),
            false => self.config.hosts.join(","),
        };
        let what = match (self.kind, &self.config.expr) {
            (Kind::Absent, _) => format!("silent for {}", humantime::format_duration(self.after)),
            (Kind::Predict, Some(e)) => format!(
                "{e} within {} (line over {})",
                humantime::format_duration(self.horizon),
                humantime::format_duration(self.window)
            ),
            (_, Some(e)) => format!(
                "{e} for {}, clears at {}",
                humantime::format_duration(self.hold),
                self.clear
            ),
            (_, None) => String::new(),
        };
        format!(
            "{} [{} {}] hosts {hosts}: {what}",
            self.name,
            self.kind.name(),
            self.config.severity
        )
    }

    /// Whether a firing alert of value `v` still fires (hysteresis).
    pub fn still_firing(&self, v: f64) -> bool {
        let c = self
            .condition
            .as_ref()
            .expect("threshold and predict rules have one");
        match c.cmp {
            Cmp::Gt => v > self.clear,
            Cmp::Ge => v >= self.clear,
            Cmp::Lt => v < self.clear,
            Cmp::Le => v <= self.clear,
        }
    }
}

/// `*` any run, `?` any one character.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Reads and checks the rules file at `path`.
pub fn load(path: &Path) -> Result<Vec<Rule>, ConfigError> {
    let file: RulesFile = hostpulse_common::config::load(path)?;
    compile(file, path)
}

/// Parses and checks rules text; `path` only names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Rule>, ConfigError> {
    let file: RulesFile = hostpulse_common::config::parse(text, path)?;
    compile(file, path)
}

fn compile(file: RulesFile, path: &Path) -> Result<Vec<Rule>, ConfigError> {
    if file.rule.len() > MAX_RULES {
        return Err(ConfigError::invalid(
            path,
            "rule",
            format!("{} rules, more than {MAX_RULES}", file.rule.len()),
        ));
    }
    let mut names = std::collections::HashSet::new();
    let mut rules = Vec::with_capacity(file.rule.len());
    for (i, config) in file.rule.into_iter().enumerate() {
        let at = |key: &str| format!("rule[{i}] {:?} {key}", config.name);
        let bad = |key: &str, reason: String| ConfigError::invalid(path, at(key), reason);
        if config.name.is_empty()
            || !config
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad(
                "name",
                "must be non-empty letters, digits, `_` or `-`".into(),
            ));
        }
        if !names.insert(config.name.clone()) {
            return Err(bad("name", "another rule has this name".into()));
        }
        if !SEVERITIES.contains(&config.severity.as_str()) {
            return Err(bad(
                "severity",
                format!("must be one of {}", SEVERITIES.join(", ")),
            ));
        }
        let duration = |key: &str, v: &Option<String>| -> Result<Option<Duration>, ConfigError> {
            v.as_deref()
                .map(|s| {
                    humantime::parse_duration(s).map_err(|e| {
                        bad(
                            key,
                            format!("{s:?} is not a duration like \"90s\" or \"5m\": {e}"),
                        )
                    })
                })
                .transpose()
        };
        let hold = duration("for", &config.for_)?;
        let after = duration("after", &config.after)?;
        let window = duration("window", &config.window)?;
        let horizon = duration("horizon", &config.horizon)?;
        let unused = |key: &str, set: bool| -> Result<(), ConfigError> {
            match set {
                true => Err(bad(
                    key,
                    format!("is not used by {} rule", config.kind.article()),
                )),
                false => Ok(()),
            }
        };
        let condition = match config.kind {
            Kind::Absent => {
                unused("expr", config.expr.is_some())?;
                unused("for", hold.is_some())?;
                unused("clear", config.clear.is_some())?;
                unused("window", window.is_some())?;
                unused("horizon", horizon.is_some())?;
                match after {
                    Some(a) if a >= Duration::from_secs(1) => {}
                    Some(_) => return Err(bad("after", "must be at least 1s".into())),
                    None => return Err(bad("after", "an absent rule needs it".into())),
                }
                None
            }
            Kind::Threshold | Kind::Predict => {
                unused("after", after.is_some())?;
                let Some(expr) = &config.expr else {
                    return Err(bad(
                        "expr",
                        format!("{} rule needs it", config.kind.article()),
                    ));
                };
                let c = parse_condition(expr).map_err(|e| bad("expr", format!("{expr:?} {e}")))?;
                if let Some(clear) = config.clear {
                    let wrong_side = match c.cmp.upwards() {
                        true => clear > c.threshold,
                        false => clear < c.threshold,
                    };
                    if wrong_side || !clear.is_finite() {
                        return Err(bad(
                            "clear",
                            format!(
                                "{clear} is on the firing side of `{} {}`: it must be {} the threshold",
                                c.cmp.symbol(),
                                c.threshold,
                                if c.cmp.upwards() {
                                    "at most"
                                } else {
                                    "at least"
                                }
                            ),
                        ));
                    }
                }
                if config.kind == Kind::Predict {
                    let (Some(w), Some(h)) = (window, horizon) else {
                        return Err(bad(
                            if window.is_none() {
                                "window"
                            } else {
                                "horizon"
                            },
                            "a predict rule needs `window` and `horizon`".into(),
                        ));
                    };
                    if w < Duration::from_secs(1) || h.is_zero() {
                        return Err(bad(
                            "window",
                            "window must be at least 1s and horizon positive".into(),
                        ));
                    }
                } else {
                    unused("window", window.is_some())?;
                    unused("horizon", horizon.is_some())?;
                }
                Some(c)
            }
        };
        for g in &config.hosts {
            if g.is_empty() {
                return Err(bad("hosts", "an empty glob matches nothing".into()));
            }
        }
        for key in config.labels.keys() {
            if super::RESERVED_LABELS.contains(&key.as_str()) {
                return Err(bad(
                    "labels",
                    format!("`{key}` is set by hostpulse; choose another label name"),
                ));
            }
        }
        let summary =
            Template::parse(&config.summary).map_err(|e| bad("summary", e.to_string()))?;
        let description =
            Template::parse(&config.description).map_err(|e| bad("description", e.to_string()))?;
        let clear = match (&condition, config.clear) {
            (Some(_), Some(c)) => c,
            (Some(c), None) => c.threshold,
            (None, _) => 0.0,
        };
        rules.push(Rule {
            name: config.name.as_str().into(),
            kind: config.kind,
            condition,
            hold: hold.unwrap_or_default(),
            clear,
            after: after.unwrap_or_default(),
            window: window.unwrap_or_default(),
            horizon: horizon.unwrap_or_default(),
            summary,
            description,
            config,
        });
    }
    Ok(rules)
}

#[cfg(test)]
mod tests;
