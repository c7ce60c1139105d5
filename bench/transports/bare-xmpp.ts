/**
 * The XMPP transport ceiling of the transports bench: a bare XEP-0114 component (`@xmpp/component`,
 * the library the KMS's binding uses) connected to the bench's Prosody, that answers every `kms` IQ
 * `set` at once with an IQ result carrying a fixed ping-sized reply: the client → Prosody →
 * component → Prosody → client path with no KMS behind it. Env: BARE_XMPP_SERVICE
 * (`xmpp://127.0.0.1:<component port>`), BARE_XMPP_DOMAIN, BARE_XMPP_SECRET. Prints
 * "listening <component port>" once the component is online. Run pinned to the server core.
 */
import { component, xml } from "@xmpp/component";
import { PING_SIZED_REPLY } from "../lib/bare-reply.js";
import { KMS_XMPP_NS } from "../lib/transports.js";

const service = process.env.BARE_XMPP_SERVICE!;
const domain = process.env.BARE_XMPP_DOMAIN!;
const entity = component({ service, domain, password: process.env.BARE_XMPP_SECRET! });
entity.reconnect.stop();
entity.on("error", (e) => process.stderr.write(`bare-xmpp: ${e.message}\n`));
entity.middleware.use((ctx, next) => {
  const el = ctx.element;
  if (ctx.name !== "iq" || !el) return next();
  // As the KMS's binding does: the text is read (and trimmed), the reply is the IQ's result payload.
  if (el.is("kms", KMS_XMPP_NS) && ctx.type === "set" && el.text().trim() !== "") return xml("kms", { xmlns: KMS_XMPP_NS }, PING_SIZED_REPLY);
  return next();
});
entity.on("online", () => console.log(`listening ${new URL(service).port}`));
await entity.start();
process.once("SIGTERM", () => {
  const exit = setTimeout(() => process.exit(0), 3000);
  void entity.stop().finally(() => {
    clearTimeout(exit);
    process.exit(0);
  });
});
