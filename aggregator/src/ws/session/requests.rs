//! A session's client requests (`ping`, `auth`, `subscribe`,
//! `unsubscribe`): answered at once, or passed to the hub in order, one at a
//! time, deferred behind a replay in progress; and the replay's advance.

use super::{End, HubRequest, MAX_DEFERRED, REPLAY_CHUNK, Session};
use crate::hub::{Command, HubClosed};
use crate::update::SysMessage;
use crate::ws::close;
use crate::ws::protocol::{Request, error_message, pong_message};
use crate::ws::replay::Replaying;

impl Session {
    pub(super) async fn on_request(&mut self, request: Request) -> Option<End> {
        let sent = match request {
            Request::Ping { id } => {
                self.outbox.push_sys(pong_message(id));
                Ok(())
            }
            Request::Auth { token, id } => match self.state.auth.client(Some(&token)) {
                Ok(grant) => {
                    let name = grant.as_ref().map(|g| g.name.to_string());
                    self.grant = grant;
                    self.outbox.push_sys(SysMessage::new(
                        "$sys.authenticated",
                        &serde_json::json!({"id": id, "token": name}),
                    ));
                    Ok(())
                }
                Err(refusal) => {
                    log!(warn, self, reason = %refusal, "WebSocket client refused");
                    self.outbox.push_sys(error_message(
                        "unauthorized",
                        &format!("client token refused: {refusal}"),
                        id,
                    ));
                    return Some(End::Close(close::POLICY, "unauthorized"));
                }
            },
            Request::Subscribe(mut request) => {
                let Some(grant) = &self.grant else {
                    self.outbox.push_sys(error_message(
                        "unauthorized",
                        "authenticate first: connect with a token, or send {\"action\":\"auth\",\"token\":...}",
                        request.id,
                    ));
                    return None;
                };
                if !grant.overlaps(&request.pattern) {
                    self.outbox.push_sys(error_message(
                        "forbidden",
                        &format!(
                            "token {:?} grants no topic matching {:?}",
                            grant.name, request.pattern
                        ),
                        request.id,
                    ));
                    return None;
                }
                request.grant = Some(grant.clone());
                if self.busy(&request.id, &request.pattern) {
                    return None;
                }
                let max = self.state.config.max_subscriptions;
                if !self.subscriptions.contains(&request.pattern) {
                    if self.subscriptions.len() >= max {
                        self.outbox.push_sys(error_message(
                            "too_many_subscriptions",
                            &format!(
                                "this connection already holds the maximum of {max} subscriptions"
                            ),
                            request.id,
                        ));
                        return None;
                    }
                    // Most connections hold one to three patterns: room
                    // for one more at a time, not the four a first push
                    // would make (held by every idle connection).
                    self.subscriptions.reserve_exact(1);
                    self.subscriptions.push(request.pattern.clone());
                }
                self.ask_hub(HubRequest::Subscribe(request)).await
            }
            Request::Unsubscribe { topic, id } => {
                if !self.subscriptions.contains(&topic) {
                    self.outbox.push_sys(error_message(
                        "not_subscribed",
                        &format!("no subscription to {topic:?} on this connection"),
                        id,
                    ));
                    return None;
                }
                if self.busy(&id, &topic) {
                    return None;
                }
                self.subscriptions.retain(|p| *p != topic);
                self.ask_hub(HubRequest::Unsubscribe { pattern: topic, id })
                    .await
            }
        };
        match sent {
            Ok(()) => None,
            Err(_) => Some(End::Close(close::GOING_AWAY, "server shutting down")),
        }
    }
}

impl Session {
    /// Sends a request to the hub now, or after the replay running (and the
    /// requests already waiting) when there is one.
    async fn ask_hub(&mut self, request: HubRequest) -> Result<(), HubClosed> {
        if self.replays.is_empty() {
            return self.send_to_hub(request).await;
        }
        self.deferred.push_back(request);
        Ok(())
    }

