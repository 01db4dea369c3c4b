// Types for the vendored htm/preact standalone module (ours, for tsc --checkJs).
export type VNode = { type: unknown; props: Record<string, unknown>; key?: unknown };
export type Child = VNode | string | number | boolean | null | undefined | Child[];
export function html(strings: TemplateStringsArray, ...values: unknown[]): VNode;
export function h(type: unknown, props: Record<string, unknown> | null, ...children: unknown[]): VNode;
export function render(vnode: VNode, parent: Element): void;
export function useState<T>(initial: T | (() => T)): [T, (value: T | ((previous: T) => T)) => void];
export function useReducer<S, A>(reducer: (state: S, action: A) => S, initial: S): [S, (action: A) => void];
export function useEffect(effect: () => void | (() => void), deps?: unknown[]): void;
export function useLayoutEffect(effect: () => void | (() => void), deps?: unknown[]): void;
export function useRef<T>(initial: T): { current: T };
export function useMemo<T>(factory: () => T, deps: unknown[]): T;
export function useCallback<T extends (...args: never[]) => unknown>(callback: T, deps: unknown[]): T;
