// Typing notices and read receipts, both ways: "… is typing", ✓✓ on my messages the peer has
// read (live read frames, and after a reload or reconnect the stored marks of
// GET /messages/read), and my own read frames, throttled to stay within the server's limit.

import { api } from './api.js';
import { setStatus } from './conversation.js';
import { renderUsers, updateUserItem } from './people.js';
import { myId, nameOf, state } from './state.js';
import { isReady, sendFrame } from './stream.js';
import { $, isNearBottom } from './view.js';

const TYPING_SEND_EVERY_MS = 2000;
const TYPING_SHOW_MS = 3000;
const READ_THROTTLE_MS = 300;

// ---------------------------------------------------------------------------------------------
// Typing

/** Something was typed for the open peer: tell them, at most every TYPING_SEND_EVERY_MS. */
export function noteTyping() {
  if (state.peerId === null || !isReady()) return;
  const now = Date.now();
  if (now - state.lastTypingSent >= TYPING_SEND_EVERY_MS) {
    state.lastTypingSent = now;
    sendFrame({ type: 'typing', receiver_id: state.peerId });
  }
}

export function onTyping(frame) {
  const id = frame.sender_id;
  if (typeof id !== 'number' || id === myId()) return;
  clearTimeout(state.typingUntil.get(id));
  state.typingUntil.set(
    id,
    setTimeout(() => stopTyping(id), TYPING_SHOW_MS),
  );
  updateUserItem(id);
  renderTyping();
}

export function stopTyping(id) {
  if (!state.typingUntil.has(id)) return;
  clearTimeout(state.typingUntil.get(id));
  state.typingUntil.delete(id);
  updateUserItem(id);
  renderTyping();
}

export function renderTyping() {
  const box = $('typing');
  const on = state.peerId !== null && state.typingUntil.has(state.peerId);
  box.hidden = !on;
  if (on) $('typing-text').textContent = `${nameOf(state.peerId)} is typing…`;
}

// ---------------------------------------------------------------------------------------------
// Read receipts

/**
 * Asks the server how far the conversation with `peer` has been read both ways (after a reload,
 * a new sign-in or a reconnect the live read frames may be long gone): my messages the peer read
 * get ✓✓, and what I already read is not announced again. Until it answers, no read frame is
 * sent to that peer; then one is, if something newer from them is on screen. `fresh` asks again
 * even when a request is under way (it may have gone out over a connection that has since died).
 */
export function loadReadState(peer, fresh = false) {
  if (!fresh && state.readLoading.has(peer)) return state.readLoading.get(peer);
  const session = state.session;
  const done = api('GET', `messages/read?user_id=${myId()}&chat_with=${peer}`)
    .then((marks) => {
      if (state.session !== session || !marks) return;
      if (typeof marks.read_up_to === 'number' && marks.read_up_to > (state.readSent.get(peer) || 0)) {
        state.readSent.set(peer, marks.read_up_to);
      }
      if (typeof marks.peer_read_up_to === 'number') markReadBy(peer, marks.peer_read_up_to);
    })
    .catch(() => {
      /* a 401 already signed out; otherwise receipts just stay as they are */
    })
    .finally(() => {
      if (state.session !== session || state.readLoading.get(peer) !== done) return;
      state.readLoading.delete(peer);
      maybeSendRead();
    });
  state.readLoading.set(peer, done);
  return done;
}

/** The peer has read my messages up to `upTo`: ✓✓ on those shown. */
function markReadBy(reader, upTo) {
  if (upTo <= (state.readUpTo.get(reader) || 0)) return;
  state.readUpTo.set(reader, upTo);
  if (reader !== state.peerId) return;
  for (const [id, node] of state.shown) {
    if (id <= upTo && node.classList.contains('mine') && node.dataset.status !== 'read') setStatus(node, 'read');
  }
}

/**
 * Tells the open peer how far I have read, once their newest message is on screen. At most
 * one read frame goes out per READ_THROTTLE_MS (the first at once, the rest gathered at the
 * end of the window), so a burst of messages, such as a replay, costs a frame or two and
 * stays within the server's per-user limit on typing, read and watch frames.
 */
export function maybeSendRead() {
  const wait = state.lastReadAt + READ_THROTTLE_MS - Date.now();
  if (wait > 0) {
    if (state.readTimer === null) {
      state.readTimer = setTimeout(() => {
        state.readTimer = null;
        maybeSendRead();
      }, wait);
    }
    return;
  }
  sendReadNow();
}

function sendReadNow() {
  const peer = state.peerId;
  if (peer === null || !isReady() || document.visibilityState === 'hidden' || !isNearBottom()) return;
  if (state.readLoading.has(peer)) return; // sent once the server said how far I had read
  let upTo = 0;
  for (const [id, node] of state.shown) {
    if (Number(node.dataset.senderId) === peer && id > upTo) upTo = id;
  }
  if (upTo > (state.readSent.get(peer) || 0) && sendFrame({ type: 'read', peer_id: peer, up_to: upTo })) {
    state.readSent.set(peer, upTo);
    state.lastReadAt = Date.now();
  }
}

export function onRead(frame) {
  const reader = frame.reader_id;
  const upTo = frame.up_to;
  if (typeof reader !== 'number' || typeof upTo !== 'number') return;
  if (reader === myId()) {
    // Read on another of my devices.
    if (typeof frame.peer_id === 'number') {
      state.unread.delete(frame.peer_id);
      renderUsers();
    }
    return;
  }
  markReadBy(reader, upTo);
}
