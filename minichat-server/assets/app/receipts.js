// Typing notices and read receipts, both ways, per conversation: "… is typing" (who, in a
// group), ✓✓ on my messages the peer has read (live read frames, and after a reload or
// reconnect the stored marks of GET /messages/read), "read by …" on mine in a group (from live
// read frames only: the server keeps no per-reader marks for the page to ask), and my own read
// frames, throttled to stay within the server's limit.

import { api } from './api.js';
import { setStatus } from './conversation.js';
import { clearUnread, typingText, updateConvItem, updatePeerConv } from './inbox.js';
import { isOpen, myId, nameOf, openConv, state } from './state.js';
import { isReady, sendFrame } from './stream.js';
import { $, isNearBottom } from './view.js';

const TYPING_SEND_EVERY_MS = 2000;
const TYPING_SHOW_MS = 3000;
const READ_THROTTLE_MS = 300;

// ---------------------------------------------------------------------------------------------
// Typing

/** Something was typed in the open conversation: tell the others, at most every TYPING_SEND_EVERY_MS. */
export function noteTyping() {
  if (!isOpen() || !isReady()) return;
  const now = Date.now();
  if (now - state.lastTypingSent >= TYPING_SEND_EVERY_MS) {
    state.lastTypingSent = now;
    sendFrame(state.convId !== null ? { type: 'typing', conversation_id: state.convId } : { type: 'typing', receiver_id: state.peerId });
  }
}

/**
 * A typing frame: in a group (its conversation_id names one that is not direct), or in the
 * direct chat with its sender (Part 3's frame has no conversation_id).
 */
export function onTyping(frame) {
  const id = frame.sender_id;
  if (typeof id !== 'number' || id === myId()) return;
  const convId = typeof frame.conversation_id === 'number' ? frame.conversation_id : null;
  const entry = convId === null ? null : state.convs.get(convId);
  if (convId !== null && !(entry && entry.kind === 'direct')) {
    let typing = state.groupTyping.get(convId);
    if (!typing) state.groupTyping.set(convId, (typing = new Map()));
    clearTimeout(typing.get(id));
    typing.set(id, setTimeout(() => stopTyping(id, convId), TYPING_SHOW_MS));
    updateConvItem(convId);
  } else {
    clearTimeout(state.typingUntil.get(id));
    state.typingUntil.set(
      id,
      setTimeout(() => stopTyping(id, null), TYPING_SHOW_MS),
    );
    updatePeerConv(id);
  }
  renderTyping();
}

/** `id` stopped typing (a pause, or their message came): in group `convId`, and in the direct chat. */
export function stopTyping(id, convId) {
  const typing = convId === null ? null : state.groupTyping.get(convId);
  if (typing && typing.has(id)) {
    clearTimeout(typing.get(id));
    typing.delete(id);
    updateConvItem(convId);
  }
  const entry = convId === null ? null : state.convs.get(convId);
  if ((convId === null || (entry && entry.kind === 'direct')) && state.typingUntil.has(id)) {
    clearTimeout(state.typingUntil.get(id));
    state.typingUntil.delete(id);
    updatePeerConv(id);
  }
  renderTyping();
}

export function renderTyping() {
  const box = $('typing');
  let text = '';
  if (state.peerId !== null) text = state.typingUntil.has(state.peerId) ? `${nameOf(state.peerId)} is typing…` : '';
  else if (state.convId !== null) text = typingText(openConv(), true);
  box.hidden = !text;
  if (text) $('typing-text').textContent = text;
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

/** Who of the group's other members has read my message `id` (as far as live frames told). */
function readersOf(convId, id) {
  const reads = state.groupReads.get(convId);
  if (!reads) return [];
  return [...reads].filter(([, upTo]) => upTo >= id).map(([reader]) => reader);
}

/**
 * The status of my stored message `m` on `node`: in a direct chat ✓ or ✓✓; in a group ✓, or
 * ✓✓ with "Read by …" once someone read it.
 */
export function applyReceipt(node, m) {
  if (typeof m.id !== 'number') return;
  if (m.receiver_id !== null && m.receiver_id !== undefined) {
    setStatus(node, (state.readUpTo.get(m.receiver_id) || 0) >= m.id ? 'read' : 'sent');
    return;
  }
  const readers = readersOf(m.conversation_id, m.id);
  setStatus(node, readers.length ? 'read' : 'sent');
  const label = node.querySelector('.readers');
  if (!label) return;
  const names = readers.map(nameOf);
  label.textContent = !readers.length ? '' : readers.length <= 2 ? `Read by ${names.join(', ')}` : `Read by ${readers.length}`;
  label.title = names.join(', ');
}

/** A group member read the group up to `upTo`. */
function markGroupRead(convId, reader, upTo) {
  let reads = state.groupReads.get(convId);
  if (!reads) state.groupReads.set(convId, (reads = new Map()));
  if (upTo <= (reads.get(reader) || 0)) return;
  reads.set(reader, upTo);
  if (convId !== state.convId || state.peerId !== null) return;
  for (const [id, node] of state.shown) {
    if (node.classList.contains('mine')) applyReceipt(node, { id, receiver_id: null, conversation_id: convId });
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
  if (!isReady() || document.visibilityState === 'hidden' || !isNearBottom()) return;
  if (state.peerId === null) {
    sendGroupRead();
    return;
  }
  const peer = state.peerId;
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

/** The group's newest message from others on screen, if I have not said I read it. */
function sendGroupRead() {
  const convId = state.convId;
  const entry = openConv();
  if (convId === null || !entry || entry.left) return;
  const me = String(myId());
  let upTo = 0;
  for (const [id, node] of state.shown) {
    if (node.dataset.senderId !== me && id > upTo) upTo = id;
  }
  if (upTo > (state.groupReadSent.get(convId) || 0) && sendFrame({ type: 'read', conversation_id: convId, up_to: upTo })) {
    state.groupReadSent.set(convId, upTo);
    state.lastReadAt = Date.now();
  }
}

export function onRead(frame) {
  const reader = frame.reader_id;
  const upTo = frame.up_to;
  if (typeof reader !== 'number' || typeof upTo !== 'number') return;
  const convId = typeof frame.conversation_id === 'number' ? frame.conversation_id : null;
  const entry = convId === null ? null : state.convs.get(convId);
  if (reader === myId()) {
    // Read on another of my devices.
    if (convId !== null) clearUnread(convId);
    return;
  }
  // A read frame of a conversation not known yet is a group's: a direct one is in the inbox by then.
  if (convId === null || (entry && entry.kind === 'direct')) markReadBy(reader, upTo);
  else markGroupRead(convId, reader, upTo);
}
