// The open conversation, a direct chat or a group: its history by conversation_id (pages of
// 50, oldest loaded on demand; a direct chat not started yet is read by chat_with), messages
// placed in id order and each shown once whatever path it came by (history, replay, live,
// ack), day separators and runs, the sender's name on others' messages in a group, and the
// message frames that feed it and the inbox.

import { api } from './api.js';
import { closeMembers, loadMembers, renderGroupHeader } from './group.js';
import { addUnread, clearUnread, noteMessage, renderInbox, updateAllConvItems } from './inbox.js';
import { adoptPending, discardPending, renderPending, retryPending } from './outbox.js';
import { ensureUser, renderPeerHeader, updateAllUserItems } from './people.js';
import { applyReceipt, loadReadState, maybeSendRead, renderTyping, stopTyping } from './receipts.js';
import { keyOpen, myId, nameOf, openConv, state, store } from './state.js';
import { $, autosize, dayLabel, fullFmt, h, isNearBottom, scrollToBottom, showError, timeFmt } from './view.js';

const HISTORY_PAGE = 50;

/** The history query of the open conversation: by its id, or (not started yet) by the peer. */
function historyQuery() {
  return state.convId !== null ? `conversation_id=${state.convId}` : `chat_with=${state.peerId}`;
}

/**
 * Opens a conversation: `{conversationId}` (from the inbox) or `{peerId}` (the direct chat with
 * someone from the directory, which may not exist yet: it is made by the first message).
 */
export async function openChat({ conversationId = null, peerId = null }) {
  if (!state.session) return;
  if (conversationId !== null) {
    const entry = state.convs.get(conversationId);
    peerId = entry && entry.kind === 'direct' ? entry.peer_id : null;
  } else if (peerId !== null) {
    if (peerId === myId()) return;
    conversationId = state.directByPeer.has(peerId) ? state.directByPeer.get(peerId) : null;
  } else {
    return;
  }
  const switching = state.convId !== conversationId || state.peerId !== peerId;
  state.convId = conversationId;
  state.peerId = peerId;
  store.set(keyOpen(myId()), { conversation_id: conversationId, peer_id: peerId });
  if (conversationId !== null) clearUnread(conversationId);
  $('chat').classList.add('has-peer');
  $('empty-state').hidden = true;
  $('conversation').hidden = false;
  $('conversation').dataset.kind = peerId === null ? 'group' : 'direct';
  updateAllUserItems();
  renderHeader();
  renderTyping();
  renderMembership();
  if (!switching && state.shown.size) return;
  closeMembers();
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
  if (peerId !== null) loadReadState(peerId);
  else loadMembers(conversationId);
  try {
    const page = await api('GET', `messages/?user_id=${myId()}&${historyQuery()}&limit=${HISTORY_PAGE}`);
    if (token !== state.historyToken) return;
    if (page.length && state.convId === null) learnConversation(page[0].conversation_id);
    for (const m of page.slice().reverse()) insertMessage(m);
    state.hasOlder = page.length === HISTORY_PAGE;
    note.hidden = true;
    note.textContent = '';
    $('conversation').dataset.state = 'ready';
    if (page.length === 0) {
      const whom = peerId !== null ? `your conversation with ${nameOf(peerId)}` : `${$('peer-name').textContent}`;
      note.textContent = `This is the beginning of ${whom}. Say hi!`;
      note.hidden = false;
    }
    if (page.length) noteMessage(page[0]);
  } catch (e) {
    if (token !== state.historyToken) return;
    note.textContent = `Could not load messages: ${e.message}`;
    note.hidden = false;
    $('conversation').dataset.state = 'error';
  }
  for (const entry of state.outbox) renderPending(entry);
  $('load-older').hidden = !state.hasOlder;
  regroup();
  scrollToBottom();
  renderInbox();
  maybeSendRead();
}

