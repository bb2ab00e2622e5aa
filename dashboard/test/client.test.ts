// HostpulseClient against a scripted WebSocket server: subscribe and
// unsubscribe, the three encodings, capped jittered backoff, resume with
// `since` after a reconnect, authentication, heartbeats, and events.

import { encode } from "@msgpack/msgpack";
import { deflateRawSync } from "node:zlib";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { Backoff, type ConnectionState, HostpulseClient, matches, type Update } from "../src/client";
import { waitUntil } from "../e2e/harness";
import { nodeWebSocket, ScriptedServer, sys, update } from "./scripted";

let server: ScriptedServer;
let client: HostpulseClient | undefined;

beforeEach(async () => {
  server = await ScriptedServer.start();
});

afterEach(async () => {
  client?.close();
  client = undefined;
  await server.close();
});

function connect(opts: Partial<ConstructorParameters<typeof HostpulseClient>[0]> = {}): HostpulseClient {
  client = new HostpulseClient({
    url: server.url,
    webSocket: nodeWebSocket,
    backoff: { minMs: 50, maxMs: 400 },
    ...opts,
  });
  client.connect();
  return client;
}

describe("topic patterns", () => {
  it("follow the server's wildcard rules", () => {
    expect(matches("host.*.cpu", "host.a.cpu")).toBe(true);
    expect(matches("host.*.cpu", "host.a.memory")).toBe(false);
    expect(matches("host.*", "host.a.cpu")).toBe(false);
    expect(matches("host.>", "host.a.cpu")).toBe(true);
    expect(matches("host.>", "host")).toBe(false);
    expect(matches(">", "hosts")).toBe(true);
    expect(matches("hosts", "hosts")).toBe(true);
  });
});

describe("backoff", () => {
  it("grows exponentially, is capped, and jitters below the cap", () => {
    const none = new Backoff({ minMs: 100, maxMs: 1000, jitter: 0.5 }, () => 0);
    expect([1, 2, 3, 4, 5, 6].map(() => none.next())).toEqual([100, 200, 400, 800, 1000, 1000]);
    const full = new Backoff({ minMs: 100, maxMs: 1000, jitter: 0.5 }, () => 1);
    expect([1, 2, 3, 4, 5].map(() => full.next())).toEqual([50, 100, 200, 400, 500]);
    full.reset();
    expect(full.next()).toBe(50);
    const rnd = new Backoff({ minMs: 100, maxMs: 1000 });
    for (let i = 0; i < 50; i++) {
      const d = rnd.next();
      expect(d).toBeGreaterThanOrEqual(50);
      expect(d).toBeLessThanOrEqual(1000);
    }
    expect(() => new Backoff({ minMs: 0 })).toThrow(/minMs/);
  });
});

