// HostpulseClient against the real aggregator and agent binaries: the three
// encodings deliver the same updates, and after the aggregator is killed and
// restarted in place the client resumes with no gap and no duplicate.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { type Encoding, HostpulseClient, type Update, type WebSocketLike } from "../src/client";
import { type Aggregator, type Proc, startAgent, startAggregator, waitUntil } from "../e2e/harness";

let agg: Aggregator;
let agent: Proc;

beforeAll(async () => {
  agg = await startAggregator();
  agent = startAgent(agg.ingestUrl, "client-test", { intervalMs: 100 });
});

afterAll(async () => {
  await agent?.stop();
  await agg?.proc.stop();
});

function client(encoding: Encoding): HostpulseClient {
  return new HostpulseClient({
    url: agg.wsUrl,
    encoding,
    webSocket: (url) => new WebSocket(url) as unknown as WebSocketLike,
    backoff: { minMs: 100, maxMs: 1000 },
  });
}

describe("against a real aggregator", () => {
  it.each(["json", "msgpack", "msgpack+deflate"] as const)("receives live cpu updates as %s", async (encoding) => {
    const c = client(encoding);
    const got: Update[] = [];
    c.subscribe("host.client-test.cpu", (u) => got.push(u), { history: 3 });
    c.connect();
    try {
      await waitUntil("5 updates", () => got.length >= 5);
      const u = got[0] as Update<{ total_pct: number; per_core_pct: number[] }>;
      expect(u.topic).toBe("host.client-test.cpu");
      expect(u.payload.total_pct).toBeGreaterThanOrEqual(0);
      expect(u.payload.per_core_pct.length).toBeGreaterThan(0);
      expect(Date.parse(u.timestamp)).toBeGreaterThan(0);
      for (let i = 1; i < got.length; i++) expect(got[i].seq).toBe(got[i - 1].seq + 1);
    } finally {
      c.close();
    }
  });

  it("resumes without a gap after the aggregator is killed and restarted", async () => {
    const c = client("msgpack+deflate");
    const seqs: number[] = [];
    const states: string[] = [];
    c.on("state", (s) => states.push(s.kind));
    c.subscribe("host.client-test.cpu", (u) => seqs.push(u.seq), { history: 1 });
    c.connect();
    try {
      await waitUntil("updates before the kill", () => seqs.length >= 5);
      await agg.proc.stop("SIGKILL");
      const killedAt = seqs.length;
      await waitUntil("client notices", () => states.includes("reconnecting"));
      agg = await startAggregator({ http: agg.http, ingest: agg.ingest });
      await waitUntil("updates after the restart", () => seqs.length >= killedAt + 20, 30_000);
      for (let i = 1; i < seqs.length; i++) {
        expect(seqs[i], `seq after ${seqs[i - 1]}`).toBe(seqs[i - 1] + 1);
      }
    } finally {
      c.close();
    }
  });
});
