// The hostpulse TypeScript client: `HostpulseClient` plus the wire types.
// Usable from any web application (or Node with the `ws` package).

export { HostpulseClient } from "./client";
export type {
  ClientOptions,
  ConnectionState,
  Incomplete,
  SubscribeOptions,
  UpdateHandler,
  WebSocketFactory,
  WebSocketLike,
} from "./client";
export { Backoff, type BackoffOptions } from "./backoff";
export { decodeFrame, FrameError, type Encoding, type Item } from "./codec";
export { matches } from "./topic";
export type * from "./types";