describe("HostpulseClient", () => {
  it("subscribes, delivers each update once, and unsubscribes", async () => {
    const c = connect();
    const got: Update[] = [];
    const off = c.subscribe("host.*.cpu", (u) => got.push(u), { history: 5, throttleMs: 200 });
    const conn = await server.conn(0);
    const sub = await server.message(conn, (m) => m.action === "subscribe");
    expect(sub).toMatchObject({ topic: "host.*.cpu", history: 5, throttle_ms: 200 });
    expect(sub.since).toBeUndefined();
    expect(conn.url).toContain("encoding=json");

    for (const seq of [1, 2, 2, 3]) conn.socket.send(JSON.stringify(update("host.a.cpu", seq)));
    conn.socket.send(JSON.stringify(update("host.a.memory", 9)));
    await waitUntil("three updates", () => got.length === 3);
    expect(got.map((u) => u.seq)).toEqual([1, 2, 3]);

    off();
    await server.message(conn, (m) => m.action === "unsubscribe" && m.topic === "host.*.cpu");
    conn.socket.send(JSON.stringify(update("host.a.cpu", 4)));
    conn.socket.send(JSON.stringify(sys("$sys.pong", {})));
    const sysSeen: string[] = [];
    c.on("sys", (m) => sysSeen.push(m.topic));
    await waitUntil("the pong after seq 4", () => sysSeen.includes("$sys.pong"));
    expect(got.map((u) => u.seq)).toEqual([1, 2, 3]);
  });

  it.each(["msgpack", "msgpack+deflate"] as const)("decodes %s frames, batches included", async (encoding) => {
    const c = connect({ encoding });
    const got: Update[] = [];
    c.subscribe("host.>", (u) => got.push(u));
    const conn = await server.conn(0);
    expect(decodeURIComponent(conn.url)).toContain(`encoding=${encoding}`);
    await server.message(conn, (m) => m.action === "subscribe");
    const frame = (v: unknown) => {
      const packed = encode(v);
      return encoding === "msgpack" ? packed : deflateRawSync(packed);
    };
    conn.socket.send(frame(update("host.a.cpu", 7, { total_pct: 12.5, per_core_pct: [10, 15] })));
    conn.socket.send(
      frame({ topic: "batch.update", updates: [update("host.a.load", 8, { one: 1, five: 2, fifteen: 3 }), update("host.a.cpu", 8)] }),
    );
    await waitUntil("three updates", () => got.length === 3);
    expect(got[0]).toMatchObject({ topic: "host.a.cpu", seq: 7, payload: { total_pct: 12.5, per_core_pct: [10, 15] } });
    expect(got.map((u) => `${u.topic}@${u.seq}`)).toEqual(["host.a.cpu@7", "host.a.load@8", "host.a.cpu@8"]);
  });

  it("reports a frame it cannot decode as an error and keeps going", async () => {
    const c = connect();
    const errors: string[] = [];
    c.on("error", (e) => errors.push(e.message));
    const got: Update[] = [];
    c.subscribe("x", (u) => got.push(u));
    const conn = await server.conn(0);
    conn.socket.send("not json");
    conn.socket.send(JSON.stringify(update("x", 1)));
    await waitUntil("update after the bad frame", () => got.length === 1);
    expect(errors.join()).toMatch(/not JSON/);
    expect(c.state.kind).toBe("live");
  });

  it("reconnects with capped exponential backoff and reports its state", async () => {
    const states: ConnectionState[] = [];
    // No jitter, so the delays are exact: 50, 100, 200, 400, 400 (cap).
    const c = connect({ random: () => 0 });
    c.on("state", (s) => states.push(s));
    // Refuse five times by closing at once, then let it stay.
    for (let n = 0; n < 5; n++) (await server.conn(n)).socket.close(1013, "busy");
    await server.conn(5);
    await waitUntil("live again", () => c.state.kind === "live");
    const retries = states.filter(
      (s): s is Extract<ConnectionState, { kind: "reconnecting" }> => s.kind === "reconnecting",
    );
    expect(retries.map((s) => s.delayMs)).toEqual([50, 100, 200, 400, 400]);
    expect(retries.map((s) => s.attempt)).toEqual([1, 2, 3, 4, 5]);
    expect(retries[0].reason).toMatch(/retry later: busy/);
    // Each retry is announced, then attempted, then (the last) live.
    expect(states.slice(-3).map((s) => s.kind)).toEqual(["reconnecting", "connecting", "live"]);
  });

  it("resumes every topic from its last seq after a reconnect, without duplicates", async () => {
    const c = connect();
    const got: string[] = [];
    const incomplete: string[] = [];
    c.on("incomplete", (i) => incomplete.push(i.pattern));
    c.subscribe("host.*.cpu", (u) => got.push(`${u.topic}@${u.seq}`), { history: 10 });
    const first = await server.conn(0);
    await server.message(first, (m) => m.action === "subscribe");
    for (const [t, s] of [["host.a.cpu", 10], ["host.a.cpu", 11], ["host.b.cpu", 5]] as const) {
      first.socket.send(JSON.stringify(update(t, s)));
    }
    await waitUntil("three updates", () => got.length === 3);
    first.socket.terminate();

    const second = await server.conn(1);
    const resub = await server.message(second, (m) => m.action === "subscribe");
    expect(resub.since).toEqual({ "host.a.cpu": 11, "host.b.cpu": 5 });
    expect(resub.history).toBe(10); // for topics that appeared meanwhile
    second.socket.send(
      JSON.stringify(
        sys("$sys.subscribed", {
          topic: "host.*.cpu",
          topics: [{ topic: "host.a.cpu", seq: 14, history_start: 13, min_interval_ms: 0 }],
          complete: false,
        }),
      ),
    );
    for (const s of [11, 12, 13]) second.socket.send(JSON.stringify(update("host.a.cpu", s)));
    await waitUntil("resumed updates", () => got.length === 5);
    expect(got).toEqual(["host.a.cpu@10", "host.a.cpu@11", "host.b.cpu@5", "host.a.cpu@12", "host.a.cpu@13"]);
    expect(incomplete).toEqual(["host.*.cpu"]);
  });

  it("fills a pattern added later from history even where another pattern is live", async () => {
    const c = connect();
    const fleet: number[] = [];
    const detail: number[] = [];
    c.subscribe("host.*.cpu", (u) => fleet.push(u.seq));
    const conn = await server.conn(0);
    conn.socket.send(JSON.stringify(update("host.a.cpu", 20)));
    await waitUntil("fleet update", () => fleet.length === 1);
    c.subscribe("host.a.cpu", (u) => detail.push(u.seq), { history: 3 });
    await server.message(conn, (m) => m.topic === "host.a.cpu" && m.history === 3);
    for (const s of [18, 19, 20, 21]) conn.socket.send(JSON.stringify(update("host.a.cpu", s)));
    await waitUntil("detail filled", () => detail.length === 4);
    expect(detail).toEqual([18, 19, 20, 21]);
    expect(fleet).toEqual([20, 21]);
  });

  it("authenticates first, stops retrying a refused token, and retries with a new one", async () => {
    const c = connect({ token: "wrong" });
    const errors: string[] = [];
    c.on("error", (e) => errors.push(e.code));
    c.subscribe("hosts", () => {});
    const first = await server.conn(0);
    await waitUntil("two messages", () => first.received.length >= 2);
    expect(first.received[0]).toEqual({ action: "auth", token: "wrong", id: "auth" });
    expect(first.received[1]).toMatchObject({ action: "subscribe", topic: "hosts" });
    first.socket.send(JSON.stringify(sys("$sys.error", { code: "unauthorized", message: "unknown token", id: "auth" })));
    first.socket.close(1008, "unauthorized");
    await waitUntil("unauthorized state", () => c.state.kind === "unauthorized");
    expect(errors).toEqual(["unauthorized"]);
    // With a 50 ms backoff, a retrying client would have come back several times by now.
    await new Promise((r) => setTimeout(r, 400));
    expect(server.conns.length).toBe(1);

    c.setToken("right");
    const second = await server.conn(1);
    const auth = await server.message(second, (m) => m.action === "auth");
    expect(auth.token).toBe("right");
    await waitUntil("live", () => c.state.kind === "live");
  });

  it("never puts the token in a URL: it is the first message on every connection", async () => {
    const tokens = ["s3cret-Token/+=", "n3w-t0ken"];
    const opened: string[] = [];
    const c = connect({
      token: tokens[0],
      webSocket: (url) => {
        opened.push(url);
        return nodeWebSocket(url);
      },
    });
    c.subscribe("host.*.cpu", () => {});
    const authFirst = async (n: number, token: string) => {
      const conn = await server.conn(n);
      await waitUntil(`auth and subscribe on connection #${n}`, () => conn.received.length >= 2);
      expect(conn.received[0]).toEqual({ action: "auth", token, id: "auth" });
      expect(conn.received[1]).toMatchObject({ action: "subscribe", topic: "host.*.cpu" });
      await waitUntil(`live on connection #${n}`, () => c.state.kind === "live");
      return conn;
    };
    // The first connection, one after the server drops it, one after a new token.
    const first = await authFirst(0, tokens[0]);
    first.socket.terminate();
    await authFirst(1, tokens[0]);
    c.setToken(tokens[1]);
    const third = await authFirst(2, tokens[1]);
    expect(third.received.filter((m) => m.action === "auth")).toHaveLength(1);

    expect(opened).toHaveLength(3);
    expect(server.conns).toHaveLength(3);
    const requested = server.conns.map((conn) => conn.url);
    for (const url of [...opened, ...requested]) {
      // The only query parameter is the encoding; no form of a token anywhere.
      expect([...new URL(url, server.url).searchParams.keys()]).toEqual(["encoding"]);
      for (const token of tokens) {
        for (const form of [token, encodeURIComponent(token), btoa(token)]) {
          expect(url).not.toContain(form);
          expect(decodeURIComponent(url)).not.toContain(form);
        }
      }
    }
    // Nor in the upgrade request's headers (cookies, subprotocols, authorization).
    for (const conn of server.conns) {
      const headers = JSON.stringify(conn.headers);
      for (const token of tokens) expect(headers).not.toContain(token);
    }
  });

  it("closes a connection that is still opening without an error", async () => {
    const c = connect();
    const errors: string[] = [];
    c.on("error", (e) => errors.push(e.message));
    expect(c.state.kind).toBe("connecting");
    c.close(); // still CONNECTING: closed as soon as it opens
    expect(c.state.kind).toBe("closed");
    const conn = await server.conn(0);
    await waitUntil("closed once open", () => conn.closed);
    expect(errors).toEqual([]);
    expect(c.state.kind).toBe("closed");
  });

  it("pings a quiet server and drops a connection that stays silent", async () => {
    const c = connect({ heartbeatMs: 100 });
    const errors: string[] = [];
    c.on("error", (e) => errors.push(e.message));
    const first = await server.conn(0);
    await server.message(first, (m) => m.action === "ping");
    // The server never answers: after two silent intervals the client moves on.
    const second = await server.conn(1);
    expect(second).toBeDefined();
    await waitUntil("first closed", () => first.closed);
    expect(errors.join()).toMatch(/no answer/);
    expect(c.state.kind === "live" || c.state.kind === "connecting").toBe(true);
  });
});
