// Test harness shared by the client tests and the browser tests: starts the
// real `hostpulse-aggregator` and `hostpulse-agent` binaries (built by
// `make test` into target/debug, or HOSTPULSE_BIN_DIR) on loopback ports
// chosen at run time, with TOML configs written to a temporary folder.
// Every wait has a timeout; every process started is stopped by its PID.

import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, "../..");
export const binDir = process.env.HOSTPULSE_BIN_DIR ?? join(repoRoot, "target/debug");

export function binary(name: string): string {
  const path = join(binDir, name);
  if (!existsSync(path)) {
    throw new Error(`${path} is missing: run \`cargo build --workspace --bins\` first (make test does)`);
  }
  return path;
}

const running = new Set<ChildProcess>();
process.on("exit", () => {
  for (const p of running) p.kill("SIGKILL");
});

export class Proc {
  readonly lines: string[] = [];
  private waiters: { needle: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];
  readonly exited: Promise<number | null>;

  constructor(readonly name: string, readonly child: ChildProcess) {
    running.add(child);
    let partial = "";
    const onData = (chunk: Buffer) => {
      partial += chunk.toString("utf8");
      let nl: number;
      while ((nl = partial.indexOf("\n")) >= 0) {
        const line = partial.slice(0, nl);
        partial = partial.slice(nl + 1);
        this.lines.push(line);
        if (process.env.HOSTPULSE_TEST_LOG) console.log(`[${name}] ${line}`);
        this.waiters = this.waiters.filter((w) => {
          const m = line.match(w.needle);
          if (m) w.resolve(m);
          return !m;
        });
      }
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
    this.exited = new Promise((res) =>
      child.on("exit", (code) => {
        running.delete(child);
        res(code);
      }),
    );
  }

  /** Resolves with the first log line (past or future) matching `needle`. */
  waitFor(needle: RegExp, timeoutMs = 15_000): Promise<RegExpMatchArray> {
    for (const line of this.lines) {
      const m = line.match(needle);
      if (m) return Promise.resolve(m);
    }
    return withTimeout(
      new Promise((res) => this.waiters.push({ needle, resolve: res })),
      timeoutMs,
      `${this.name}: no log line matching ${needle} (last: ${this.lines.slice(-5).join(" | ")})`,
    );
  }

  async stop(signal: NodeJS.Signals = "SIGTERM", timeoutMs = 10_000): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill(signal);
    await withTimeout(this.exited, timeoutMs, `${this.name} did not exit after ${signal}`);
  }
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, rej) => {
      timer = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]);
}

/** Polls `check` until it returns a truthy value, or fails after `timeoutMs`. */
export async function waitUntil<T>(
  what: string,
  check: () => T | Promise<T>,
  timeoutMs = 15_000,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v as NonNullable<T>;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what}${last ? ` (${last})` : ""}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const scratch = mkdtempSync(join(tmpdir(), "hostpulse-dashboard-test-"));
let files = 0;

function writeConfig(name: string, text: string): string {
  const path = join(scratch, `${files++}-${name}`);
  writeFileSync(path, text);
  return path;
}

export interface Aggregator {
  proc: Proc;
  http: string;
  ingest: string;
  /** `http://127.0.0.1:port` */
  httpUrl: string;
  wsUrl: string;
  ingestUrl: string;
}

/**
 * Starts an aggregator. `http`/`ingest` default to port 0 (pass the previous
 * run's addresses to restart in place); `extra` is appended to the TOML (in
 * place of the anonymous `[auth]`); `alertRules`, a rules file's text, is
 * written next to it and named in an `[alerts]` section.
 */
export async function startAggregator(
  opts: { http?: string; ingest?: string; extra?: string; alertRules?: string } = {},
): Promise<Aggregator> {
  const alerts =
    opts.alertRules === undefined ? "" : `\n[alerts]\nrules = "${writeConfig("alerts.toml", opts.alertRules)}"\n`;
  const config = writeConfig(
    "aggregator.toml",
    `[ingest]
listen = "${opts.ingest ?? "127.0.0.1:0"}"
offline_after_ms = 2000

[http]
listen = "${opts.http ?? "127.0.0.1:0"}"

${opts.extra ?? `[auth]
anonymous_agents = true
anonymous_clients = true
anonymous_topics = [">"]
`}${alerts}`,
  );
  const child = spawn(binary("hostpulse-aggregator"), ["--config", config, "--log-format", "json"], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "info" },
  });
  const proc = new Proc("aggregator", child);
  const line = await proc.waitFor(/aggregator listening.*/);
  const ingest = /ingest_addr"?\s*[:=]\s*"?([0-9.]+:\d+)/.exec(line[0])?.[1];
  const http = /http_addr"?\s*[:=]\s*"?([0-9.]+:\d+)/.exec(line[0])?.[1];
  if (!ingest || !http) throw new Error(`no addresses in ${line[0]}`);
  return { proc, http, ingest, httpUrl: `http://${http}`, wsUrl: `ws://${http}/ws`, ingestUrl: `http://${ingest}` };
}

