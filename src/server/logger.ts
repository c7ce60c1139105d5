import { pino, type Logger } from "pino";

/**
 * Structured logs (pino, JSON lines). Redaction is a second line of defence: the code never logs
 * tokens, keys or payloads in the first place.
 */
export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: "keyward" },
      redact: { paths: ["*.bearer", "*.token", "*.jwk.d", "*.key", "*.k", "*.credential", "*.masterKey"], censor: "[redacted]" },
    },
    destination,
  );
}
