// The open conversation: its history (pages of 50, oldest loaded on demand), messages placed
// in id order and each shown once whatever path it came by (history, replay, live, ack), day
// separators and runs, and the message frames that feed it and the sidebar's previews.

import { api } from './api.js';
import { adoptPending, discardPending, renderPending, retryPending } from './outbox.js';
import { ensureUser, renderPeerHeader, renderUsers, updateAllUserItems, updateTitle } from './people.js';
import { loadReadState, maybeSendRead, renderTyping, stopTyping } from './receipts.js';
import { keyPeer, myId, nameOf, state, store } from './state.js';
import { $, autosize, dayLabel, fullFmt, h, isNearBottom, scrollToBottom, showError, timeFmt } from './view.js';

const HISTORY_PAGE = 50;

export async function openConversation(id) {
  if (!state.session || id === myId()) return;
  const switching = state.peerId !== id;
  state.peerId = id;
  store.set(keyPeer(myId()), id);
  state.unread.delete(id);
  $('chat').classList.add('has-peer');
  $('empty-state').hidden = true;
  $('conversation').hidden = false;
  updateAllUserItems();
  updateTitle();
  renderPeerHeader();
  renderTyping();
  if (!switching && state.shown.size) return;
  state.shown.clear();
  state.pendingEls.clear();
  state.oldestId = null;
  state.hasOlder = false;
  state.lastTypingSent = 0;
  $('message-list').replaceChildren();
  $('load-older').hidden = true;
  $('jump').hidden = true;
  const note = $('history-note');
  note.textContent = 'Loading messages…';
  note.hidden = false;
  $('conversation').dataset.state = 'loading';
  const input = $('composer-input');
  input.value = '';
  autosize();
  if (window.innerWidth > 760) input.focus();
  const token = ++state.historyToken;
  loadReadState(id);
  try {
    const page = await api('GET', `messages/?user_id=${myId()}&chat_with=${id}&limit=${HISTORY_PAGE}`);
    if (token !== state.historyToken) return;
    for (const m of page.slice().reverse()) insertMessage(m);
    state.hasOlder = page.length === HISTORY_PAGE;
    note.hidden = true;
    note.textContent = '';
    $('conversation').dataset.state = 'ready';
    if (page.length === 0) {
      note.textContent = `This is the beginning of your conversation with ${nameOf(id)}. Say hi!`;
      note.hidden = false;
    }
    if (page.length) notePreview(id, page[0]);
  } catch (e) {
    if (token !== state.historyToken) return;
    note.textContent = `Could not load messages: ${e.message}`;
    note.hidden = false;
    $('conversation').dataset.state = 'error';
  }
  for (const entry of state.outbox) if (entry.receiver_id === id) renderPending(entry);
  $('load-older').hidden = !state.hasOlder;
  regroup();
  scrollToBottom();
  maybeSendRead();
}

export function closeConversation() {
  state.peerId = null;
  state.historyToken += 1;
  $('chat').classList.remove('has-peer');
  $('conversation').hidden = true;
  $('empty-state').hidden = false;
  updateAllUserItems();
}

export async function loadOlder() {
  if (state.loadingOlder || !state.hasOlder || state.oldestId === null) return;
  state.loadingOlder = true;
  const button = $('load-older');
  button.disabled = true;
  button.textContent = 'Loading…';
  const peer = state.peerId;
  const token = state.historyToken;
  const pane = $('messages');
  try {
    const page = await api(
      'GET',
      `messages/?user_id=${myId()}&chat_with=${peer}&limit=${HISTORY_PAGE}&before_id=${state.oldestId}`,
    );
    if (token !== state.historyToken) return;
    const before = pane.scrollHeight;
    for (const m of page) insertMessage(m);
    state.hasOlder = page.length === HISTORY_PAGE;
    regroup();
    pane.scrollTop += pane.scrollHeight - before;
  } catch (e) {
    showError(`Could not load older messages: ${e.message}`);
  } finally {
    state.loadingOlder = false;
    button.disabled = false;
    button.textContent = 'Load older messages';
    button.hidden = !state.hasOlder;
  }
}

export function buildMessage(m) {
  const mine = m.sender_id === myId();
  const when = new Date(m.timestamp);
  const node = h(
    'div',
    {
      class: `msg ${mine ? 'mine' : 'theirs'}`,
      dataset: { testid: 'message', id: String(m.id), senderId: String(m.sender_id), ts: m.timestamp },
    },
    h(
      'div',
      { class: 'bubble' },
      h('div', { class: 'text', dataset: { testid: 'message-text' }, text: m.content }),
      h(
        'div',
        { class: 'meta' },
        h('time', { datetime: m.timestamp, title: Number.isNaN(when.getTime()) ? '' : fullFmt.format(when), text: Number.isNaN(when.getTime()) ? '' : timeFmt.format(when) }),
        mine ? h('span', { class: 'tick', dataset: { testid: 'message-status' } }) : null,
      ),
    ),
  );
  if (mine) setStatus(node, (state.readUpTo.get(m.receiver_id) || 0) >= m.id ? 'read' : 'sent');
  return node;
}

