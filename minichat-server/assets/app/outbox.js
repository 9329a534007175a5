// Sending: the composer, and the outbox of messages not yet acknowledged. Each has a client_id
// and remembers its conversation (its conversation_id, or for a direct chat not started yet
// the receiver_id), is kept in localStorage until its ack (so a reload or a drop loses
// nothing), is sent again with the same client_id after a reconnect (the server stores it
// once), and on an error frame shows the server's `detail` with Retry and Remove.

import { describeDetail } from './api.js';
import { buildMessage, insertMessage, isOpenMessage, placeById, regroup, setStatus } from './conversation.js';
import { noteMessage, renderInbox } from './inbox.js';
import { applyReceipt, noteTyping } from './receipts.js';
import { isOpen, keyOutbox, myId, newClientId, state, store } from './state.js';
import { sendFrame } from './stream.js';
import { $, autosize, fullFmt, isNearBottom, scrollToBottom, setHint, showError, timeFmt } from './view.js';

/** The longest message the composer lets through (the counter shows near it). */
const MAX_CONTENT = 1000;
const OFFLINE_HINT = 'You are offline: the message will be sent when the connection is back.';

/** The unsent messages stored for `uid`: all may have reached the server before the page closed. */
export function restoreOutbox(uid) {
  state.outbox = (store.get(keyOutbox(uid)) || []).filter((m) => m && m.client_id && (m.conversation_id || m.receiver_id));
  state.outbox.forEach((m) => {
    m.transmitted = true;
    if (m.status !== 'failed') m.status = 'pending';
  });
}

function saveOutbox() {
  const uid = myId();
  if (uid === null) return;
  store.set(
    keyOutbox(uid),
    state.outbox.map(({ client_id, conversation_id, receiver_id, content, created, status, error }) => ({
      client_id,
      conversation_id,
      receiver_id,
      content,
      created,
      status,
      error,
    })),
  );
}

/** Whether the unsent `entry` belongs to the open conversation. */
function isOpenEntry(entry) {
  if (entry.conversation_id) return entry.conversation_id === state.convId;
  return entry.receiver_id === state.peerId && state.peerId !== null;
}

export function renderPending(entry) {
  if (!isOpenEntry(entry) || state.pendingEls.has(entry.client_id)) return;
  const conv = entry.conversation_id ? state.convs.get(entry.conversation_id) : null;
  const node = buildMessage({
    id: undefined,
    sender_id: myId(),
    receiver_id: entry.receiver_id || (conv && conv.kind === 'direct' ? conv.peer_id : null),
    conversation_id: entry.conversation_id,
    content: entry.content,
    timestamp: entry.created,
  });
  delete node.dataset.id;
  node.dataset.clientId = entry.client_id;
  setStatus(node, entry.status === 'failed' ? 'failed' : 'pending', entry.error);
  state.pendingEls.set(entry.client_id, node);
  $('message-list').append(node);
  $('history-note').hidden = true;
}

function transmit(entry) {
  const frame = entry.conversation_id
    ? { type: 'message', conversation_id: entry.conversation_id, content: entry.content, client_id: entry.client_id }
    : { type: 'message', receiver_id: entry.receiver_id, content: entry.content, client_id: entry.client_id };
  if (!sendFrame(frame)) return false;
  entry.transmitted = true;
  return true;
}

export function onComposerInput() {
  autosize();
  const len = $('composer-input').value.trim().length;
  if (len > MAX_CONTENT - 100) setHint(`${len} / ${MAX_CONTENT}`);
  else if (/^\d+ \/ \d+$/.test($('composer-hint').textContent)) setHint('');
  if (len) noteTyping();
}

export function onSend(event) {
  event.preventDefault();
  const input = $('composer-input');
  const content = input.value.trim();
  if (!content || !isOpen()) return;
  const open = state.convId !== null ? state.convs.get(state.convId) : null;
  if (open && open.left) return;
  if (content.length > MAX_CONTENT) {
    showError(`Messages can be at most ${MAX_CONTENT} characters (this one has ${content.length}).`);
    return;
  }
  const entry = {
    client_id: newClientId(),
    ...(state.convId !== null ? { conversation_id: state.convId } : { receiver_id: state.peerId }),
    content,
    created: new Date().toISOString(),
    status: 'pending',
    error: null,
    transmitted: false,
  };
  state.outbox.push(entry);
  saveOutbox();
  renderPending(entry);
  regroup();
  scrollToBottom();
  input.value = '';
  autosize();
  state.lastTypingSent = 0;
  if (!transmit(entry)) setHint(OFFLINE_HINT);
}