/** Starts an agent sampling every `intervalMs` for `hostname`. */
export function startAgent(aggregator: string, hostname: string, opts: { intervalMs?: number; extra?: string } = {}): Proc {
  const config = writeConfig(
    "agent.toml",
    `aggregator = "${aggregator}"
hostname = "${hostname}"
interval_ms = ${opts.intervalMs ?? 250}
reconnect_min_ms = 100
reconnect_max_ms = 1000
${opts.extra ?? ""}
[collect]
top_processes = 5
processes_budget_pct = 100.0
`,
  );
  const child = spawn(binary("hostpulse-agent"), ["--config", config, "--log-format", "json"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  return new Proc(`agent ${hostname}`, child);
}

export interface Nats {
  proc: Proc;
  url: string;
}

/** Starts a `nats-server` on a free loopback port (the cluster tests' broker). */
export async function startNats(): Promise<Nats> {
  const path = ["/usr/sbin/nats-server", "/usr/bin/nats-server"].find((p) => existsSync(p)) ?? "nats-server";
  const child = spawn(path, ["-a", "127.0.0.1", "-p", "-1"], { stdio: ["ignore", "pipe", "pipe"] });
  child.on("error", (e) => {
    throw new Error(`cannot start nats-server (apt-get install nats-server): ${e.message}`);
  });
  const proc = new Proc("nats-server", child);
  const m = await proc.waitFor(/Listening for client connections on ([0-9.]+:\d+)/);
  return { proc, url: `nats://${m[1]}` };
}

/** `sha256` hex of a token, as `[[auth.client_tokens]]` wants it. */
export async function sha256Hex(token: string): Promise<string> {
  const { createHash } = await import("node:crypto");
  return createHash("sha256").update(token).digest("hex");
}

export interface FleetSim {
  proc: Proc;
  hosts: number;
  /**
   * With `control`: sets host `n`'s (1-based) CPU in its live samples to
   * `pct`, or back to its simulated value (`undefined`); resolves once the
   * simulator has taken it.
   */
  setCpu(n: number, pct: number | undefined): Promise<void>;
}

/**
 * Starts `hostpulse-fleet-sim`: `hosts` simulated hosts, each its own real
 * gRPC stream to `ingest` (`host:port`), with `role` and `rack` labels, a
 * backlog of `backlog` samples `backlogStepMs` (1 s) apart and ending now
 * (past timestamps, so an aggregator with `[storage]` stores and rolls up
 * that history), then one sample per `intervalMs`; every `offlineEvery`th
 * host (0: none) goes offline after its backlog; host names are
 * `<prefix>-<n>` (`sim` by default). With `control`, `setCpu` steers one
 * host's CPU (`--stdin-control`). Resolves once every backlog is acknowledged. The simulator stops by itself
 * after `durationSecs`, or when this process goes (its stdin closes).
 */
export async function startFleetSim(
  ingest: string,
  opts: {
    hosts: number;
    backlog?: number;
    backlogStepMs?: number;
    intervalMs?: number;
    offlineEvery?: number;
    durationSecs?: number;
    prefix?: string;
    control?: boolean;
  },
  timeoutMs = 180_000,
): Promise<FleetSim> {
  const args = [
    "--ingest",
    ingest,
    "--hosts",
    String(opts.hosts),
    "--backlog",
    String(opts.backlog ?? 60),
    "--backlog-step-ms",
    String(opts.backlogStepMs ?? 1000),
    "--interval-ms",
    String(opts.intervalMs ?? 5000),
    "--offline-every",
    String(opts.offlineEvery ?? 10),
    "--duration-secs",
    String(opts.durationSecs ?? 600),
    "--stop-on-stdin-eof",
    ...(opts.prefix ? ["--prefix", opts.prefix] : []),
    ...(opts.control ? ["--stdin-control"] : []),
  ];
  const child = spawn(binary("hostpulse-fleet-sim"), args, { stdio: ["pipe", "pipe", "pipe"] });
  const proc = new Proc("fleet-sim", child);
  await proc.waitFor(/fleet-sim ready hosts=\d+/, timeoutMs);
  let controls = 0;
  const setCpu = async (n: number, pct: number | undefined) => {
    if (!opts.control) throw new Error("startFleetSim: setCpu needs `control: true`");
    const done = `fleet-sim control: ${pct === undefined ? `host ${n} cpu simulated` : `host ${n} cpu ${pct}`}`;
    // Each acknowledgement line is awaited past those already seen.
    const seen = proc.lines.filter((l) => l === done).length;
    controls++;
    child.stdin!.write(`cpu ${n} ${pct ?? "-"}\n`);
    await waitUntil(`fleet-sim took control ${controls}`, () => proc.lines.filter((l) => l === done).length > seen, 10_000);
  };
  return { proc, hosts: opts.hosts, setCpu };
}
