// The dashboard's one client connection: URL from the page location, token
// kept in sessionStorage for the browser session, encoding from `?encoding=`,
// batching window from `?batch_ms=` (50 ms unless given).

import { HostpulseClient } from "../client";
import type { Encoding } from "../client/codec";

const TOKEN_KEY = "hostpulse.token";
/** The connection's batching window (`?batch_ms=` on the page overrides; 0: none). */
const BATCH_MS = 50;

export function storedToken(): string | undefined {
  try {
    return sessionStorage.getItem(TOKEN_KEY) ?? undefined;
  } catch {
    return undefined;
  }
}

export function storeToken(token: string): void {
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // Private mode: the token lives as long as the page.
  }
}

export function createClient(): HostpulseClient {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const asked = new URLSearchParams(location.search).get("encoding");
  const encoding: Encoding =
    asked === "json" || asked === "msgpack" || asked === "msgpack+deflate" ? asked : "msgpack";
  // Updates arriving within this window share one frame: a fleet view of
  // thousands of hosts gets a few dozen frames a second instead of thousands
  // of message events, for at most this much latency.
  const batch = Number(new URLSearchParams(location.search).get("batch_ms") ?? BATCH_MS);
  const query = Number.isFinite(batch) && batch > 0 ? `?batch_ms=${Math.min(batch, 10_000)}` : "";
  return new HostpulseClient({
    url: `${scheme}://${location.host}/ws${query}`,
    token: storedToken(),
    encoding,
    backoff: { minMs: 500, maxMs: 15_000 },
  });
}

/** `GET path` with the session's token; throws `Unauthorized` on 401/403. */
export class Unauthorized extends Error {}

export async function getJson<T>(path: string, signal?: AbortSignal): Promise<T> {
  const token = storedToken();
  const res = await fetch(path, { headers: token ? { Authorization: `Bearer ${token}` } : {}, signal });
  if (res.status === 401 || res.status === 403) throw new Unauthorized(`${path}: HTTP ${res.status}`);
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return (await res.json()) as T;
}
