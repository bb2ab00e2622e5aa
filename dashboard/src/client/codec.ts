// Frame decoding for the three encodings the aggregator offers: JSON text,
// MessagePack binary, and MessagePack compressed with raw deflate (each frame
// stands alone). `batch.update` frames are flattened into their items.

import { decode } from "@msgpack/msgpack";
import { inflateSync } from "fflate";

/** Encodings a client may ask for with `?encoding=`. */
export type Encoding = "json" | "msgpack" | "msgpack+deflate";

/** One decoded item: an update or a `$sys.*` message. */
export interface Item {
  topic: string;
  seq?: number;
  timestamp: string;
  received?: string;
  payload: unknown;
}

/** Thrown for a frame that is not what the encoding promises. */
export class FrameError extends Error {}

/** Decodes one frame into its items, in order. */
export function decodeFrame(data: unknown, encoding: Encoding): Item[] {
  let value: unknown;
  if (typeof data === "string") {
    if (encoding !== "json") throw new FrameError(`text frame on a ${encoding} connection`);
    try {
      value = JSON.parse(data);
    } catch (e) {
      throw new FrameError(`frame is not JSON: ${(e as Error).message}`);
    }
  } else {
    const bytes = toBytes(data);
    if (encoding === "json") throw new FrameError("binary frame on a json connection");
    try {
      value = decode(encoding === "msgpack+deflate" ? inflateSync(bytes) : bytes);
    } catch (e) {
      throw new FrameError(`frame is not ${encoding}: ${(e as Error).message}`);
    }
  }
  if (typeof value !== "object" || value === null || typeof (value as Item).topic !== "string") {
    throw new FrameError("frame has no topic");
  }
  const v = value as Item & { updates?: Item[] };
  if (v.topic === "batch.update") {
    if (!Array.isArray(v.updates)) throw new FrameError("batch.update without updates");
    return v.updates;
  }
  return [v];
}

function toBytes(data: unknown): Uint8Array {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (Array.isArray(data)) {
    // Node's `ws` may hand over fragments.
    const parts = data.map(toBytes);
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
  throw new FrameError(`unexpected frame type ${Object.prototype.toString.call(data)}`);
}
