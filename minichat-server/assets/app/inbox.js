// The inbox: the user's conversations in the sidebar (GET /conversations/, most recent activity
// first), each with its title (a group) or the peer's name (a direct chat), the last message
// and an unread badge. The server's `unread` is the starting point; message frames and read
// marks keep it up to date. Each entry remembers the highest message id it has counted
// (`seen`), so a message replayed after `since` that the server already counted is not counted
// again. Membership events are group.js's; they land here through upsertConv and markLeft.

import { api } from './api.js';
import { openChat } from './conversation.js';
import { ensureUser } from './people.js';
import { myId, nameOf, state } from './state.js';
import { $, h, paintAvatar, shortTime, showError } from './view.js';

/** Conversations asked for at once: the inbox's first page. */
const INBOX_LIMIT = 200;

/** Loads the inbox; the server's unread counts replace the page's. */
export async function loadInbox() {
  if (!state.session) return;
  const session = state.session;
  try {
    const list = await api('GET', `conversations/?user_id=${myId()}&limit=${INBOX_LIMIT}`);
    if (state.session !== session) return;
    for (const summary of list) {
      const entry = upsertConv(summary);
      // What is on screen is read (its read frame may still be on the way).
      if (entry.id === state.convId) entry.unread = 0;
      // Nothing unread: the read mark is at least at the newest message, so no read frame is due for it.
      if (entry.kind === 'group' && entry.unread === 0 && entry.last_message) {
        state.groupReadSent.set(entry.id, Math.max(state.groupReadSent.get(entry.id) || 0, entry.last_message.id));
      }
    }
    state.inboxLoaded = true;
    $('inbox').dataset.state = 'ready';
    renderInbox();
  } catch (e) {
    if (e.status !== 401) showError(`Could not load your conversations: ${e.message}`);
  }
}

/**
 * Adds or refreshes a conversation from a summary (the inbox) or a Conversation (an event, a
 * created group, GET /conversations/{id}). Returns the entry.
 */
export function upsertConv(c) {
  const me = myId();
  let entry = state.convs.get(c.id);
  if (!entry) {
    entry = { id: c.id, kind: c.kind, title: null, peer_id: null, member_count: 0, members: null, last_message: null, unread: 0, seen: 0, left: false };
    state.convs.set(c.id, entry);
  }
  entry.kind = c.kind || entry.kind;
  if (c.title !== undefined) entry.title = c.title;
  if (c.created_at) entry.created_at = c.created_at;
  if (Array.isArray(c.members)) {
    entry.members = c.members;
    entry.member_count = c.members.length;
    entry.left = !c.members.some((m) => m.user_id === me);
    for (const m of c.members) if (m.user_id !== me) ensureUser(m.user_id);
  }
  if (typeof c.member_count === 'number') entry.member_count = c.member_count;
  if (typeof c.peer_id === 'number') entry.peer_id = c.peer_id;
  else if (entry.kind === 'direct' && entry.members) {
    const other = entry.members.find((m) => m.user_id !== me);
    if (other) entry.peer_id = other.user_id;
  }
  if (entry.kind === 'direct' && entry.peer_id !== null) {
    state.directByPeer.set(entry.peer_id, entry.id);
    ensureUser(entry.peer_id);
  }
  if (typeof c.unread === 'number') entry.unread = c.unread;
  if (c.last_message) noteLast(entry, c.last_message);
  return entry;
}

function noteLast(entry, m) {
  if (!entry.last_message || m.id > entry.last_message.id) entry.last_message = m;
  if (m.id > entry.seen) entry.seen = m.id;
}

/**
 * A message (frame, ack, history) of conversation `m.conversation_id`: it becomes the entry's
 * preview if newer. Returns whether the inbox had not counted it yet. A conversation the page
 * did not know is added (a direct one from the message itself, a group fetched).
 */
export function noteMessage(m) {
  if (typeof m.conversation_id !== 'number') return false;
  let entry = state.convs.get(m.conversation_id);
  if (!entry) {
    const me = myId();
    const direct = m.receiver_id !== null && m.receiver_id !== undefined;
    entry = upsertConv({
      id: m.conversation_id,
      kind: direct ? 'direct' : 'group',
      title: null,
      peer_id: direct ? (m.sender_id === me ? m.receiver_id : m.sender_id) : undefined,
    });
    if (!direct) fetchConversation(m.conversation_id);
  }
  const fresh = m.id > entry.seen;
  noteLast(entry, m);
  return fresh;
}

/** Asks for one conversation (its title and members) and files it. */
export async function fetchConversation(id) {
  try {
    const c = await api('GET', `conversations/${id}?user_id=${myId()}`);
    const entry = upsertConv(c);
    renderInbox();
    return entry;
  } catch (e) {
    if (e.status === 404) markLeft(id);
    return null;
  }
}

export function addUnread(id) {
  const entry = state.convs.get(id);
  if (!entry) return;
  entry.unread += 1;
  updateConvItem(id);
  updateTitle();
}

export function clearUnread(id) {
  const entry = state.convs.get(id);
  if (!entry || entry.unread === 0) return;
  entry.unread = 0;
  updateConvItem(id);
  updateTitle();
}

