//! Topic names and subscription patterns.
//!
//! Topics are dotted segments: `host.<host>.<metric>`, `hosts`, `$sys.*`.
//! Patterns use NATS subject rules so cluster mode maps one to one: `*`
//! matches exactly one segment, `>` (last segment only) matches one or more.

/// Longest topic or pattern accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;
/// Most segments in a topic or pattern.
pub const MAX_SEGMENTS: usize = 16;
/// Longest host segment; longer host names are cut.
const MAX_HOST_SEGMENT: usize = 64;

/// Why a topic or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Empty string.
    #[error("topic is empty")]
    Empty,
    /// Longer than allowed.
    #[error("topic is {len} bytes long, more than the limit of {limit}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// More segments than allowed.
    #[error("topic has {count} segments, more than the limit of {limit}")]
    TooManySegments {
        /// Segments found.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// `a..b`, a leading or a trailing dot.
    #[error("topic {0:?} has an empty segment")]
    EmptySegment(String),
    /// `>` before the last segment, or a wildcard inside a segment (`web-*`).
    #[error("topic {0:?}: `*` and `>` must be whole segments, and `>` only the last")]
    BadWildcard(String),
    /// Whitespace or control characters.
    #[error("topic {0:?} contains whitespace or control characters")]
    BadCharacter(String),
}

/// Checks a subscription pattern (or a plain topic) against the default limits.
pub fn validate_pattern(pattern: &str) -> Result<(), TopicError> {
    validate_pattern_within(pattern, MAX_TOPIC_LEN, MAX_SEGMENTS)
}

/// Checks a subscription pattern against the given length and segment limits.
pub fn validate_pattern_within(
    pattern: &str,
    max_len: usize,
    max_segments: usize,
) -> Result<(), TopicError> {
    if pattern.is_empty() {
        return Err(TopicError::Empty);
    }
    if pattern.len() > max_len {
        return Err(TopicError::TooLong {
            len: pattern.len(),
            limit: max_len,
        });
    }
    let short = || pattern.chars().take(64).collect::<String>();
    if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TopicError::BadCharacter(short()));
    }
    let segments: Vec<&str> = pattern.split('.').collect();
    if segments.len() > max_segments {
        return Err(TopicError::TooManySegments {
            count: segments.len(),
            limit: max_segments,
        });
    }
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() {
            return Err(TopicError::EmptySegment(short()));
        }
        let wild = seg.contains('*') || seg.contains('>');
        let whole = *seg == "*" || (*seg == ">" && i == segments.len() - 1);
        if wild && !whole {
            return Err(TopicError::BadWildcard(short()));
        }
    }
    Ok(())
}

/// Whether `pattern` (already validated) holds a wildcard segment, so it can
/// match more than one topic.
pub fn is_wildcard(pattern: &str) -> bool {
    pattern.split('.').any(|s| s == "*" || s == ">")
}

