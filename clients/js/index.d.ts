// Types for pgchat-client (protocol v1, docs/protocol.md).

/** A "message" frame: one chat message. */
export interface MessageFrame {
  type: 'message';
  room: string;
  /** 1, 2, 3, ... per room, without gaps. */
  seq: number;
  author: string;
  body: string;
  /** RFC 3339 UTC time the database stored it. */
  ts: string;
  /** The instance that accepted it. */
  instance: string;
}

export interface WelcomeFrame { type: 'welcome'; instance: string; author: string }
export interface JoinedFrame { type: 'joined'; room: string; seq: number; recovered: boolean }
export interface LeftFrame { type: 'left'; room: string }
export interface AckFrame { type: 'ack'; ref?: string; room: string; seq: number }
export interface ErrorFrame { type: 'error'; ref?: string; room?: string; code: string; message: string }
/** Any server frame, including types this version does not know. */
export interface Frame { type: string; [field: string]: unknown }

export type State = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed';

export interface StateEvent { state: State; delay?: number; code?: number; reason?: string; instance?: string }
export interface PendingEvent { ref: string; room: string; state: 'queued' | 'sent' | 'retry' | 'acked' | 'failed'; error?: string; code?: string; seq?: number }
export interface FatalEvent { reason: string; code?: number }

export interface Events {
  welcome: WelcomeFrame;
  message: MessageFrame;
  joined: JoinedFrame;
  left: LeftFrame;
  ack: AckFrame;
  error: ErrorFrame;
  frame: Frame;
  state: StateEvent;
  pending: PendingEvent;
  fatal: FatalEvent;
}

export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export interface Options {
  /** ws://host:port, http(s)://host:port or a path like "/ws" (browsers). */
  url: string;
  /** Author name in anonymous mode; empty: a guest name the client then keeps. */
  name?: string;
  /** Access token (servers with AUTH_SECRET); the server takes the name from it. */
  token?: string;
  /** Rooms joined on every connection. */
  rooms?: string[];
  /** First join of some rooms from a seq: messages with seq > since[room]. */
  since?: Record<string, number>;
  /** WebSocket constructor; default the global one (browsers, Node 22+), e.g. the ws package on Node 20. */
  WebSocket?: new (url: string) => WebSocketLike;
  /** Reconnect backoff bounds in ms: delay = random(0, min(maxDelay, minDelay × 2^attempt)). Defaults 250 and 10000. */
  minDelay?: number;
  maxDelay?: number;
  /** ms to wait for the welcome frame before retrying (10000). */
  connectTimeout?: number;
  /** Prefix of the client's refs (default a random one). */
  refPrefix?: string;
  /**
   * Called after a connection attempt that ended before its welcome; a
   * string it returns (e.g. "token expired", from GET /api/whoami) stops
   * the client with a "fatal" event instead of retrying.
   */
  verify?: () => Promise<string | undefined | null> | string | undefined | null;
}

export interface Ack { ref: string; room: string; seq: number }

export class ServerError extends Error {
  readonly code: string;
  readonly serverMessage: string;
  readonly frame?: unknown;
  status?: number;
}

export class ClosedError extends Error {}

export function backoff(minDelay: number, maxDelay: number, attempt: number): number;

export class Client {
  constructor(options: Options);
  readonly state: State;
  readonly connected: boolean;
  /** Instance of the current connection, "" while disconnected. */
  readonly instance: string;
  /** The author name the server accepted. */
  readonly author: string;
  readonly rooms: string[];
  on<K extends keyof Events>(type: K, fn: (ev: Events[K]) => void): () => void;
  /** Frames of other types (presence, typing, ...), by their type. */
  on(type: string, fn: (ev: Frame) => void): () => void;
  off(type: string, fn: (ev: any) => void): void;
  connect(): void;
  join(room: string, since?: number): void;
  leave(room: string): void;
  joined(room: string): boolean;
  last(room: string): number | undefined;
  send(room: string, body: string, options?: { ref?: string }): Promise<Ack>;
  pending(): { ref: string; room: string; body: string; state: string }[];
  sendFrame(frame: Record<string, unknown>): boolean;
  /** Drops the connection as if the network failed; the client resumes. */
  reconnect(): void;
  close(): void;
}

export interface PublishMessage { room: string; body: string; ref?: string; author?: string }
export interface PublishResult { room: string; seq: number; ts: string; ref?: string; duplicate?: boolean }

/** POST /api/messages: up to 100 messages in one transaction (backends). */
export function publish(baseUrl: string | URL, messages: PublishMessage[], options?: { token?: string; fetch?: typeof fetch }): Promise<PublishResult[]>;