    /// Refuses a subscribe or unsubscribe (telling the client) when too many
    /// already wait behind this connection's replay.
    fn busy(&self, id: &Option<serde_json::Value>, what: &str) -> bool {
        if self.replays.is_empty() || self.deferred.len() < MAX_DEFERRED {
            return false;
        }
        self.outbox.push_sys(error_message(
            "busy",
            &format!(
                "{MAX_DEFERRED} requests already wait for this connection's replay to finish; {what:?} was not done, send it again later"
            ),
            id.clone(),
        ));
        true
    }

    async fn send_to_hub(&mut self, request: HubRequest) -> Result<(), HubClosed> {
        let hub = &self.state.hub;
        match request {
            HubRequest::Subscribe(request) => {
                let (replay, rx) = tokio::sync::oneshot::channel();
                hub.send(Command::Subscribe {
                    conn: self.id,
                    outbox: self.outbox.clone(),
                    request,
                    replay,
                })
                .await?;
                if let Some(r) = Replaying::new(rx.await.map_err(|_| HubClosed)?) {
                    self.replays.push_back(r);
                }
                Ok(())
            }
            HubRequest::Unsubscribe { pattern, id } => {
                hub.send(Command::Unsubscribe {
                    conn: self.id,
                    pattern,
                    id,
                })
                .await
            }
        }
    }

    /// Moves the running replay on while the outbox has room for it; when
    /// it has caught up, joins it to live delivery and sends the requests
    /// that waited for it.
    ///
    /// While a replay runs, the outbox wakes the session at once whatever
    /// the batching window: the replay goes at the pace of the socket.
    ///
    /// Without a replay it returns at once, and its future (which can wait
    /// on the hub) is only made, on the heap, when there is one: it would
    /// otherwise enlarge every idle connection's task.
    pub(super) async fn advance_replay(&mut self) -> Result<(), HubClosed> {
        if self.replays.is_empty() {
            return Ok(());
        }
        let advance = Box::pin(async {
            self.outbox.set_immediate(true);
            let advanced = self.advance_replay_inner().await;
            self.outbox.set_immediate(!self.replays.is_empty());
            advanced
        });
        advance.await
    }

    async fn advance_replay_inner(&mut self) -> Result<(), HubClosed> {
        let chunk = REPLAY_CHUNK
            .min(self.state.config.queue_max_bytes / 4)
            .max(1);
        while !self.replays.is_empty() {
            if self.outbox.queued_bytes() >= chunk || self.outbox.overflowed() {
                return Ok(());
            }
            if self.replay_permit.is_none() {
                if self.permit_wait.is_some() {
                    return Ok(()); // the session loop waits for it
                }
                let permits = self.state.replay_permits.clone();
                match permits.clone().try_acquire_owned() {
                    Ok(p) => self.replay_permit = Some(p),
                    Err(tokio::sync::TryAcquireError::Closed) => return Err(HubClosed),
                    Err(tokio::sync::TryAcquireError::NoPermits) => {
                        // Queued behind other connections' replays: the
                        // session loop waits for the permit beside the
                        // socket and comes back here when it has it.
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        tokio::spawn(async move {
                            // Should the session be gone by then, the
                            // permit comes straight back.
                            if let Ok(p) = permits.acquire_owned().await {
                                let _ = tx.send(p);
                            }
                        });
                        self.permit_wait = Some(rx);
                        return Ok(());
                    }
                }
            }
            let r = self.replays.front_mut().expect("not empty");
            let Some(join) = r.fill(self.id, &self.outbox, chunk) else {
                return Ok(());
            };
            self.state.hub.send(join).await?;
            self.replays.pop_front();
            while self.replays.is_empty()
                && let Some(request) = self.deferred.pop_front()
            {
                self.send_to_hub(request).await?;
            }
        }
        Ok(())
    }
}