/// Whether `pattern` (already validated) matches the concrete `topic`.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('.');
    let mut t = topic.split('.');
    loop {
        match (p.next(), t.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(ps), Some(ts)) if ps == ts => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some concrete topic matches both patterns.
pub fn intersects(a: &str, b: &str) -> bool {
    let mut x = a.split('.');
    let mut y = b.split('.');
    loop {
        match (x.next(), y.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Turns a host name into one topic segment: lower case, `[a-z0-9_-]` kept,
/// everything else (dots included) becomes `-`, cut at 64 bytes.
pub fn host_segment(hostname: &str) -> String {
    let mut s: String = hostname
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(MAX_HOST_SEGMENT)
        .collect();
    if s.trim_matches('-').is_empty() {
        s = "unknown".into();
    }
    s
}

/// The topic of one metric family of one host.
pub fn host_topic(host: &str, metric: &str) -> String {
    format!("host.{host}.{metric}")
}

/// Topic kinds, the `kind` label of the per-kind counters in `/metrics`: the
/// metric families of `host.<host>.<metric>`, then `hosts`, `$sys` (the
/// aggregator's own topics) and `other`. A fixed list, so no agent or
/// client can grow the number of series.
pub const KINDS: [&str; 12] = [
    "cpu",
    "memory",
    "load",
    "processes",
    "network",
    "disk",
    "filesystems",
    "system",
    "temperatures",
    "hosts",
    "$sys",
    "other",
];

/// The index in [`KINDS`] of a concrete topic's kind.
pub fn kind_index(topic: &str) -> usize {
    let kind = if topic == "hosts" {
        "hosts"
    } else if topic.starts_with("$sys.") {
        "$sys"
    } else if let Some(rest) = topic.strip_prefix("host.") {
        match rest.split_once('.') {
            Some((_, metric)) if !metric.contains('.') => metric,
            _ => "other",
        }
    } else {
        "other"
    };
    KINDS
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(KINDS.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_a_fixed_list() {
        let kind = |t: &str| KINDS[kind_index(t)];
        assert_eq!(kind("host.web-01.cpu"), "cpu");
        assert_eq!(kind("host.web-01.filesystems"), "filesystems");
        assert_eq!(kind("host.web-01.gpu"), "other");
        assert_eq!(kind("host.web-01.cpu.x"), "other");
        assert_eq!(kind("hosts"), "hosts");
        assert_eq!(kind("$sys.stats"), "$sys");
        assert_eq!(kind("test.topic"), "other");
    }

    #[test]
    fn wildcards_follow_nats_rules() {
        assert!(matches("host.*.cpu", "host.web-01.cpu"));
        assert!(!matches("host.*.cpu", "host.web-01.memory"));
        assert!(!matches("host.*", "host.web-01.cpu"));
        assert!(matches("host.>", "host.web-01.cpu"));
        assert!(!matches("host.>", "host"));
        assert!(matches(">", "hosts"));
        assert!(matches("hosts", "hosts"));
        assert!(!matches("host.web-01.cpu", "host.web-01.cpu.x"));
    }

    #[test]
    fn bad_patterns_are_refused_with_reason() {
        assert_eq!(validate_pattern(""), Err(TopicError::Empty));
        assert!(matches!(
            validate_pattern("a..b"),
            Err(TopicError::EmptySegment(_))
        ));
        assert!(matches!(
            validate_pattern(".a"),
            Err(TopicError::EmptySegment(_))
        ));
        assert!(matches!(
            validate_pattern("a.>.b"),
            Err(TopicError::BadWildcard(_))
        ));
        assert!(matches!(
            validate_pattern("host.web-*"),
            Err(TopicError::BadWildcard(_))
        ));
        assert!(matches!(
            validate_pattern("a b"),
            Err(TopicError::BadCharacter(_))
        ));
        assert!(matches!(
            validate_pattern(&"a".repeat(10_000)),
            Err(TopicError::TooLong {
                len: 10_000,
                limit: 256
            })
        ));
        assert!(matches!(
            validate_pattern(&["a"; 17].join(".")),
            Err(TopicError::TooManySegments {
                count: 17,
                limit: 16
            })
        ));
        validate_pattern("host.*.cpu").unwrap();
        validate_pattern("$sys.>").unwrap();
    }

    #[test]
    fn pattern_intersection() {
        assert!(intersects(">", "host.*.cpu"));
        assert!(intersects("host.*.cpu", "host.a.*"));
        assert!(!intersects("host.*.cpu", "host.a.memory"));
        assert!(!intersects("hosts", "host.>"));
        assert!(intersects("host.>", "host.a.cpu"));
        assert!(!intersects("host.*", "host.a.cpu"));
    }

    #[test]
    fn host_names_become_one_segment() {
        assert_eq!(host_segment("Web-01.example.com"), "web-01-example-com");
        assert_eq!(host_segment("a b*c>"), "a-b-c-");
        assert_eq!(host_segment("..."), "unknown");
        assert_eq!(host_segment(&"x".repeat(200)).len(), 64);
    }
}
