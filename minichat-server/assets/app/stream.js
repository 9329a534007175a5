// The page's one WebSocket (`/ws/<me>?token=…&since=<last seq>`): opening it, reconnecting
// with backoff when it drops, keeping a quiet one honest with pings, and the seq to resume
// after. Frames are handed to the handlers main.js registers; this module knows no chat.

import { BASE } from './api.js';
import { keySeq, state, store } from './state.js';
import { setConnection, setReconnectText, showError } from './view.js';

const BACKOFF_START_MS = 500;
const BACKOFF_MAX_MS = 10000;
/** With no frame from the server for this long, the page pings; twice that, it reconnects. */
const QUIET_MS = 25000;

/**
 * The seq to resume after (`since`), kept per user in localStorage. Events on one socket arrive
 * in seq order, so a message or membership event's seq is the new high-water mark. An ack's seq is
 * taken only once everything below it was seen: an event numbered just before it may still be
 * on its way, and resuming after it would skip that one. Duplicates in the replay are the
 * conversation's to skip (by message id).
 */
class ResumePoint {
  constructor() {
    this.uid = null;
    this.last = 0;
    this.ahead = new Set();
  }

  /** Starts from what was stored for `uid` (`fresh`: a new user, nothing to resume). */
  restore(uid, fresh) {
    this.uid = uid;
    this.ahead.clear();
    this.last = fresh ? 0 : Number(store.get(keySeq(uid))) || 0;
  }

  reset() {
    this.uid = null;
    this.last = 0;
    this.ahead.clear();
  }

  note(seq, fromAck) {
    if (!Number.isSafeInteger(seq) || seq <= this.last) return;
    if (fromAck) this.ahead.add(seq);
    else this.last = seq;
    while (this.ahead.has(this.last + 1)) this.last += 1;
    for (const s of this.ahead) if (s <= this.last) this.ahead.delete(s);
    if (this.uid !== null) store.set(keySeq(this.uid), this.last);
  }
}

export const resumePoint = new ResumePoint();

const sock = {
  ws: null,
  /** The `system` frame arrived on the current socket. */
  ready: false,
  closing: false,
  attempt: 0,
  reconnectTimer: null,
  reconnectAt: 0,
  countdownTimer: null,
  lastHeard: 0,
};

/**
 * What the page does with the socket's events: `frame(frame)` for each chat frame, `ready()`
 * once the server greeted a new socket, `down()` when it is gone, `gone()` when the server
 * says the user no longer exists (close 4004), `refused()` when an upgrade was refused.
 */
let handlers = { frame() {}, ready() {}, down() {}, gone() {}, refused() {} };
export function onStream(given) {
  handlers = given;
}

export const isReady = () => sock.ready && sock.ws !== null;

/** Sends a frame if the socket is up; whether it went out. */
export function sendFrame(frame) {
  if (!isReady()) return false;
  try {
    sock.ws.send(JSON.stringify(frame));
    return true;
  } catch {
    return false;
  }
}

/** Opens the socket for a new session. */
export function start() {
  sock.closing = false;
  sock.attempt = 0;
  connect();
}

function detach(ws) {
  ws.onclose = ws.onmessage = ws.onopen = ws.onerror = null;
}

function connect() {
  clearTimeout(sock.reconnectTimer);
  clearInterval(sock.countdownTimer);
  sock.reconnectTimer = null;
  const session = state.session;
  if (!session || sock.closing) return;
  if (sock.ws) {
    const old = sock.ws;
    sock.ws = null;
    detach(old);
    try {
      old.close();
    } catch {
      /* ignore */
    }
  }
  const url = new URL(`ws/${session.user.id}`, BASE);
  url.protocol = BASE.protocol === 'https:' ? 'wss:' : 'ws:';
  if (session.token) url.searchParams.set('token', session.token);
  url.searchParams.set('since', String(resumePoint.last));
  if (sock.attempt === 0) setConnection('connecting', 'Connecting…');
  else {
    setConnection('reconnecting', 'Reconnecting…');
    setReconnectText('Connection lost. Reconnecting…');
  }
  let ws;
  try {
    ws = new WebSocket(url);
  } catch (e) {
    showError(`Cannot open the connection: ${e.message}`);
    scheduleReconnect();
    return;
  }
  sock.ws = ws;
  sock.ready = false;
  let opened = false;
  ws.onopen = () => {
    opened = true;
    sock.lastHeard = Date.now();
  };
  ws.onmessage = (event) => {
    if (sock.ws !== ws) return;
    sock.lastHeard = Date.now();
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return;
    }
    if (frame && typeof frame === 'object') onFrame(frame);
  };
  ws.onerror = () => {
    /* a close event follows */
  };
  ws.onclose = (event) => {
    if (sock.ws !== ws) return;
    sock.ws = null;
    sock.ready = false;
    handlers.down();
    onClosed(event, opened);
  };
}

function onFrame(frame) {
  switch (frame.type) {
    case 'system':
      sock.ready = true;
      sock.attempt = 0;
      setConnection('online', 'Connected');
      handlers.ready();
      return;
    case 'message':
    case 'conversation':
    case 'read':
      resumePoint.note(frame.seq, false);
      break;
    case 'ack':
      if (frame.message) resumePoint.note(frame.message.seq, true);
      break;
    default:
      break;
  }
  handlers.frame(frame);
}

function onClosed(event, opened) {
  if (sock.closing || !state.session) return;
  if (event.code === 4004) {
    handlers.gone();
    return;
  }
  scheduleReconnect();
  // The upgrade was refused: a browser cannot see why, so the page asks the REST API.
  if (!opened) handlers.refused();
}

function scheduleReconnect() {
  if (sock.closing || !state.session) return;
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * 2 ** sock.attempt);
  const delay = Math.round(base / 2 + Math.random() * (base / 2));
  sock.attempt += 1;
  sock.reconnectAt = Date.now() + delay;
  setConnection('reconnecting', 'Reconnecting…');
  const tick = () => {
    const left = Math.max(0, Math.ceil((sock.reconnectAt - Date.now()) / 1000));
    setReconnectText(left > 0 ? `Connection lost. Reconnecting in ${left} s…` : 'Connection lost. Reconnecting…');
  };
  tick();
  clearInterval(sock.countdownTimer);
  sock.countdownTimer = setInterval(tick, 500);
  clearTimeout(sock.reconnectTimer);
  sock.reconnectTimer = setTimeout(connect, delay);
}

/** Reconnects at once (the "Retry now" button, the browser going online). */
export function reconnectNow() {
  if (!state.session || sock.ready) return;
  connect();
}

/** Closes the socket for good (log out). */
export function stopSocket() {
  sock.closing = true;
  clearTimeout(sock.reconnectTimer);
  clearInterval(sock.countdownTimer);
  sock.ready = false;
  if (sock.ws) {
    const ws = sock.ws;
    sock.ws = null;
    detach(ws);
    try {
      ws.close(1000, 'log out');
    } catch {
      /* ignore */
    }
  }
}

/** Keeps a quiet socket honest: ping it, and reconnect when nothing at all comes back. */
export function heartbeat() {
  if (!isReady()) return;
  const quiet = Date.now() - sock.lastHeard;
  if (quiet > 2 * QUIET_MS) {
    const ws = sock.ws;
    sock.ws = null;
    sock.ready = false;
    handlers.down();
    detach(ws);
    try {
      ws.close();
    } catch {
      /* ignore */
    }
    scheduleReconnect();
  } else if (quiet > QUIET_MS) {
    sendFrame({ type: 'ping' });
  }
}