function finishPending(entry, message) {
  state.outbox = state.outbox.filter((e) => e !== entry);
  saveOutbox();
  const node = state.pendingEls.get(entry.client_id);
  state.pendingEls.delete(entry.client_id);
  noteMessage(message);
  if (!node) {
    if (isOpenMessage(message)) insertMessage(message);
    return;
  }
  if (state.shown.has(message.id)) {
    node.remove(); // already shown (from history or a replay)
    return;
  }
  node.remove();
  node.dataset.id = String(message.id);
  node.dataset.ts = message.timestamp;
  delete node.dataset.clientId;
  const time = node.querySelector('time');
  const when = new Date(message.timestamp);
  if (!Number.isNaN(when.getTime())) {
    time.dateTime = message.timestamp;
    time.textContent = timeFmt.format(when);
    time.title = fullFmt.format(when);
  }
  applyReceipt(node, message);
  state.shown.set(message.id, node);
  placeById(node, message.id);
  if (state.oldestId === null || message.id < state.oldestId) state.oldestId = message.id;
}

export function onAck(frame) {
  const message = frame.message;
  if (!message) return;
  const entry = state.outbox.find((e) => e.client_id === frame.client_id);
  if (entry) {
    finishPending(entry, message);
  } else {
    noteMessage(message);
    if (isOpenMessage(message)) insertMessage(message);
  }
  if (isOpenMessage(message)) {
    regroup();
    if (isNearBottom()) scrollToBottom();
  }
  if (!state.outbox.some((e) => e.status === 'pending')) setHint('');
  renderInbox();
}

/**
 * One of my messages arrived as an event (a replay after reconnecting, or another device):
 * if it carries the client_id of a send this page is still waiting for, it is that send (the
 * server stored it), so it is not shown twice. The match is exact: two identical sends ("ok",
 * "ok") have different client_ids. Every send of this page has one, so a message without one
 * (sent over REST or by a client that gives none) is never one of them.
 */
export function adoptPending(m) {
  if (typeof m.client_id !== 'string') return;
  const entry = state.outbox.find((e) => e.client_id === m.client_id);
  if (entry) finishPending(entry, m);
}

/** An error frame: about one of my messages (its client_id), or anything else (a watch past the cap, a rate limit…). */
export function onErrorFrame(frame) {
  const detail = describeDetail(frame.detail, frame.status);
  const entry = frame.client_id ? state.outbox.find((e) => e.client_id === frame.client_id) : null;
  if (entry) {
    entry.status = 'failed';
    entry.error = detail;
    saveOutbox();
    const node = state.pendingEls.get(entry.client_id);
    if (node) setStatus(node, 'failed', detail);
    showError(`Message not sent: ${detail}`);
  } else {
    showError(detail);
  }
}

export function retryPending(clientId) {
  const entry = state.outbox.find((e) => e.client_id === clientId);
  if (!entry) return;
  entry.status = 'pending';
  entry.error = null;
  saveOutbox();
  const node = state.pendingEls.get(clientId);
  if (node) setStatus(node, 'pending');
  if (!transmit(entry)) setHint(OFFLINE_HINT);
}

export function discardPending(clientId) {
  state.outbox = state.outbox.filter((e) => e.client_id !== clientId);
  saveOutbox();
  const node = state.pendingEls.get(clientId);
  if (node) node.remove();
  state.pendingEls.delete(clientId);
  regroup();
}

/** After a reconnect: sends again everything still waiting (same client_ids). */
export function flushOutbox() {
  let any = false;
  for (const entry of state.outbox) {
    if (entry.status === 'pending') any = transmit(entry) || any;
  }
  if (any) setHint('Sending queued messages…');
}
