import type { BlockRef, Store } from "../../store/store.js";

export type MembershipPolicy = 1 | 2 | 3;

/**
 * §9's membership policies for a bound GK, decided from the membership index (two lookups at
 * most, whatever the chain's length); "member at block H" means once H's own operations apply:
 *   1. member at the block the GK is bound to;
 *   2. member as of the chain's current tail;
 *   3. both.
 *
 * @example
 * await isEntitled(store, gk.block, "bob@example.com", 3)
 */
export async function isEntitled(store: Store, block: BlockRef, entity: string, policy: MembershipPolicy): Promise<boolean> {
  const atBlock = () => store.isMemberAt(block.chainUri, entity, block.position);
  const atTail = async () => {
    const chain = await store.getChain(block.chainUri);
    return chain !== undefined && (await store.isMemberAt(block.chainUri, entity, chain.length - 1));
  };
  if (policy === 1) return atBlock();
  if (policy === 2) return atTail();
  return (await atBlock()) && (await atTail());
}

export function describePolicy(policy: MembershipPolicy): string {
  return policy === 1
    ? "only members at the block this key is bound to may fetch it"
    : policy === 2
      ? "only current members of the group may fetch this key"
      : "only entities that were members at the bound block and still are may fetch this key";
}
