// HostpulseClient: one WebSocket connection to an aggregator's `/ws`, shared
// by any number of topic subscriptions. It reconnects with capped, jittered
// exponential backoff; after a reconnect it authenticates again, re-subscribes
// every pattern and resumes each topic from the last seq it delivered (`since`),
// so handlers see every update once and in order. It sends application pings
// and treats a silent connection as dead. State changes and errors are events.

import { Backoff, type BackoffOptions } from "./backoff";
import { decodeFrame, type Encoding, FrameError, type Item } from "./codec";
import { matches } from "./topic";
import type { Lagged, ServerError, Subscribed, SysMessage, Update } from "./types";

/** The minimal WebSocket the client needs (the browser's, or Node's `ws`). */
export interface WebSocketLike {
  binaryType: string;
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
}

export type WebSocketFactory = (url: string) => WebSocketLike;

export type ConnectionState =
  /** Created, `connect()` not called yet. */
  | { kind: "idle" }
  /** Opening a connection. */
  | { kind: "connecting"; attempt: number }
  /** Connected; updates flow. */
  | { kind: "live"; since: number }
  /** Lost; attempt number `attempt` starts at `retryAt` (ms since epoch), `delayMs` after the loss. */
  | { kind: "reconnecting"; attempt: number; retryAt: number; delayMs: number; reason: string }
  /** The server refused the token; waits for `setToken`. */
  | { kind: "unauthorized"; message: string }
  /** `close()` was called. */
  | { kind: "closed" };

export interface ClientOptions {
  /** `ws://host:port/ws` or `wss://…`. */
  url: string;
  /** Bearer token, sent as the first message (`{"action":"auth"}`). */
  token?: string;
  /** Wire encoding (default `json`). */
  encoding?: Encoding;
  /** Reconnect delays. */
  backoff?: BackoffOptions;
  /** Application ping interval; the connection is dropped after two silent intervals (default 15 s). */
  heartbeatMs?: number;
  /**
   * A connection that stayed up this long resets the backoff (default 5 s), so
   * a server that accepts and at once closes is still retried ever more slowly.
   */
  stableMs?: number;
  /** How to open a socket (default: the global `WebSocket`). */
  webSocket?: WebSocketFactory;
  /** Random source for jitter (tests). */
  random?: () => number;
}

export interface SubscribeOptions {
  /** On first subscribe, the last N updates of each matching topic are sent first. */
  history?: number;
  /** At most one update per topic per interval, the newest. */
  throttleMs?: number;
  /**
   * Thins what history sends (for `history` and for a resume alike): at most
   * one update per topic per this many ms of sample time, the newest of
   * each; `history` then counts intervals, not updates.
   */
  historyEveryMs?: number;
}

export type UpdateHandler = (update: Update) => void;

/** An incomplete resume: history no longer reached back to what was missed. */
export interface Incomplete {
  pattern: string;
  topics: Subscribed["topics"];
}

interface Events {
  state: ConnectionState;
  error: ServerError | { code: "transport"; message: string };
  subscribed: Subscribed;
  incomplete: Incomplete;
  lagged: Lagged;
  sys: SysMessage;
}

type Listener<T> = (value: T) => void;

interface Sub {
  options: SubscribeOptions;
  handlers: Set<UpdateHandler>;
  /**
   * Last seq delivered per topic to this pattern's handlers: its resume point
   * and its duplicate guard. Kept per pattern so a pattern added later can be
   * filled from history even where another pattern is already live.
   */
  lastSeq: Map<string, number>;
}

const OPEN = 1;

export class HostpulseClient {
  private readonly url: string;
  private readonly encoding: Encoding;
  private readonly heartbeatMs: number;
  private readonly stableMs: number;
  private openedAt = 0;
  private readonly factory: WebSocketFactory;
  private readonly backoff: Backoff;
  private token: string | undefined;
  private ws: WebSocketLike | null = null;
  private current: ConnectionState = { kind: "idle" };
  private readonly subs = new Map<string, Sub>();
  private readonly listeners: { [K in keyof Events]?: Set<Listener<Events[K]>> } = {};
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private lastHeard = 0;
  private nextId = 1;
  private authFailed = false;
  private authMessage = "";
  /** Patterns subscribed with `since` on this connection, whose reply tells if the resume was whole. */
  private readonly resuming = new Set<string>();

  constructor(options: ClientOptions) {
    this.url = options.url;
    this.encoding = options.encoding ?? "json";
    this.heartbeatMs = options.heartbeatMs ?? 15_000;
    this.stableMs = options.stableMs ?? 5_000;
    this.token = options.token;
    this.backoff = new Backoff(options.backoff, options.random);
    this.factory =
      options.webSocket ??
      ((url: string) => {
        const WS = (globalThis as { WebSocket?: new (url: string) => WebSocketLike }).WebSocket;
        if (!WS) throw new Error("no global WebSocket: pass options.webSocket");
        return new WS(url);
      });
  }