/** pending (a CSS clock), sent ✓, read ✓✓ or failed (with the error, Retry and Remove). */
export function setStatus(node, status, error) {
  node.dataset.status = status;
  const tick = node.querySelector('.tick');
  if (tick) {
    tick.textContent = { sent: '✓', read: '✓✓', failed: '!' }[status] || '';
    tick.title = { pending: 'Sending…', sent: 'Sent', read: 'Read', failed: 'Not sent' }[status] || '';
  }
  let err = node.querySelector('.msg-error');
  if (status === 'failed') {
    if (!err) {
      err = h('div', { class: 'msg-error', dataset: { testid: 'message-error' } }, h('span', { class: 'msg-error-text' }));
      const clientId = node.dataset.clientId;
      err.append(
        h('button', { type: 'button', class: 'link', text: 'Retry', onclick: () => retryPending(clientId) }),
        h('button', { type: 'button', class: 'link', text: 'Remove', onclick: () => discardPending(clientId) }),
      );
      node.append(err);
    }
    err.querySelector('.msg-error-text').textContent = error || 'Not sent';
  } else if (err) {
    err.remove();
  }
}

/** Puts a stored message into the open conversation in id order, unless it is already shown. */
export function insertMessage(m) {
  if (state.shown.has(m.id)) return false;
  const node = buildMessage(m);
  state.shown.set(m.id, node);
  placeById(node, m.id);
  if (state.oldestId === null || m.id < state.oldestId) state.oldestId = m.id;
  $('history-note').hidden = true;
  return true;
}

export function placeById(node, id) {
  const list = $('message-list');
  // Walk back over pending messages (always last) and newer stored ones.
  let after = list.lastElementChild;
  while (after && (after.dataset.id === undefined || Number(after.dataset.id) > id)) {
    after = after.previousElementSibling;
  }
  list.insertBefore(node, after ? after.nextSibling : list.firstChild);
}

/** Marks day changes and runs of messages from one sender (for the bubble shapes). */
export function regroup() {
  let prev = null;
  for (const node of $('message-list').children) {
    const ts = Date.parse(node.dataset.ts);
    const day = Number.isNaN(ts) ? '' : new Date(ts).toDateString();
    const prevTs = prev ? Date.parse(prev.dataset.ts) : NaN;
    const prevDay = prev && !Number.isNaN(prevTs) ? new Date(prevTs).toDateString() : null;
    if (day && day !== prevDay) node.dataset.day = dayLabel(new Date(ts));
    else delete node.dataset.day;
    const joined =
      prev && prev.dataset.senderId === node.dataset.senderId && day === prevDay && Math.abs(ts - prevTs) < 5 * 60 * 1000;
    node.classList.toggle('cont', Boolean(joined));
    prev = node;
  }
}

export function notePreview(peer, m) {
  const current = state.preview.get(peer);
  if (current && Date.parse(current.timestamp) > Date.parse(m.timestamp)) return;
  state.preview.set(peer, { text: m.content, timestamp: m.timestamp, mine: m.sender_id === myId() });
}

/** A message frame (live or replayed after `since`). */
export function onMessage(m) {
  const me = myId();
  if (m.sender_id !== me && m.receiver_id !== me) return;
  const peer = m.sender_id === me ? m.receiver_id : m.sender_id;
  ensureUser(peer, m.sender_id === me ? null : m.sender_username);
  notePreview(peer, m);
  if (m.sender_id === me) adoptPending(m);
  if (m.sender_id === peer) stopTyping(peer);
  if (peer === state.peerId) {
    const stick = isNearBottom();
    if (insertMessage(m)) {
      regroup();
      if (stick || m.sender_id === me) scrollToBottom();
      else $('jump').hidden = false;
    }
    maybeSendRead();
  } else if (m.sender_id !== me && isAfterLogin(m)) {
    state.unread.set(peer, (state.unread.get(peer) || 0) + 1);
  }
  renderUsers();
}

function isAfterLogin(m) {
  const login = Date.parse(state.session.loginAt);
  const ts = Date.parse(m.timestamp);
  return Number.isNaN(login) || Number.isNaN(ts) || ts >= login - 60000;
}
