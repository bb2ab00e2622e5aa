//! Tests of the agent configuration: defaults, refusals naming the key, bounds.

use super::*;

#[test]
fn empty_file_gives_defaults() {
    let c = AgentConfig::parse("", Path::new("a.toml")).unwrap();
    assert_eq!(c.interval_ms, 1000);
    assert_eq!(c.aggregator.list(), vec!["http://127.0.0.1:7070"]);
}

#[test]
fn unknown_key_names_file_and_key() {
    let e = AgentConfig::parse("intervall_ms = 5", Path::new("a.toml")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("a.toml") && msg.contains("intervall_ms"),
        "{msg}"
    );
}

#[test]
fn invalid_value_names_key_and_reason() {
    let e = AgentConfig::parse("interval_ms = 1", Path::new("a.toml")).unwrap_err();
    assert!(e.to_string().contains("`interval_ms`: 1 is below"), "{e}");
    let e = AgentConfig::parse("aggregator = \"127.0.0.1:1\"", Path::new("a.toml")).unwrap_err();
    assert!(e.to_string().contains("http://"), "{e}");
}

#[test]
fn collectors_can_be_switched_off_and_intervals_are_checked() {
    let c = AgentConfig::parse(
        "[collect]\nnetwork = false\ntemperatures = false\nfilesystems_interval_secs = 5",
        Path::new("a.toml"),
    )
    .unwrap();
    assert!(!c.collect.network && !c.collect.temperatures);
    assert!(c.collect.disk && c.collect.filesystems && c.collect.system);
    assert_eq!(c.collect.filesystems_interval_secs, 5);
    let e =
        AgentConfig::parse("[collect]\nsystem_interval_secs = 0", Path::new("a.toml")).unwrap_err();
    assert!(e.to_string().contains("system_interval_secs"), "{e}");
    let e = AgentConfig::parse("[collect]\nnetwrok = false", Path::new("a.toml")).unwrap_err();
    assert!(e.to_string().contains("netwrok"), "{e}");
}

#[test]
fn proc_and_sys_roots_default_to_the_mounts_and_must_be_directories() {
    let c = AgentConfig::parse("", Path::new("a.toml")).unwrap();
    assert_eq!(c.collect.proc_root, Path::new("/proc"));
    assert_eq!(c.collect.sys_root, Path::new("/sys"));
    let dir = std::env::temp_dir();
    let c = AgentConfig::parse(
        &format!(
            "[collect]\nproc_root = {:?}\nsys_root = {:?}",
            dir.join("."),
            dir
        ),
        Path::new("a.toml"),
    )
    .unwrap();
    assert_eq!(c.collect.sys_root, dir);
    let e = AgentConfig::parse("[collect]\nproc_root = \"host/proc\"", Path::new("a.toml"))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("`collect.proc_root`: host/proc must be an absolute path"),
        "{e}"
    );
    if cfg!(target_os = "linux") {
        let e = AgentConfig::parse(
            "[collect]\nsys_root = \"/nonexistent/sys\"",
            Path::new("a.toml"),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("`collect.sys_root`: /nonexistent/sys is not a readable directory"),
            "{e}"
        );
    }
}

#[test]
fn batch_bytes_and_top_lists_are_bounded() {
    let c = AgentConfig::parse("", Path::new("a.toml")).unwrap();
    assert_eq!(c.batch_max_bytes, 1 << 20);
    let e = AgentConfig::parse("batch_max_bytes = 100", Path::new("a.toml")).unwrap_err();
    assert!(
        e.to_string().contains("`batch_max_bytes`: 100 is outside"),
        "{e}"
    );
    let e = AgentConfig::parse("[collect]\ntop_processes = 101", Path::new("a.toml")).unwrap_err();
    assert!(e.to_string().contains("at most 100"), "{e}");
}

#[test]
fn several_aggregators_are_accepted() {
    let c = AgentConfig::parse(
        "aggregator = [\"http://a:1\", \"http://b:2\"]",
        Path::new("a.toml"),
    )
    .unwrap();
    assert_eq!(c.aggregator.list().len(), 2);
}