/** The open direct chat turned out to have (or now has) conversation `id`. */
function learnConversation(id) {
  if (typeof id !== 'number' || state.convId !== null) return;
  state.convId = id;
  if (state.peerId !== null) state.directByPeer.set(state.peerId, id);
  store.set(keyOpen(myId()), { conversation_id: id, peer_id: state.peerId });
}

/** Whether message `m` belongs to the open conversation (learning the id of a new direct one). */
export function isOpenMessage(m) {
  if (state.convId !== null) return m.conversation_id === state.convId;
  if (state.peerId === null || m.receiver_id === null || m.receiver_id === undefined) return false;
  const me = myId();
  const peer = m.sender_id === me ? m.receiver_id : m.sender_id;
  if (peer !== state.peerId || (m.sender_id !== me && m.receiver_id !== me)) return false;
  learnConversation(m.conversation_id);
  return true;
}

export function renderHeader() {
  if (state.peerId !== null) renderPeerHeader();
  else if (state.convId !== null) renderGroupHeader();
}

/** A group the user was removed from (or left) stays on screen, read-only, until another is opened. */
export function renderMembership() {
  const entry = openConv();
  const left = Boolean(entry && entry.left);
  $('composer-input').disabled = left;
  $('send').disabled = left;
  $('left-note').hidden = !left;
}

export function closeConversation() {
  state.convId = null;
  state.peerId = null;
  state.historyToken += 1;
  closeMembers();
  $('chat').classList.remove('has-peer');
  $('conversation').hidden = true;
  $('empty-state').hidden = false;
  updateAllUserItems();
  updateAllConvItems();
}

export async function loadOlder() {
  if (state.loadingOlder || !state.hasOlder || state.oldestId === null) return;
  state.loadingOlder = true;
  const button = $('load-older');
  button.disabled = true;
  button.textContent = 'Loading…';
  const token = state.historyToken;
  const pane = $('messages');
  try {
    const page = await api(
      'GET',
      `messages/?user_id=${myId()}&${historyQuery()}&limit=${HISTORY_PAGE}&before_id=${state.oldestId}`,
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
  const group = m.receiver_id === null;
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
      group && !mine ? h('div', { class: 'sender', dataset: { testid: 'message-sender', senderId: String(m.sender_id) }, text: nameOf(m.sender_id) }) : null,
      h('div', { class: 'text', dataset: { testid: 'message-text' }, text: m.content }),
      h(
        'div',
        { class: 'meta' },
        mine && group ? h('span', { class: 'readers', dataset: { testid: 'message-readers' } }) : null,
        h('time', { datetime: m.timestamp, title: Number.isNaN(when.getTime()) ? '' : fullFmt.format(when), text: Number.isNaN(when.getTime()) ? '' : timeFmt.format(when) }),
        mine ? h('span', { class: 'tick', dataset: { testid: 'message-status' } }) : null,
      ),
    ),
  );
  if (mine) applyReceipt(node, m);
  return node;
}

/** A user's name was learned: the group messages they sent say it. */
export function refreshSenderNames(id) {
  for (const el of $('message-list').querySelectorAll(`.sender[data-sender-id="${id}"]`)) el.textContent = nameOf(id);
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

/** A message frame (live or replayed after `since`). */
export function onMessage(m) {
  const me = myId();
  const direct = m.receiver_id !== null && m.receiver_id !== undefined;
  if (direct && m.sender_id !== me && m.receiver_id !== me) return;
  if (m.sender_id !== me) ensureUser(m.sender_id, m.sender_username);
  if (direct) ensureUser(m.sender_id === me ? m.receiver_id : m.sender_id);
  const fresh = noteMessage(m);
  if (m.sender_id === me) adoptPending(m);
  stopTyping(m.sender_id, m.conversation_id);
  if (isOpenMessage(m)) {
    const stick = isNearBottom();
    if (insertMessage(m)) {
      regroup();
      if (stick || m.sender_id === me) scrollToBottom();
      else $('jump').hidden = false;
    }
    maybeSendRead();
  } else if (m.sender_id !== me && fresh) {
    addUnread(m.conversation_id);
  }
  renderInbox();
}