/** The user is no longer a member (removed, or left): the group leaves the inbox. */
export function markLeft(id) {
  const entry = state.convs.get(id);
  if (entry) {
    entry.left = true;
    entry.unread = 0;
  }
  const item = state.convItems.get(id);
  if (item) item.remove();
  state.convItems.delete(id);
  updateTitle();
}

export function convTitle(entry) {
  if (!entry) return '';
  if (entry.kind === 'group') return entry.title || 'Group';
  return entry.peer_id === null ? 'Conversation' : nameOf(entry.peer_id);
}

function activity(entry) {
  const t = Date.parse(entry.last_message ? entry.last_message.timestamp : entry.created_at);
  return Number.isNaN(t) ? 0 : t;
}

export function renderInbox() {
  const list = $('inbox');
  const filter = $('search').value.trim().toLowerCase();
  const entries = [...state.convs.values()].filter((e) => !e.left);
  entries.sort((a, b) => activity(b) - activity(a) || b.id - a.id);
  let visible = 0;
  entries.forEach((entry, index) => {
    let item = state.convItems.get(entry.id);
    if (!item) {
      item = buildConvItem(entry.id);
      state.convItems.set(entry.id, item);
    }
    updateConvItem(entry.id);
    const match = !filter || convTitle(entry).toLowerCase().includes(filter);
    item.hidden = !match;
    if (match) visible += 1;
    if (list.children[index] !== item) list.insertBefore(item, list.children[index] || null);
  });
  $('inbox-empty').hidden = visible > 0 || Boolean(filter) || !state.inboxLoaded;
  updateTitle();
}

function buildConvItem(id) {
  return h(
    'button',
    { type: 'button', class: 'user conv', dataset: { testid: 'conversation-item', conversationId: String(id) }, onclick: () => openChat({ conversationId: id }) },
    h('span', { class: 'avatar-wrap' }, h('span', { class: 'avatar' }), h('span', { class: 'presence', dataset: { online: 'false' } })),
    h('span', { class: 'user-text' }, h('span', { class: 'user-name', dataset: { testid: 'conversation-title' } }), h('span', { class: 'user-sub', dataset: { testid: 'conversation-preview' } })),
    h('span', { class: 'user-side' }, h('span', { class: 'user-time' }), h('span', { class: 'badge', dataset: { testid: 'unread-badge' }, hidden: true })),
  );
}

/** Who is typing in the conversation, as the inbox and the typing line say it (or ''). */
export function typingText(entry, long) {
  if (!entry) return '';
  if (entry.kind === 'direct') {
    if (!state.typingUntil.has(entry.peer_id)) return '';
    return long ? `${nameOf(entry.peer_id)} is typing…` : 'typing…';
  }
  const who = [...(state.groupTyping.get(entry.id) || new Map()).keys()].map(nameOf);
  if (!who.length) return '';
  if (who.length === 1) return `${who[0]} is typing…`;
  if (who.length === 2) return `${who[0]} and ${who[1]} are typing…`;
  return `${who.length} people are typing…`;
}

export function updateConvItem(id) {
  const item = state.convItems.get(id);
  const entry = state.convs.get(id);
  if (!item || !entry) return;
  const me = myId();
  item.dataset.kind = entry.kind;
  if (entry.peer_id !== null) item.dataset.peerId = String(entry.peer_id);
  item.classList.toggle('active', id === state.convId);
  const avatar = item.querySelector('.avatar');
  if (entry.kind === 'direct') paintAvatar(avatar, state.users.get(entry.peer_id) || { id: entry.peer_id });
  else paintAvatar(avatar, { id: -entry.id, display_name: convTitle(entry) });
  const dot = item.querySelector('.presence');
  const presence = entry.kind === 'direct' ? state.presence.get(entry.peer_id) : null;
  dot.hidden = entry.kind !== 'direct';
  dot.dataset.online = String(Boolean(presence && presence.online));
  item.querySelector('.user-name').textContent = convTitle(entry);
  const sub = item.querySelector('.user-sub');
  const typing = typingText(entry, false);
  const m = entry.last_message;
  sub.classList.toggle('typing-sub', Boolean(typing));
  if (typing) sub.textContent = typing;
  else if (!m) sub.textContent = entry.kind === 'group' ? `${entry.member_count} members` : '';
  else if (m.sender_id === me) sub.textContent = `You: ${m.content}`;
  else sub.textContent = entry.kind === 'group' ? `${nameOf(m.sender_id)}: ${m.content}` : m.content;
  item.querySelector('.user-time').textContent = m ? shortTime(m.timestamp) : '';
  const badge = item.querySelector('.badge');
  badge.hidden = entry.unread === 0;
  badge.textContent = entry.unread > 99 ? '99+' : String(entry.unread);
}

export function updateAllConvItems() {
  state.convItems.forEach((_, id) => updateConvItem(id));
}

/** The direct conversation with `peer` changed (presence, name, typing). */
export function updatePeerConv(peer) {
  const id = state.directByPeer.get(peer);
  if (id !== undefined) updateConvItem(id);
}

export function updateTitle() {
  let total = 0;
  state.convs.forEach((e) => (total += e.left ? 0 : e.unread));
  document.title = total ? `(${total}) Minichat` : 'Minichat';
}
