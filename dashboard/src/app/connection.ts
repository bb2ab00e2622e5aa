// The dashboard's one client connection: URL from the page location, token
// kept in sessionStorage for the browser session, encoding from `?encoding=`.

import { HostpulseClient } from "../client";
import type { Encoding } from "../client/codec";

const TOKEN_KEY = "hostpulse.token";

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
  return new HostpulseClient({
    url: `${scheme}://${location.host}/ws`,
    token: storedToken(),
    encoding,
    backoff: { minMs: 500, maxMs: 15_000 },
  });
}

/** `GET path` with the session's token; throws `Unauthorized` on 401/403. */
export class Unauthorized extends Error {}

export async function getJson<T>(path: string): Promise<T> {
  const token = storedToken();
  const res = await fetch(path, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  if (res.status === 401 || res.status === 403) throw new Unauthorized(`${path}: HTTP ${res.status}`);
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return (await res.json()) as T;
}
