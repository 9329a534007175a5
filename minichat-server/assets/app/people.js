// The people: the directory in the sidebar (search, previews, unread badges, presence dots),
// the open peer's header, and presence. The page watches the presence of everyone it lists;
// how many one connection may watch is the server's rule, answered with an error frame.

import { api } from './api.js';
import { openConversation } from './conversation.js';
import { displayName, myId, nameOf, state } from './state.js';
import { isReady, sendFrame } from './stream.js';
import { $, h, lastSeenText, paintAvatar, shortTime, showError } from './view.js';

/** Ids this connection has asked to watch (a new socket watches nobody). */
const watched = new Set();

/** How long typing must pause before the directory is asked (ms). */
const SEARCH_DEBOUNCE_MS = 250;
/** People asked for per search: the first page of matches. */
const SEARCH_LIMIT = 50;
let searchTimer = null;
/** Counts searches, so a slow answer to an older search cannot replace a newer one's. */
let searchGeneration = 0;

/** The first page of the directory (the server's default page), for an empty search box. */
export async function loadUsers() {
  if (!state.session) return;
  try {
    merge(await api('GET', 'users/'));
  } catch (e) {
    if (e.status !== 401) showError(`Could not load people: ${e.message}`);
  }
}

/** Typing in the search box: filter who is known now, then ask the server once typing pauses. */
export function onSearchInput() {
  renderUsers();
  clearTimeout(searchTimer);
  const q = $('search').value.trim();
  if (q) searchTimer = setTimeout(() => searchUsers(q), SEARCH_DEBOUNCE_MS);
}

async function searchUsers(q) {
  if (!state.session) return;
  const generation = ++searchGeneration;
  try {
    const found = await api('GET', `users/?q=${encodeURIComponent(q)}&limit=${SEARCH_LIMIT}`);
    if (generation === searchGeneration) merge(found);
  } catch (e) {
    if (e.status !== 401) showError(`Could not search people: ${e.message}`);
  }
}

/** Adds users the page did not know (or refreshes those it did), then lists and watches them. */
function merge(list) {
  if (!state.session) return;
  const before = new Set(state.users.keys());
  let added = false;
  for (const user of list) {
    state.users.set(user.id, user);
    if (!before.has(user.id)) added = true;
  }
  renderUsers();
  if (added) sendWatch();
}

/** Whether `user` matches the search box as the server's search does: a prefix of either name. */
function matchesSearch(user, filter) {
  return user.username.toLowerCase().startsWith(filter) || (user.display_name || '').toLowerCase().startsWith(filter);
}

/** Learns about a user first seen in a message (signed up after the list was loaded). */
export async function ensureUser(id, hint) {
  if (state.users.has(id)) return;
  state.users.set(id, { id, username: hint || `user${id}`, display_name: hint || `User ${id}` });
  renderUsers();
  sendWatch();
  try {
    const user = await api('GET', `users/${id}`);
    state.users.set(id, user);
    renderUsers();
    if (id === state.peerId) renderPeerHeader();
  } catch {
    /* the placeholder will do */
  }
}

function userSortKey(id) {
  const p = state.preview.get(id);
  return p ? Date.parse(p.timestamp) || 0 : 0;
}

export function renderUsers() {
  const list = $('users');
  const me = myId();
  const filter = $('search').value.trim().toLowerCase();
  const ids = [...state.users.keys()].filter((id) => id !== me);
  ids.sort((a, b) => {
    const d = userSortKey(b) - userSortKey(a);
    if (d) return d;
    return nameOf(a).localeCompare(nameOf(b), undefined, { sensitivity: 'base' }) || a - b;
  });
  let visible = 0;
  ids.forEach((id, index) => {
    let item = state.userItems.get(id);
    if (!item) {
      item = buildUserItem(id);
      state.userItems.set(id, item);
    }
    updateUserItem(id);
    const user = state.users.get(id);
    const match = !filter || matchesSearch(user, filter);
    item.hidden = !match;
    if (match) visible += 1;
    if (list.children[index] !== item) list.insertBefore(item, list.children[index] || null);
  });
  $('users-empty').hidden = visible > 0 || Boolean(filter);
  updateTitle();
}

