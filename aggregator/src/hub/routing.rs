//! Live routing: which connections get each topic's updates.
//!
//! Subscriptions that route alike (the same pattern, throttle and grant)
//! form one [`Group`], and a topic lists the groups that match it, not the
//! connections: 500 dashboards with the same three patterns cost three
//! entries per topic, not 1,500, and a connection's subscribe, unsubscribe
//! and disconnect touch only the groups it is in. A topic's entry for a
//! group is added when the group is made (or the topic is) and removed when
//! the group's last member leaves.
//!
//! A connection in several groups matching one topic gets each update once:
//! its outbox refuses a seq it has already queued ([`crate::ws::outbox`]), so
//! the first group's push delivers and the others' are stale (the least
//! throttled subscription wins, as a throttled update still pending is
//! dropped once a newer one has gone out).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Grant;
use crate::topic;
use crate::ws::outbox::Outbox;

use super::ConnId;

/// Names a group.
pub(super) type GroupId = u64;

/// What makes two subscriptions route alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    pattern: String,
    throttle: Duration,
    /// The grant's token name: tokens of one name grant the same topics.
    grant: Option<Arc<str>>,
}

/// Subscriptions that route alike, and the connections holding them.
#[derive(Debug)]
pub(super) struct Group {
    /// Topic or pattern.
    pub(super) pattern: String,
    /// At most one update per topic per this interval (zero: no throttle).
    pub(super) throttle: Duration,
    grant: Option<Grant>,
    /// Members and their outboxes.
    pub(super) members: HashMap<ConnId, Arc<Outbox>>,
}

impl Group {
    /// Whether the group delivers `topic`.
    pub(super) fn wants(&self, topic: &str) -> bool {
        topic::matches(&self.pattern, topic) && self.grant.as_ref().is_none_or(|g| g.allows(topic))
    }
}

/// Every group.
#[derive(Debug, Default)]
pub(super) struct Routing {
    groups: HashMap<GroupId, Group>,
    by_key: HashMap<GroupKey, GroupId>,
    next: GroupId,
}

impl Routing {
    /// Adds `conn` to the group for (`pattern`, `throttle`, `grant`), made
    /// if needed; returns it and whether it is new (then the caller lists
    /// it in its topics).
    pub(super) fn join(
        &mut self,
        conn: ConnId,
        outbox: &Arc<Outbox>,
        pattern: &str,
        throttle: Duration,
        grant: Option<&Grant>,
    ) -> (GroupId, bool) {
        let key = GroupKey {
            pattern: pattern.to_string(),
            throttle,
            grant: grant.map(|g| g.name.clone()),
        };
        let (id, new) = match self.by_key.get(&key) {
            Some(id) => (*id, false),
            None => {
                self.next += 1;
                self.groups.insert(
                    self.next,
                    Group {
                        pattern: pattern.to_string(),
                        throttle,
                        grant: grant.cloned(),
                        members: HashMap::new(),
                    },
                );
                self.by_key.insert(key, self.next);
                (self.next, true)
            }
        };
        self.groups
            .get_mut(&id)
            .expect("made above")
            .members
            .insert(conn, outbox.clone());
        (id, new)
    }

    /// Removes `conn` from group `id`; returns the group if that emptied it
    /// (it is gone: the caller removes it from its topics).
    pub(super) fn leave(&mut self, id: GroupId, conn: ConnId) -> Option<Group> {
        let g = self.groups.get_mut(&id)?;
        g.members.remove(&conn);
        if !g.members.is_empty() {
            return None;
        }
        let g = self.groups.remove(&id).expect("found above");
        self.by_key.remove(&GroupKey {
            pattern: g.pattern.clone(),
            throttle: g.throttle,
            grant: g.grant.as_ref().map(|g| g.name.clone()),
        });
        Some(g)
    }

    /// The group `id`.
    pub(super) fn get(&self, id: GroupId) -> Option<&Group> {
        self.groups.get(&id)
    }

    /// Groups delivering a new `topic`.
    pub(super) fn matching(&self, topic: &str) -> Vec<GroupId> {
        self.groups
            .iter()
            .filter(|(_, g)| g.wants(topic))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Groups held.
    pub(super) fn len(&self) -> usize {
        self.groups.len()
    }
}
