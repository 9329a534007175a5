// Who is signed in: the sign-up and token forms (errors shown from the server's `detail`),
// starting a session (kept in localStorage, so it survives a reload), logging out, and the
// dialog that shows the token for another device.

import { api } from './api.js';
import { openChat } from './conversation.js';
import { closeMembers } from './group.js';
import { loadInbox } from './inbox.js';
import { restoreOutbox } from './outbox.js';
import { loadUsers } from './people.js';
import { displayName, forgetStored, KEY_SESSION, keyOpen, keyPeer, myId, state, store } from './state.js';
import { resumePoint, start, stopSocket } from './stream.js';
import { $, hideError, paintAvatar } from './view.js';

export const ACCOUNT_GONE = 'Your account no longer exists on this server. Sign up again to keep chatting.';

export function showAuth(notice) {
  $('chat').hidden = true;
  $('auth').hidden = false;
  const box = $('auth-notice');
  box.textContent = notice || '';
  box.hidden = !notice;
  document.title = 'Minichat';
  setTimeout(() => $('signup-username').focus(), 0);
}

export function selectTab(which) {
  const signup = which === 'signup';
  $('tab-signup').classList.toggle('active', signup);
  $('tab-token').classList.toggle('active', !signup);
  $('tab-signup').setAttribute('aria-selected', String(signup));
  $('tab-token').setAttribute('aria-selected', String(!signup));
  $('signup-form').hidden = !signup;
  $('token-form').hidden = signup;
}

function formError(form, text) {
  const box = form.querySelector('.form-error');
  box.textContent = text || '';
  box.hidden = !text;
}

export async function onSignup(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const button = form.querySelector('button[type=submit]');
  const username = $('signup-username').value.trim();
  const displayNameValue = $('signup-display-name').value.trim();
  formError(form, '');
  if (!username) {
    formError(form, 'Choose a username.');
    return;
  }
  const body = { username };
  if (displayNameValue) body.display_name = displayNameValue;
  button.disabled = true;
  try {
    const created = await api('POST', 'users/', body, { session: null, logoutOn401: false });
    const { token, ...user } = created;
    startSession({ user, token: token || null, loginAt: new Date().toISOString() }, { fresh: true });
    form.reset();
  } catch (e) {
    formError(form, e.message);
  } finally {
    button.disabled = false;
  }
}

export async function onTokenSignin(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const button = form.querySelector('button[type=submit]');
  const rawId = $('token-user-id').value.trim();
  const token = $('token-value').value.trim();
  formError(form, '');
  const id = Number(rawId);
  if (!/^\d+$/.test(rawId) || !Number.isSafeInteger(id)) {
    formError(form, 'The user id is a whole number.');
    return;
  }
  if (!token) {
    formError(form, 'Paste the token.');
    return;
  }
  const candidate = { user: { id }, token, loginAt: new Date().toISOString() };
  button.disabled = true;
  try {
    const user = await api('GET', `users/${id}`, undefined, { session: candidate, logoutOn401: false });
    // The directory accepts any valid token; history only the user's own.
    await api('GET', `messages/?user_id=${id}&limit=1`, undefined, { session: candidate, logoutOn401: false });
    candidate.user = { id: user.id, username: user.username, display_name: user.display_name, created_at: user.created_at };
    startSession(candidate, { fresh: false });
    form.reset();
  } catch (e) {
    formError(form, e.status === 403 ? `This token does not belong to user ${id}: ${e.message}` : e.message);
  } finally {
    button.disabled = false;
  }
}

export function signOut(notice) {
  const uid = myId();
  stopSocket();
  if (uid !== null) forgetStored(uid);
  store.del(KEY_SESSION);
  state.session = null;
  resetChatState();
  showAuth(notice);
}

function resetChatState() {
  state.users.clear();
  state.presence.clear();
  state.userItems.clear();
  state.convs.clear();
  state.directByPeer.clear();
  state.convItems.clear();
  state.inboxLoaded = false;
  state.typingUntil.forEach((t) => clearTimeout(t));
  state.typingUntil.clear();
  state.groupTyping.forEach((m) => m.forEach((t) => clearTimeout(t)));
  state.groupTyping.clear();
  state.readUpTo.clear();
  state.groupReads.clear();
  state.readSent.clear();
  state.groupReadSent.clear();
  state.readLoading.clear();
  state.convId = null;
  state.peerId = null;
  state.shown.clear();
  state.outbox = [];
  state.pendingEls.clear();
  resumePoint.reset();
  $('users').replaceChildren();
  $('inbox').replaceChildren();
  delete $('inbox').dataset.state;
  closeMembers();
  const dialog = $('group-dialog');
  if (dialog.open) dialog.close();
  $('message-list').replaceChildren();
  $('conversation').hidden = true;
  $('empty-state').hidden = false;
  $('chat').classList.remove('has-peer');
  $('reconnect-banner').hidden = true;
  hideError();
}

/** Shows the chat as `session`'s user and connects (`fresh`: a brand-new user, nothing stored). */
export function startSession(session, { fresh }) {
  state.session = session;
  store.set(KEY_SESSION, session);
  const uid = session.user.id;
  if (fresh) forgetStored(uid);
  resumePoint.restore(uid, fresh);
  restoreOutbox(uid);
  $('auth').hidden = true;
  $('chat').hidden = false;
  state.users.set(uid, session.user);
  paintAvatar($('me-avatar'), session.user);
  $('me-name').textContent = displayName(session.user);
  $('me-name').title = `@${session.user.username || ''} · id ${uid}`;
  start();
  Promise.all([loadUsers(), loadInbox()]).then(() => {
    if (state.session !== session) return;
    reopen(uid);
  });
}

/** Opens again the conversation that was open before the reload (wide screens only). */
function reopen(uid) {
  if (state.convId !== null || state.peerId !== null || window.innerWidth <= 760) return;
  const saved = store.get(keyOpen(uid));
  const legacy = Number(store.get(keyPeer(uid)));
  if (saved && typeof saved.conversation_id === 'number') {
    const entry = state.convs.get(saved.conversation_id);
    if (entry && !entry.left) openChat({ conversationId: entry.id });
  } else if (saved && typeof saved.peer_id === 'number') {
    if (state.users.has(saved.peer_id)) openChat({ peerId: saved.peer_id });
  } else if (legacy && state.users.has(legacy)) {
    openChat({ peerId: legacy });
  }
}

export function openDeviceDialog() {
  if (!state.session) return;
  $('device-user-id').value = String(state.session.user.id);
  $('device-token').value = state.session.token || '(auth is off on this server: no token needed)';
  const dialog = $('device-dialog');
  if (typeof dialog.showModal === 'function') dialog.showModal();
}

export async function copyToken() {
  const field = $('device-token');
  try {
    await navigator.clipboard.writeText(field.value);
    $('device-copy').textContent = 'Copied';
  } catch {
    field.select();
    document.execCommand('copy');
    $('device-copy').textContent = 'Copied';
  }
  setTimeout(() => ($('device-copy').textContent = 'Copy token'), 1500);
}
