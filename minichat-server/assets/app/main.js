// Minichat web page: plain JavaScript modules, no build step, nothing fetched from the internet.
//
// It speaks the public wire contract only (shared/API.md): REST with `Authorization: Bearer`
// (api.js), and one WebSocket per tab at `/ws/<me>?token=…&since=<last seq>` (stream.js). User
// content is only ever put into the page with textContent, never as HTML. This module wires the
// page together: the socket's frames to the modules that handle them, and the page's controls.
//
// The modules: state.js (shared state, localStorage), view.js (DOM helpers), session.js (sign
// up, sign in, log out), inbox.js (the conversations, unread badges), people.js (directory,
// presence), conversation.js (history, messages), group.js (new group, members, membership
// events), outbox.js (sending, acks, errors), receipts.js (typing, read receipts).

import { api, onUnauthorized } from './api.js';
import { closeConversation, loadOlder, onMessage, refreshSenderNames, renderHeader } from './conversation.js';
import { initGroups, onConversationEvent, renderMembers } from './group.js';
import { flushOutbox, onAck, onComposerInput, onErrorFrame, onSend } from './outbox.js';
import { forgetPresence, onPresence, onSearchInput, onUserLearnedDo, updateAllUserItems, watchAfresh } from './people.js';
import { loadReadState, maybeSendRead, onRead, onTyping, renderTyping } from './receipts.js';
import {
  ACCOUNT_GONE,
  copyToken,
  onSignup,
  onTokenSignin,
  openDeviceDialog,
  selectTab,
  showAuth,
  signOut,
  startSession,
} from './session.js';
import { KEY_SESSION, myId, state, store } from './state.js';
import { heartbeat, onStream, reconnectNow } from './stream.js';
import { $, hideError, isNearBottom, scrollToBottom } from './view.js';

onUnauthorized(signOut);
onUserLearnedDo((id) => {
  refreshSenderNames(id);
  renderMembers();
  renderTyping();
});

onStream({
  frame(frame) {
    switch (frame.type) {
      case 'message':
        onMessage(frame);
        break;
      case 'ack':
        onAck(frame);
        break;
      case 'error':
        onErrorFrame(frame);
        break;
      case 'typing':
        onTyping(frame);
        break;
      case 'read':
        onRead(frame);
        break;
      case 'presence':
        onPresence(frame);
        break;
      case 'conversation':
        onConversationEvent(frame);
        break;
      default:
        break; // pong and anything newer than this page
    }
  },
  ready() {
    watchAfresh();
    flushOutbox();
    // Receipts may have come and gone while the socket was down: ask again for the open chat.
    if (state.peerId !== null) loadReadState(state.peerId, true);
    maybeSendRead();
  },
  down: forgetPresence,
  gone() {
    signOut(ACCOUNT_GONE);
  },
  async refused() {
    // A 401 signs out (in api()); a missing user goes back to sign-up too.
    try {
      await api('GET', `users/${myId()}`);
    } catch (e) {
      if (e.status === 404 && state.session) signOut(ACCOUNT_GONE);
    }
  },
});

function init() {
  $('tab-signup').addEventListener('click', () => selectTab('signup'));
  $('tab-token').addEventListener('click', () => selectTab('token'));
  $('signup-form').addEventListener('submit', onSignup);
  $('token-form').addEventListener('submit', onTokenSignin);
  $('logout').addEventListener('click', () => signOut(''));
  $('search').addEventListener('input', onSearchInput);
  $('composer').addEventListener('submit', onSend);
  const input = $('composer-input');
  input.addEventListener('input', onComposerInput);
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $('composer').requestSubmit();
    }
  });
  $('messages').addEventListener('scroll', () => {
    if (isNearBottom()) {
      $('jump').hidden = true;
      maybeSendRead();
    }
  });
  $('jump').addEventListener('click', () => {
    scrollToBottom();
    maybeSendRead();
  });
  $('load-older').addEventListener('click', loadOlder);
  $('back').addEventListener('click', closeConversation);
  $('error-close').addEventListener('click', hideError);
  $('reconnect-now').addEventListener('click', reconnectNow);
  $('device-button').addEventListener('click', openDeviceDialog);
  $('device-copy').addEventListener('click', copyToken);
  initGroups();
  document.addEventListener('visibilitychange', maybeSendRead);
  window.addEventListener('online', reconnectNow);
  window.addEventListener('focus', maybeSendRead);
  setInterval(heartbeat, 5000);
  // Relative times ("last seen 3 min ago") stay fresh. New people need no timer: a search asks
  // the server, and a message from someone unknown fetches them (people.js ensureUser).
  setInterval(() => {
    if (!state.session) return;
    updateAllUserItems();
    renderHeader();
  }, 30000);

  const saved = store.get(KEY_SESSION);
  if (saved && saved.user && typeof saved.user.id === 'number') {
    startSession(saved, { fresh: false });
  } else {
    showAuth('');
  }
}

init();