  /** The connection state now. */
  get state(): ConnectionState {
    return this.current;
  }

  /** The encoding in use. */
  get wireEncoding(): Encoding {
    return this.encoding;
  }

  /** Last seq delivered for `topic` (to any pattern), if any. */
  seqOf(topic: string): number | undefined {
    let best: number | undefined;
    for (const sub of this.subs.values()) {
      const s = sub.lastSeq.get(topic);
      if (s !== undefined && (best === undefined || s > best)) best = s;
    }
    return best;
  }

  /** Listens to an event; returns the function that stops listening. */
  on<K extends keyof Events>(event: K, listener: Listener<Events[K]>): () => void {
    let set = this.listeners[event] as Set<Listener<Events[K]>> | undefined;
    if (!set) {
      set = new Set();
      (this.listeners as Record<string, unknown>)[event] = set;
    }
    set.add(listener);
    return () => set.delete(listener);
  }

  /** Opens the connection (and keeps it open until `close`). */
  connect(): void {
    if (this.current.kind === "closed") this.current = { kind: "idle" };
    if (this.ws || this.retryTimer) return;
    this.open();
  }

  /** Closes for good: no reconnect. */
  close(): void {
    this.clearTimers();
    const ws = this.ws;
    this.ws = null;
    if (ws) discard(ws, "client closed");
    this.setState({ kind: "closed" });
  }

  /** Replaces the token and reconnects at once with it. */
  setToken(token: string | undefined): void {
    this.token = token;
    this.authFailed = false;
    this.backoff.reset();
    this.dropSocket();
    this.clearTimers();
    this.open();
  }

  /**
   * Subscribes `handler` to `pattern`. Returns the function that unsubscribes it;
   * the server subscription ends with the last handler of the pattern.
   */
  subscribe(pattern: string, handler: UpdateHandler, options: SubscribeOptions = {}): () => void {
    let sub = this.subs.get(pattern);
    if (!sub) {
      sub = { options, handlers: new Set(), lastSeq: new Map() };
      this.subs.set(pattern, sub);
      if (this.isOpen()) this.sendSubscribe(pattern, sub);
    }
    sub.handlers.add(handler);
    return () => this.unsubscribe(pattern, handler);
  }

  private unsubscribe(pattern: string, handler: UpdateHandler): void {
    const sub = this.subs.get(pattern);
    if (!sub || !sub.handlers.delete(handler) || sub.handlers.size > 0) return;
    this.subs.delete(pattern);
    if (this.isOpen()) this.send({ action: "unsubscribe", topic: pattern, id: this.nextId++ });
  }

  private isOpen(): boolean {
    return this.ws !== null && this.ws.readyState === OPEN && this.current.kind === "live";
  }

