// Types for the vendored socket.io-client ESM build (ours, for tsc --checkJs):
// only what the inbox uses.
export interface Socket {
  auth: Record<string, unknown>;
  connected: boolean;
  active: boolean;
  id?: string;
  on(event: string, listener: (...args: any[]) => void): Socket;
  emit(event: string, ...args: unknown[]): Socket;
  connect(): Socket;
  disconnect(): Socket;
  io: { on(event: string, listener: (...args: any[]) => void): unknown };
}
export interface Options {
  auth?: Record<string, unknown>;
  path?: string;
  transports?: string[];
  tryAllTransports?: boolean;
  reconnectionDelayMax?: number;
}
export function io(options?: Options): Socket;
export function io(url: string, options?: Options): Socket;
