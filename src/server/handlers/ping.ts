import type { Handler } from "../context.js";

/** `update /ping` (§9, draft §4.6.9): safe and idempotent; proves the channel works end to end. */
export const ping: Handler = async () => ({ status: 200 });
