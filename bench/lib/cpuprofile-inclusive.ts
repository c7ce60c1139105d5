import { readFileSync } from "node:fs";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples?: number[];
  timeDeltas?: number[];
}

export interface InclusiveLine {
  readonly name: string;
  /** Share of busy (non-idle) time spent in this function or below it (synchronously), percent. */
  readonly totalPct: number;
  readonly selfPct: number;
}

const shortUrl = (url: string): string => {
  const nm = url.lastIndexOf("node_modules/");
  if (nm >= 0) return `${url.slice(nm + 13).split("/")[0]}/…/${url.split("/").pop()}`;
  const m = /\/(src|dist)\/(.*)$/.exec(url);
  return m ? `${m[1]}/${m[2]}` : url.replace(/^file:\/\//, "");
};

/**
 * Inclusive ("total") time per function of a V8 .cpuprofile: the share of busy samples whose stack
 * holds the function (counted once per sample even when recursive). Async functions only count
 * their synchronous stretches (what a CPU profile can see). `match` keeps the functions whose
 * "name file" matches; `top` bounds the output (by total time).
 */
export function inclusiveTimes(path: string, match: (key: string) => boolean = () => true, top = 40): InclusiveLine[] {
  const p = JSON.parse(readFileSync(path, "utf8")) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const key = (n: ProfileNode) => `${n.callFrame.functionName || "(anonymous)"} ${shortUrl(n.callFrame.url)}${n.callFrame.url ? `:${n.callFrame.lineNumber + 1}` : ""}`.trim();
  const selfById = new Map<number, number>();
  const samples = p.samples ?? [];
  const deltas = p.timeDeltas ?? [];
  for (let i = 0; i < samples.length; i++) selfById.set(samples[i]!, (selfById.get(samples[i]!) ?? 0) + (deltas[i] ?? 0));
  let busy = 0;
  const total = new Map<string, number>();
  const self = new Map<string, number>();
  for (const [id, t] of selfById) {
    const leaf = byId.get(id)!;
    if (leaf.callFrame.functionName === "(idle)") continue;
    busy += t;
    self.set(key(leaf), (self.get(key(leaf)) ?? 0) + t);
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const k = key(byId.get(cur)!);
      if (seen.has(k)) continue;
      seen.add(k);
      total.set(k, (total.get(k) ?? 0) + t);
    }
  }
  return [...total.entries()]
    .filter(([k]) => match(k))
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([name, t]) => ({ name, totalPct: (100 * t) / busy, selfPct: (100 * (self.get(name) ?? 0)) / busy }));
}
