// Wire types of the hostpulse WebSocket protocol, version 1 (see README.md,
// "WebSocket protocol"): updates, `$sys.*` messages and metric payloads.

/** One topic update, as every encoding delivers it. */
export interface Update<P = unknown> {
  /** Dotted topic name, e.g. `host.web-01.cpu`. */
  topic: string;
  /** Rises by one per update of the topic; a jump means updates were skipped. */
  seq: number;
  /** When the sample was taken on the host (RFC 3339, UTC). */
  timestamp: string;
  /** When the aggregator received it (RFC 3339, UTC). */
  received: string;
  payload: P;
}

/** A `$sys.*` reply or notice for this connection (no seq). */
export interface SysMessage<P = Record<string, unknown>> {
  topic: string;
  timestamp: string;
  payload: P;
}

/** Per-topic state reported by `$sys.subscribed`. */
export interface TopicInfo {
  topic: string;
  seq: number;
  history_start: number | null;
  min_interval_ms: number;
}

/** Payload of `$sys.subscribed`. */
export interface Subscribed {
  id?: unknown;
  topic: string;
  topics: TopicInfo[];
  complete: boolean;
}

/** Payload of `$sys.error`. */
export interface ServerError {
  code: string;
  message: string;
  id?: unknown;
}

/** Payload of `$sys.lagged`. */
export interface Lagged {
  skipped: { topic: string; from: number; to: number; count: number }[];
}

export interface CpuPayload {
  total_pct: number;
  per_core_pct: number[];
}

export interface MemoryPayload {
  total_bytes: number;
  used_bytes: number;
  available_bytes: number;
  swap_total_bytes: number;
  swap_used_bytes: number;
}

export interface LoadPayload {
  one: number;
  five: number;
  fifteen: number;
}

export interface ProcessEntry {
  pid: number;
  start_time: number;
  name: string;
  cpu_pct: number;
  memory_bytes: number;
}

export interface ProcessesPayload {
  count: number;
  top_cpu: ProcessEntry[];
  top_memory: ProcessEntry[];
  others: { count: number; cpu_pct: number; memory_bytes: number };
}

/** Payload of the `hosts` topic. */
export interface HostEvent {
  event: "online" | "restarted" | "offline" | "forgotten";
  host: string;
  agent_id: string;
  hostname: string;
  epoch: number;
  version: string;
  labels: Record<string, string>;
  interval_ms: number;
  /** Cluster mode: the node name of the aggregator the host is attached to. */
  aggregator?: string;
}

export interface NetworkInterface {
  name: string;
  rx_bytes_per_sec: number;
  tx_bytes_per_sec: number;
  rx_packets_per_sec: number;
  tx_packets_per_sec: number;
  rx_errors_per_sec: number;
  tx_errors_per_sec: number;
  rx_bytes_total: number;
  tx_bytes_total: number;
}

export interface NetworkPayload {
  interfaces: NetworkInterface[];
}

export interface DiskPayload {
  devices: { name: string; read_bytes_per_sec: number; write_bytes_per_sec: number }[];
}

export interface FilesystemsPayload {
  mounts: { mount: string; device: string; fs_type: string; total_bytes: number; used_bytes: number; free_bytes: number }[];
}

export interface SystemPayload {
  uptime_secs: number;
  boot_time: number;
  logical_cores: number;
  physical_cores: number | null;
  cpu_frequency_mhz: number;
  per_core_frequency_mhz: number[];
}

export interface TemperaturesPayload {
  sensors: { label: string; celsius: number; max_celsius: number | null; critical_celsius: number | null }[];
}
