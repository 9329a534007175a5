// The people: the directory in the sidebar (search, presence dots), the "new chat" picker
// under the inbox (a click opens the direct chat with that person), the open peer's header,
// and presence. The page watches the presence of everyone it lists; how many one connection
// may watch is the server's rule, answered with an error frame.

import { api } from './api.js';
import { openChat } from './conversation.js';
import { renderInbox, updateAllConvItems, updatePeerConv } from './inbox.js';
import { displayName, myId, nameOf, state } from './state.js';
import { isReady, sendFrame } from './stream.js';
import { $, h, lastSeenText, paintAvatar, showError } from './view.js';

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
    mergeUsers(await api('GET', 'users/'));
  } catch (e) {
    if (e.status !== 401) showError(`Could not load people: ${e.message}`);
  }
}

/** Typing in the search box: filter who is known now, then ask the server once typing pauses. */
export function onSearchInput() {
  renderUsers();
  renderInbox();
  clearTimeout(searchTimer);
  const q = $('search').value.trim();
  if (q) searchTimer = setTimeout(() => searchUsers(q), SEARCH_DEBOUNCE_MS);
}

async function searchUsers(q) {
  if (!state.session) return;
  const generation = ++searchGeneration;
  try {
    const found = await api('GET', `users/?q=${encodeURIComponent(q)}&limit=${SEARCH_LIMIT}`);
    if (generation === searchGeneration) mergeUsers(found);
  } catch (e) {
    if (e.status !== 401) showError(`Could not search people: ${e.message}`);
  }
}

/** Adds users the page did not know (or refreshes those it did), then lists and watches them. */
export function mergeUsers(list) {
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

/**
 * Learns about a user first seen in a message or a conversation (signed up after the list was
 * loaded, or a group's member): a placeholder at once (named by `hint`, the message's
 * sender_username), then the server's answer.
 */
export async function ensureUser(id, hint) {
  if (typeof id !== 'number' || id === myId() || state.users.has(id)) return;
  state.users.set(id, { id, username: hint || `user${id}`, display_name: hint || `User ${id}` });
  learned(id);
  sendWatch();
  try {
    const user = await api('GET', `users/${id}`);
    if (!state.session) return;
    state.users.set(id, user);
    learned(id);
  } catch {
    /* the placeholder will do */
  }
}

function learned(id) {
  renderUsers();
  renderInbox();
  if (id === state.peerId) renderPeerHeader();
  onUserLearned(id);
}

/** What else shows names (group.js: the member list, senders): told when a user is learned. */
let onUserLearned = () => {};
export function onUserLearnedDo(handler) {
  onUserLearned = handler;
}

export function renderUsers() {
  const list = $('users');
  const me = myId();
  const filter = $('search').value.trim().toLowerCase();
  const ids = [...state.users.keys()].filter((id) => id !== me);
  ids.sort((a, b) => nameOf(a).localeCompare(nameOf(b), undefined, { sensitivity: 'base' }) || a - b);
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
}

function buildUserItem(id) {
  return h(
    'button',
    { type: 'button', class: 'user', dataset: { testid: 'user-item', userId: String(id) }, onclick: () => openChat({ peerId: id }) },
    h('span', { class: 'avatar-wrap' }, h('span', { class: 'avatar' }), h('span', { class: 'presence', dataset: { testid: 'presence-dot', online: 'false' } })),
    h('span', { class: 'user-text' }, h('span', { class: 'user-name' }), h('span', { class: 'user-sub' })),
  );
}

export function updateUserItem(id) {
  const item = state.userItems.get(id);
  const user = state.users.get(id);
  if (!item || !user) return;
  item.dataset.username = user.username || '';
  item.classList.toggle('active', id === state.peerId && state.convId === null);
  paintAvatar(item.querySelector('.avatar'), user);
  item.querySelector('.user-name').textContent = displayName(user);
  const presence = state.presence.get(id);
  const dot = item.querySelector('.presence');
  dot.dataset.online = String(Boolean(presence && presence.online));
  dot.title = presence ? (presence.online ? 'online' : lastSeenText(presence)) : '';
  item.querySelector('.user-sub').textContent = `@${user.username}`;
  updatePeerConv(id);
}

export function updateAllUserItems() {
  state.userItems.forEach((_, id) => updateUserItem(id));
  updateAllConvItems();
}

/** The open direct chat's header: the peer's name and presence (a group's is group.js's). */
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
