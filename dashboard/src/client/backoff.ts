// Reconnect delays: exponential from `minMs`, capped at `maxMs`, with jitter
// so a fleet of browsers does not reconnect in lockstep after a restart.

export interface BackoffOptions {
  /** First delay, before jitter (default 500 ms). */
  minMs?: number;
  /** Largest delay (default 30 s). */
  maxMs?: number;
  /** Growth per failed attempt (default 2). */
  factor?: number;
  /** Fraction of the delay that is randomised, 0..1 (default 0.5). */
  jitter?: number;
}

export class Backoff {
  readonly minMs: number;
  readonly maxMs: number;
  readonly factor: number;
  readonly jitter: number;
  private attempt = 0;

  constructor(options: BackoffOptions = {}, private readonly random: () => number = Math.random) {
    this.minMs = options.minMs ?? 500;
    this.maxMs = options.maxMs ?? 30_000;
    this.factor = options.factor ?? 2;
    this.jitter = Math.min(1, Math.max(0, options.jitter ?? 0.5));
    if (!(this.minMs > 0) || !(this.maxMs >= this.minMs) || !(this.factor >= 1)) {
      throw new RangeError(
        `backoff needs 0 < minMs <= maxMs and factor >= 1 (got minMs=${this.minMs}, maxMs=${this.maxMs}, factor=${this.factor})`,
      );
    }
  }

  /** Failed attempts since the last reset. */
  get attempts(): number {
    return this.attempt;
  }

  /** The delay before the next attempt; counts one more failure. */
  next(): number {
    const base = Math.min(this.maxMs, this.minMs * this.factor ** this.attempt);
    this.attempt += 1;
    // Equal jitter: [base * (1 - jitter), base], never above the cap.
    return Math.round(base * (1 - this.jitter * this.random()));
  }

  /** After a successful connection. */
  reset(): void {
    this.attempt = 0;
  }
}
