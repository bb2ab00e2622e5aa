// A scripted WebSocket server for client tests: records what each connection
// sends, and lets the test send frames and close connections at will.

import { type IncomingHttpHeaders } from "node:http";
import { type AddressInfo } from "node:net";
import WebSocket, { WebSocketServer } from "ws";
import type { WebSocketFactory, WebSocketLike } from "../src/client";
import { waitUntil } from "../e2e/harness";

export interface Conn {
  socket: WebSocket;
  url: string;
  /** The upgrade request's headers. */
  headers: IncomingHttpHeaders;
  received: Record<string, unknown>[];
  closed: boolean;
}

export class ScriptedServer {
  readonly conns: Conn[] = [];
  private constructor(private readonly wss: WebSocketServer) {
    wss.on("connection", (socket, req) => {
      const conn: Conn = { socket, url: req.url ?? "", headers: req.headers, received: [], closed: false };
      socket.on("message", (data) => conn.received.push(JSON.parse(data.toString())));
      socket.on("close", () => (conn.closed = true));
      this.conns.push(conn);
    });
  }

  static async start(): Promise<ScriptedServer> {
    const wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    await new Promise<void>((res) => wss.on("listening", () => res()));
    return new ScriptedServer(wss);
  }

  get url(): string {
    return `ws://127.0.0.1:${(this.wss.address() as AddressInfo).port}/ws`;
  }

  /** The n-th connection (0-based), once it exists. */
  conn(n: number): Promise<Conn> {
    return waitUntil(`connection #${n}`, () => this.conns[n]);
  }

  /** The first message on `conn` satisfying `pred`, once it arrives. */
  message(conn: Conn, pred: (m: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
    return waitUntil("a matching client message", () => conn.received.find(pred));
  }

  close(): Promise<void> {
    for (const c of this.conns) c.socket.terminate();
    return new Promise((res) => this.wss.close(() => res()));
  }
}

/** Node's `ws` as the client's socket. */
export const nodeWebSocket: WebSocketFactory = (url) => new WebSocket(url) as unknown as WebSocketLike;

export function update(topic: string, seq: number, payload: unknown = { total_pct: seq % 100, per_core_pct: [] }) {
  const t = new Date().toISOString();
  return { topic, seq, timestamp: t, received: t, payload };
}

export function sys(topic: string, payload: unknown) {
  return { topic, timestamp: new Date().toISOString(), payload };
}
