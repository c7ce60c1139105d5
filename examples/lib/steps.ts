import { KmsRequestError } from "../../src/client/index.js";

/** Whether an example's request was granted, and if refused, the KMS's status and reason. */
export type Access = { readonly granted: true } | { readonly granted: false; readonly status: number; readonly reason: string };

/**
 * Runs `fn` and says whether the KMS granted it: a `KmsRequestError` is a refusal (with its status
 * and reason); any other error is the example failing, and is thrown.
 *
 * @example
 * const access = await attempt(() => carol.gks.fetch(gkUri)); // { granted: false, status: 403, reason: "…" }
 */
export async function attempt(fn: () => Promise<unknown>): Promise<Access> {
  try {
    await fn();
    return { granted: true };
  } catch (e) {
    if (e instanceof KmsRequestError) return { granted: false, status: e.status, reason: e.reason };
    throw e;
  }
}

/** A hash or URI shortened for a step line. */
export const short = (s: string) => `${s.slice(0, 12)}…`;

/** An access as a step line shows it: `granted`, or `refused, 403 "…"`. */
export const shown = (a: Access) => (a.granted ? "granted" : `refused, ${a.status} "${a.reason}"`);

/**
 * An example's step log: `say` prints a line through `log` (default: the console) and keeps it in
 * `lines`; `ensure` fails the example, naming it, when what it promises does not hold.
 *
 * @example
 * const { lines, say, ensure } = stepLog("xmpp-muc demo", opts.log);
 * say("step 1: …"); ensure(gk.block === genesis.hash, "the GK is not bound to the genesis block");
 */
export function stepLog(demo: string, log: (line: string) => void = (line) => console.log(line)) {
  const lines: string[] = [];
  return {
    lines,
    say: (line: string) => {
      lines.push(line);
      log(line);
    },
    ensure: (ok: boolean, what: string) => {
      if (!ok) throw new Error(`${demo}: ${what}`);
    },
  };
}
