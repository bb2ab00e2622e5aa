//! Tests of the rules file: globs, each kind parsed, and refusals that
//! name the file, the rule, the key and the reason.

use super::*;

fn refusal(rule: &str) -> String {
    parse(&format!("[[rule]]\n{rule}\n"), Path::new("alerts.toml"))
        .unwrap_err()
        .to_string()
}

#[test]
fn globs_match_like_a_shell() {
    assert!(glob("web-*", "web-01"));
    assert!(glob("*", ""));
    assert!(glob("db-?", "db-1"));
    assert!(!glob("db-?", "db-12"));
    assert!(glob("*-01", "web-01"));
    assert!(!glob("web-*", "db-01"));
}

#[test]
fn each_kind_parses() {
    let rules = parse(
        r#"
[[rule]]
name = "cpu"
expr = "cpu.total_pct > 90"
for = "2m"
clear = 80
hosts = ["web-*"]
match_labels = { role = "web" }
summary = "CPU {{value}} on {{host}}"

[[rule]]
name = "gone"
kind = "absent"
after = "60s"
severity = "critical"

[[rule]]
name = "fill"
kind = "predict"
expr = 'filesystems.mounts[mount="/"].free_bytes < 0'
window = "1h"
horizon = "4h"
"#,
        Path::new("a.toml"),
    )
    .unwrap();
    assert_eq!(rules.len(), 3);
    assert_eq!(rules[0].hold, Duration::from_secs(120));
    assert_eq!(rules[0].clear, 80.0);
    assert!(rules[0].still_firing(81.0) && !rules[0].still_firing(80.0));
    let labels = BTreeMap::from([("role".to_string(), "web".to_string())]);
    assert!(rules[0].selects("web-1", &labels));
    assert!(!rules[0].selects("db-1", &labels));
    assert!(!rules[0].selects("web-1", &BTreeMap::new()));
    assert_eq!(rules[1].after, Duration::from_secs(60));
    assert_eq!(rules[2].horizon, Duration::from_secs(4 * 3600));
}

#[test]
fn bad_rules_are_refused_with_where_and_why() {
    for (rule, want) in [
        (
            "name = \"a\"\nexpr = \"cpu.total > 1\"",
            "rule[0] \"a\" expr",
        ),
        (
            "name = \"a\"\nexpr = \"cpu.total_pct > 90\"\nclear = 95",
            "\"a\" clear`: 95 is on the firing side",
        ),
        (
            "name = \"a\"\nexpr = \"cpu.total_pct > 90\"\nfor = \"soon\"",
            "not a duration",
        ),
        ("name = \"a\"\nkind = \"absent\"", "needs it"),
        (
            "name = \"a\"\nkind = \"absent\"\nafter = \"1m\"\nexpr = \"cpu.total_pct > 1\"",
            "not used by an absent rule",
        ),
        (
            "name = \"a\"\nkind = \"predict\"\nexpr = \"cpu.total_pct > 1\"",
            "window",
        ),
        (
            "name = \"a\"\nexpr = \"cpu.total_pct > 1\"\nseverity = \"page\"",
            "severity",
        ),
        ("name = \"a b\"\nexpr = \"cpu.total_pct > 1\"", "name"),
        (
            "name = \"a\"\nexpr = \"cpu.total_pct > 1\"\nsummary = \"{{nope}}\"",
            "summary",
        ),
        (
            "name = \"a\"\nexpr = \"cpu.total_pct > 1\"\nlabels = { host = \"x\" }",
            "set by hostpulse",
        ),
        (
            "name = \"a\"\nexpr = \"cpu.total_pct > 1\"\nbogus = 1",
            "bogus",
        ),
        ("name = \"a\"\nkind = \"sometimes\"", "sometimes"),
    ] {
        let e = refusal(rule);
        assert!(e.contains("alerts.toml"), "{rule}: {e}");
        assert!(e.contains(want), "{rule}: {e}");
    }
    let e = parse(
        "[[rule]]\nname = \"a\"\nexpr = \"cpu.total_pct > 1\"\n[[rule]]\nname = \"a\"\nexpr = \"cpu.total_pct > 1\"\n",
        Path::new("x.toml"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("rule[1] \"a\" name"), "{e}");
}