function buildUserItem(id) {
  return h(
    'button',
    { type: 'button', class: 'user', dataset: { testid: 'user-item', userId: String(id) }, onclick: () => openConversation(id) },
    h('span', { class: 'avatar-wrap' }, h('span', { class: 'avatar' }), h('span', { class: 'presence', dataset: { testid: 'presence-dot', online: 'false' } })),
    h('span', { class: 'user-text' }, h('span', { class: 'user-name' }), h('span', { class: 'user-sub' })),
    h('span', { class: 'user-side' }, h('span', { class: 'user-time' }), h('span', { class: 'badge', dataset: { testid: 'unread-badge' }, hidden: true })),
  );
}

export function updateUserItem(id) {
  const item = state.userItems.get(id);
  const user = state.users.get(id);
  if (!item || !user) return;
  item.dataset.username = user.username || '';
  item.classList.toggle('active', id === state.peerId);
  paintAvatar(item.querySelector('.avatar'), user);
  item.querySelector('.user-name').textContent = displayName(user);
  const presence = state.presence.get(id);
  const dot = item.querySelector('.presence');
  dot.dataset.online = String(Boolean(presence && presence.online));
  dot.title = presence ? (presence.online ? 'online' : lastSeenText(presence)) : '';
  const sub = item.querySelector('.user-sub');
  const preview = state.preview.get(id);
  if (state.typingUntil.has(id)) {
    sub.textContent = 'typing…';
    sub.classList.add('typing-sub');
  } else {
    sub.classList.remove('typing-sub');
    sub.textContent = preview ? `${preview.mine ? 'You: ' : ''}${preview.text}` : `@${user.username}`;
  }
  item.querySelector('.user-time').textContent = preview ? shortTime(preview.timestamp) : '';
  const count = state.unread.get(id) || 0;
  const badge = item.querySelector('.badge');
  badge.hidden = count === 0;
  badge.textContent = count > 99 ? '99+' : String(count);
}

export function updateAllUserItems() {
  state.userItems.forEach((_, id) => updateUserItem(id));
}

export function updateTitle() {
  let total = 0;
  state.unread.forEach((n) => (total += n));
  document.title = total ? `(${total}) Minichat` : 'Minichat';
}

export function renderPeerHeader() {
  const id = state.peerId;
  if (id === null) return;
  const user = state.users.get(id);
  paintAvatar($('peer-avatar'), user || { id });
  $('peer-name').textContent = nameOf(id);
  $('peer-name').title = user ? `@${user.username}` : '';
  const presence = state.presence.get(id);
  const status = $('peer-status');
  status.textContent = presence ? lastSeenText(presence) : user ? `@${user.username}` : '';
  status.classList.toggle('online', Boolean(presence && presence.online));
}

// ---------------------------------------------------------------------------------------------
// Presence

/**
 * Subscribes this connection to the presence of everyone listed that it does not watch yet.
 * Past the server's cap the server answers an error frame, shown like any other; those people
 * are not asked for again on this connection.
 */
export function sendWatch() {
  if (!isReady()) return;
  const ids = [...state.users.keys()].filter((id) => id !== myId() && !watched.has(id));
  if (ids.length && sendFrame({ type: 'watch', user_ids: ids })) ids.forEach((id) => watched.add(id));
}

/** A new socket watches nobody: ask again for everyone. */
export function watchAfresh() {
  watched.clear();
  sendWatch();
}

/** Offline ourselves, we no longer know who is online; the next watch answers afresh. */
export function forgetPresence() {
  state.presence.clear();
  updateAllUserItems();
  renderPeerHeader();
}

export function onPresence(frame) {
  if (typeof frame.user_id !== 'number') return;
  state.presence.set(frame.user_id, { online: Boolean(frame.online), last_seen: frame.last_seen || null });
  updateUserItem(frame.user_id);
  if (frame.user_id === state.peerId) renderPeerHeader();
}