  private open(): void {
    const attempt = this.backoff.attempts + 1;
    this.setState({ kind: "connecting", attempt });
    const sep = this.url.includes("?") ? "&" : "?";
    const url = `${this.url}${sep}encoding=${encodeURIComponent(this.encoding)}`;
    let ws: WebSocketLike;
    try {
      ws = this.factory(url);
    } catch (e) {
      this.scheduleRetry(`cannot open: ${(e as Error).message}`);
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => this.onOpen(ws);
    ws.onmessage = (ev) => this.onMessage(ws, ev.data);
    ws.onerror = () => {
      // The close event follows with the code; nothing to do here.
    };
    ws.onclose = (ev) => this.onClose(ws, ev.code, ev.reason);
  }

  private onOpen(ws: WebSocketLike): void {
    if (ws !== this.ws) return;
    this.openedAt = Date.now();
    this.lastHeard = Date.now();
    this.setState({ kind: "live", since: Date.now() });
    if (this.token) this.send({ action: "auth", token: this.token, id: "auth" });
    this.resuming.clear();
    for (const [pattern, sub] of this.subs) this.sendSubscribe(pattern, sub);
    this.pingTimer = setInterval(() => this.heartbeat(), this.heartbeatMs);
  }

  private heartbeat(): void {
    const ws = this.ws;
    if (!ws) return;
    if (Date.now() - this.lastHeard > 2 * this.heartbeatMs) {
      this.emit("error", { code: "transport", message: "no answer from the server; reconnecting" });
      this.dropSocket();
      this.openedAt = 0;
      this.scheduleRetry("server silent");
      return;
    }
    this.send({ action: "ping" });
  }

  private sendSubscribe(pattern: string, sub: Sub): void {
    const options = sub.options;
    const since = Object.fromEntries(sub.lastSeq);
    const msg: Record<string, unknown> = { action: "subscribe", topic: pattern, id: this.nextId++ };
    if (Object.keys(since).length > 0) {
      msg.since = since;
      this.resuming.add(pattern);
    }
    // History fills topics without a resume point (new ones, or a first subscribe).
    if (options.history) msg.history = options.history;
    if (options.throttleMs) msg.throttle_ms = options.throttleMs;
    if (options.historyEveryMs) msg.history_every_ms = options.historyEveryMs;
    this.send(msg);
  }

  private send(msg: Record<string, unknown>): void {
    const ws = this.ws;
    if (ws && ws.readyState === OPEN) ws.send(JSON.stringify(msg));
  }

  private onMessage(ws: WebSocketLike, data: unknown): void {
    if (ws !== this.ws) return;
    this.lastHeard = Date.now();
    let items: Item[];
    try {
      items = decodeFrame(data, this.encoding);
    } catch (e) {
      const message = e instanceof FrameError ? e.message : String(e);
      this.emit("error", { code: "transport", message });
      return;
    }
    for (const item of items) this.dispatch(item);
  }

  private dispatch(item: Item): void {
    if (item.topic.startsWith("$sys.")) {
      this.onSys(item as SysMessage);
      return;
    }
    if (typeof item.seq !== "number") return;
    const update = item as Update;
    for (const [pattern, sub] of this.subs) {
      if (!matches(pattern, item.topic)) continue;
      const last = sub.lastSeq.get(item.topic);
      if (last !== undefined && item.seq <= last) continue; // already delivered
      sub.lastSeq.set(item.topic, item.seq);
      for (const h of sub.handlers) {
        try {
          h(update);
        } catch (e) {
          // One faulty handler must not starve the others.
          queueMicrotask(() => {
            throw e;
          });
        }
      }
    }
  }

  private onSys(msg: SysMessage): void {
    this.emit("sys", msg);
    switch (msg.topic) {
      case "$sys.subscribed": {
        const s = msg.payload as unknown as Subscribed;
        this.emit("subscribed", s);
        if (this.resuming.delete(s.topic) && !s.complete) {
          this.emit("incomplete", { pattern: s.topic, topics: s.topics });
        }
        break;
      }
      case "$sys.lagged":
        this.emit("lagged", msg.payload as unknown as Lagged);
        break;
      case "$sys.error": {
        const err = msg.payload as unknown as ServerError;
        if (err.code === "unauthorized") {
          this.authFailed = true;
          this.authMessage = err.message;
        }
        this.emit("error", err);
        if (err.code === "unauthorized" && this.current.kind === "live") {
          this.setState({ kind: "unauthorized", message: err.message });
        }
        break;
      }
      default:
        break;
    }
  }

  private onClose(ws: WebSocketLike, code: number, reason: string): void {
    if (ws !== this.ws) return;
    this.ws = null;
    this.clearTimers();
    if (this.openedAt > 0 && Date.now() - this.openedAt >= this.stableMs) this.backoff.reset();
    this.openedAt = 0;
    if (this.authFailed) {
      // A refused token is closed with 1008; retrying it would loop.
      this.setState({ kind: "unauthorized", message: this.authMessage || reason || "token refused" });
      return;
    }
    this.scheduleRetry(describeClose(code, reason));
  }

  private scheduleRetry(reason: string): void {
    const delay = this.backoff.next();
    const retryAt = Date.now() + delay;
    this.setState({ kind: "reconnecting", attempt: this.backoff.attempts, retryAt, delayMs: delay, reason });
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.open();
    }, delay);
  }

  private dropSocket(): void {
    const ws = this.ws;
    this.ws = null;
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = null;
    if (ws) discard(ws, "reconnecting");
  }

  private clearTimers(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.retryTimer = null;
    this.pingTimer = null;
  }

  private setState(state: ConnectionState): void {
    this.current = state;
    this.emit("state", state);
  }

  private emit<K extends keyof Events>(event: K, value: Events[K]): void {
    const set = this.listeners[event] as Set<Listener<Events[K]>> | undefined;
    if (!set) return;
    for (const l of set) l(value);
  }
}

/**
 * Closes a socket this client no longer follows. One still connecting is
 * closed once open: closing it earlier makes browsers log an error and
 * Node's `ws` raise one. Its errors are swallowed, never left unhandled.
 */
function discard(ws: WebSocketLike, reason: string): void {
  ws.onmessage = null;
  ws.onclose = null;
  ws.onerror = () => {};
  const CONNECTING = 0;
  if (ws.readyState === CONNECTING) {
    ws.onopen = () => ws.close(1000, reason);
    return;
  }
  ws.onopen = null;
  try {
    ws.close(1000, reason);
  } catch {
    // Already closing.
  }
}

function describeClose(code: number, reason: string): string {
  const known: Record<number, string> = {
    1000: "closed",
    1001: "server shutting down",
    1006: "connection lost",
    1008: "policy violation",
    1009: "message too big",
    1011: "server error",
    1013: "server asked to retry later",
  };
  const what = known[code] ?? `closed with code ${code}`;
  return reason ? `${what}: ${reason}` : what;
}
