// The page's shared state: who is signed in, the people, the inbox of conversations and the one
// on screen, and what is kept in localStorage across reloads (the session, the seq to resume
// after, unsent messages, the open conversation). The socket's own state lives in stream.js.

export const KEY_SESSION = 'minichat.session';
export const keySeq = (uid) => `minichat.seq.${uid}`;
export const keyOutbox = (uid) => `minichat.outbox.${uid}`;
export const keyPeer = (uid) => `minichat.peer.${uid}`;
export const keyOpen = (uid) => `minichat.open.${uid}`;

export const state = {
  /** {user, token, loginAt} or null. */
  session: null,
  users: new Map(), // id -> user
  presence: new Map(), // id -> {online, last_seen}
  userItems: new Map(), // id -> sidebar element (the people list: the "new chat" picker)

  /** The inbox: conversation id -> {id, kind, title, peer_id, member_count, members, last_message, unread, seen}. */
  convs: new Map(),
  directByPeer: new Map(), // peer id -> id of the direct conversation with them
  convItems: new Map(), // conversation id -> sidebar element
  inboxLoaded: false,

  typingUntil: new Map(), // peer id -> timer id (direct conversations)
  groupTyping: new Map(), // conversation id -> Map(sender id -> timer id)
  readUpTo: new Map(), // reader id -> highest message id of mine they have read (direct)
  groupReads: new Map(), // conversation id -> Map(reader id -> up_to) from live read frames
  readSent: new Map(), // peer id -> highest up_to sent in a read frame (or already stored by the server)
  groupReadSent: new Map(), // conversation id -> the same, for groups
  lastReadAt: 0, // when the last read frame went out (Date.now())
  readTimer: null, // the pending trailing read frame, if any
  readLoading: new Map(), // peer id -> pending GET /messages/read (no read frame is sent meanwhile)

  /** The open conversation: its id (null for a direct chat not started yet) and, if direct, the peer. */
  convId: null,
  peerId: null,
  shown: new Map(), // message id -> element, in the open conversation
  oldestId: null,
  hasOlder: false,
  loadingOlder: false,
  historyToken: 0,

  /**
   * Messages not yet acknowledged: [{client_id, conversation_id | receiver_id, content, created,
   * status, error, transmitted}]; receiver_id only for a direct chat that has no conversation yet.
   */
  outbox: [],
  pendingEls: new Map(), // client_id -> element

  lastTypingSent: 0,
};

export const store = {
  get(key) {
    try {
      const raw = localStorage.getItem(key);
      return raw === null ? null : JSON.parse(raw);
    } catch {
      return null;
    }
  },
  set(key, value) {
    try {
      localStorage.setItem(key, JSON.stringify(value));
    } catch {
      /* storage full or disabled: the page still works for this visit */
    }
  },
  del(key) {
    try {
      localStorage.removeItem(key);
    } catch {
      /* ignore */
    }
  },
};

/** Forgets what is stored for user `uid` (their seq, unsent messages, open conversation). */
export function forgetStored(uid) {
  store.del(keySeq(uid));
  store.del(keyOutbox(uid));
  store.del(keyPeer(uid));
  store.del(keyOpen(uid));
}

/** Whether a conversation is open on screen. */
export const isOpen = () => state.convId !== null || state.peerId !== null;

/** The open conversation's inbox entry, if it has one. */
export const openConv = () => (state.convId === null ? null : state.convs.get(state.convId) || null);

export const myId = () => (state.session ? state.session.user.id : null);

export function displayName(user) {
  if (!user) return 'Unknown';
  return user.display_name || user.username || `User ${user.id}`;
}

export function nameOf(id) {
  return displayName(state.users.get(id)) || `User ${id}`;
}

/** A random id for client_id: crypto.randomUUID where available (secure contexts), else v4 by hand. */
export function newClientId() {
  if (window.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
