/**
 * The parts of xmpp.js (`@xmpp/component` 0.13, `@xmpp/client` 0.14, CommonJS, no bundled types)
 * that Keyward uses, typed by hand from their sources. Server, tests and examples only: the SDK
 * (src/client) types the client it is handed structurally and never imports these.
 */

declare module "@xmpp/xml" {
  export class Element {
    name: string;
    attrs: Record<string, string | undefined>;
    children: Array<Element | string>;
    parent?: Element | null;
    constructor(name: string, attrs?: Record<string, string | undefined>);
    is(name: string, xmlns?: string): boolean;
    getNS(): string | undefined;
    getChild(name: string, xmlns?: string): Element | undefined;
    getChildren(name: string, xmlns?: string): Element[];
    getChildElements(): Element[];
    getChildText(name: string, xmlns?: string): string | null;
    text(): string;
    append(...children: Array<Element | string>): Element;
    c(name: string, attrs?: Record<string, string | undefined>): Element;
    t(text: string): Element;
    up(): Element;
    toString(): string;
  }
  type Child = Element | string | number | null | undefined | false | Child[];
  function xml(name: string, attrs?: Record<string, string | undefined> | null, ...children: Child[]): Element;
  namespace xml {
    export { Element };
  }
  export default xml;
}

declare module "@xmpp/jid" {
  export interface JID {
    local: string;
    domain: string;
    resource: string;
    bare(): JID;
    toString(): string;
    equals(other: JID): boolean;
  }
}

declare module "@xmpp/component" {
  import type { Element } from "@xmpp/xml";
  import type { JID } from "@xmpp/jid";
  import xmlFn from "@xmpp/xml";

  export const xml: typeof xmlFn;

  export interface IncomingContext {
    readonly stanza: Element;
    readonly entity: Component;
    readonly name: string;
    readonly id: string;
    readonly type: string;
    readonly from?: JID;
    readonly to?: JID;
    /** The IQ's single payload element (set by the IQ callee). */
    element?: Element;
  }
  export type Middleware = (ctx: IncomingContext, next: () => Promise<unknown>) => unknown;

  export interface Component {
    readonly status: string;
    readonly jid: JID | null;
    readonly options: { service: string; domain: string };
    timeout: number;
    readonly reconnect: { stop(): void; start(): void; delay: number };
    readonly middleware: { use(fn: Middleware): Middleware; filter(fn: Middleware): Middleware };
    start(): Promise<unknown>;
    stop(): Promise<unknown>;
    connect(service: string): Promise<unknown>;
    open(options: { domain: string; lang?: string }): Promise<unknown>;
    disconnect(timeout?: number): Promise<unknown>;
    send(element: Element): Promise<void>;
    on(event: "error", listener: (error: Error & { condition?: string }) => void): this;
    on(event: "stanza" | "element", listener: (element: Element) => void): this;
    on(event: string, listener: (...args: unknown[]) => void): this;
    once(event: string, listener: (...args: unknown[]) => void): this;
    removeListener(event: string, listener: (...args: never[]) => void): this;
  }

  export function component(options: { service: string; domain: string; password: string }): Component;
}

declare module "@xmpp/client" {
  import type { Element } from "@xmpp/xml";
  import type { JID } from "@xmpp/jid";
  import xmlFn from "@xmpp/xml";

  export const xml: typeof xmlFn;

  export interface Client {
    readonly status: string;
    readonly jid: JID | null;
    timeout: number;
    readonly reconnect: { stop(): void; start(): void; delay: number };
    readonly iqCaller: { request(stanza: Element, timeout?: number): Promise<Element>; get(el: Element, to?: string, timeout?: number): Promise<Element>; set(el: Element, to?: string, timeout?: number): Promise<Element> };
    start(): Promise<unknown>;
    stop(): Promise<unknown>;
    disconnect(timeout?: number): Promise<unknown>;
    send(element: Element): Promise<void>;
    on(event: "error", listener: (error: Error & { condition?: string }) => void): this;
    on(event: "stanza" | "element", listener: (element: Element) => void): this;
    on(event: string, listener: (...args: unknown[]) => void): this;
    once(event: string, listener: (...args: unknown[]) => void): this;
    removeListener(event: string, listener: (...args: never[]) => void): this;
  }

  export function client(options: { service: string; domain: string; username?: string; password?: string; resource?: string; credentials?: unknown }): Client;
}
