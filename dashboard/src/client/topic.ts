// Topic pattern matching with the server's (and NATS's) rules: `*` matches
// exactly one segment, `>` (last only) matches one or more remaining segments.

/** Whether `pattern` matches the concrete `topic`. */
export function matches(pattern: string, topic: string): boolean {
  const p = pattern.split(".");
  const t = topic.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return t.length > i;
    if (i >= t.length) return false;
    if (p[i] !== "*" && p[i] !== t[i]) return false;
  }
  return p.length === t.length;
}
