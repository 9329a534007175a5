// Minichat web page: plain JavaScript, no build step, nothing fetched from the internet.
//
// It speaks the public wire contract only (shared/API.md): REST with `Authorization: Bearer`,
// and one WebSocket per tab at `/ws/<me>?token=…&since=<last seq>`. User content is only ever
// put into the page with textContent, never as HTML.
(() => {
  'use strict';

  // ---------------------------------------------------------------------------------------------
  // Constants and state

  /** The server root, resolved from this page's address (`…/app/` → `…/`). */
  const BASE = new URL('..', location.href);
  const HISTORY_PAGE = 50;
  const TYPING_SEND_EVERY_MS = 2000;
  const READ_THROTTLE_MS = 300;
  const TYPING_SHOW_MS = 3000;
  const BACKOFF_START_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  /** With no frame from the server for this long, the page pings; twice that, it reconnects. */
  const QUIET_MS = 25000;
  const MAX_CONTENT = 1000;
  /** Users one connection may watch for presence (the server's cap). */
  const MAX_WATCHED = 1000;

  const KEY_SESSION = 'minichat.session';
  const keySeq = (uid) => `minichat.seq.${uid}`;
  const keyOutbox = (uid) => `minichat.outbox.${uid}`;
  const keyPeer = (uid) => `minichat.peer.${uid}`;

  const state = {
    /** {user, token, loginAt} or null. */
    session: null,
    users: new Map(), // id -> user
    presence: new Map(), // id -> {online, last_seen}
    userItems: new Map(), // id -> sidebar element
    preview: new Map(), // peer id -> {text, timestamp, mine}
    unread: new Map(), // peer id -> count
    typingUntil: new Map(), // peer id -> timer id
    readUpTo: new Map(), // reader id -> highest message id of mine they have read
    readSent: new Map(), // peer id -> highest up_to sent in a read frame (or already stored by the server)
    lastReadAt: 0, // when the last read frame went out (Date.now())
    readTimer: null, // the pending trailing read frame, if any
    readLoading: new Map(), // peer id -> pending GET /messages/read (no read frame is sent meanwhile)
    watched: new Set(), // ids this connection already watches (the server adds, up to 1000)

    peerId: null,
    shown: new Map(), // message id -> element, in the open conversation
    oldestId: null,
    hasOlder: false,
    loadingOlder: false,
    historyToken: 0,

    /** Messages not yet acknowledged: [{client_id, receiver_id, content, created, status, error, transmitted}] */
    outbox: [],
    pendingEls: new Map(), // client_id -> element

    lastSeq: 0,
    aheadSeqs: new Set(),

    ws: null,
    ready: false,
    closing: false,
    attempt: 0,
    reconnectTimer: null,
    reconnectAt: 0,
    countdownTimer: null,
    lastHeard: 0,
    lastTypingSent: 0,
  };

  // ---------------------------------------------------------------------------------------------
  // Small helpers

  const $ = (id) => document.getElementById(id);

  /** Creates an element; `text` is set with textContent, so it is never parsed as HTML. */
  function h(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (value === undefined || value === null || value === false) continue;
        if (key === 'class') node.className = value;
        else if (key === 'text') node.textContent = value;
        else if (key === 'dataset') Object.assign(node.dataset, value);
        else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
        else node.setAttribute(key, value === true ? '' : String(value));
      }
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  const store = {
    get(key) {
      try {
        const raw = localStorage.getItem(key);
        return raw === null ? null : JSON.parse(raw);
      } catch {
        return null;
      }
    },
    set(key, value) {
      try {
        localStorage.setItem(key, JSON.stringify(value));
      } catch {
        /* storage full or disabled: the page still works for this visit */
      }
    },
    del(key) {
      try {
        localStorage.removeItem(key);
      } catch {
        /* ignore */
      }
    },
  };

  /** A random id for client_id: crypto.randomUUID where available (secure contexts), else v4 by hand. */
  function newClientId() {
    if (window.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const hex = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  const myId = () => (state.session ? state.session.user.id : null);

  function displayName(user) {
    if (!user) return 'Unknown';
    return user.display_name || user.username || `User ${user.id}`;
  }

  function nameOf(id) {
    return displayName(state.users.get(id)) || `User ${id}`;
  }

  function initials(name) {
    const parts = String(name || '?').trim().split(/\s+/).filter(Boolean);
    const letters = parts.length > 1 ? parts[0][0] + parts[parts.length - 1][0] : (parts[0] || '?').slice(0, 2);
    return letters.toUpperCase();
  }

  function avatarColor(id) {
    const hues = [222, 262, 292, 330, 12, 32, 150, 178, 200];
    const hue = hues[Math.abs(Number(id) || 0) % hues.length];
    return `hsl(${hue} 65% 52%)`;
  }

  function paintAvatar(node, user) {
    node.textContent = initials(displayName(user));
    node.style.background = avatarColor(user ? user.id : 0);
  }

  const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
  const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric' });
  const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

  function dayLabel(date) {
    const today = new Date();
    const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
    if (date.toDateString() === today.toDateString()) return 'Today';
    if (date.toDateString() === yesterday.toDateString()) return 'Yesterday';
    return dayFmt.format(date);
  }

  function ago(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return '';
    const s = Math.max(0, (Date.now() - t) / 1000);
    if (s < 60) return 'just now';
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return dayFmt.format(new Date(t));
  }

  /** The `detail` of an error body as one line: a string, or for 422 the list of `msg`s. */
  function describeDetail(detail, status) {
    if (typeof detail === 'string' && detail) return detail;
    if (Array.isArray(detail)) {
      const msgs = detail.map((d) => (d && typeof d.msg === 'string' ? d.msg : JSON.stringify(d)));
      if (msgs.length) return msgs.join('; ');
    }
    if (detail && typeof detail === 'object') return JSON.stringify(detail);
    return status ? `Request failed (HTTP ${status})` : 'Request failed';
  }

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  /**
   * Calls the REST API as the signed-in user. Throws ApiError with the server's detail; a 401
   * ends the session and goes back to the sign-up screen with that detail.
   */
  async function api(method, path, body, { session = state.session, logoutOn401 = true } = {}) {
    const headers = { Accept: 'application/json' };
    if (session && session.token) headers.Authorization = `Bearer ${session.token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(new URL(path, BASE), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
      });
    } catch {
      throw new ApiError(0, 'Cannot reach the server. Check your connection and try again.');
    }
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) {
      const detail = describeDetail(data && data.detail, response.status);
      if (response.status === 401 && logoutOn401 && state.session) {
        signOut(`Signed out: ${detail}`);
      }
      throw new ApiError(response.status, detail);
    }
    return data;
  }

  // ---------------------------------------------------------------------------------------------
  // Notices

  let errorTimer = null;
  function showError(text) {
    $('error-text').textContent = text;
    $('error-banner').hidden = false;
    clearTimeout(errorTimer);
    errorTimer = setTimeout(hideError, 12000);
  }
  function hideError() {
    $('error-banner').hidden = true;
  }

  function setHint(text) {
    $('composer-hint').textContent = text || '';
  }

  // ---------------------------------------------------------------------------------------------
  // Sign up, sign in, log out

  function showAuth(notice) {
    $('chat').hidden = true;
    $('auth').hidden = false;
    const box = $('auth-notice');
    box.textContent = notice || '';
    box.hidden = !notice;
    document.title = 'Minichat';
    setTimeout(() => $('signup-username').focus(), 0);
  }

  function selectTab(which) {
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

  async function onSignup(event) {
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

  async function onTokenSignin(event) {
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

  function signOut(notice) {
    const uid = myId();
    stopSocket();
    if (uid !== null) {
      store.del(keySeq(uid));
      store.del(keyOutbox(uid));
      store.del(keyPeer(uid));
    }
    store.del(KEY_SESSION);
    state.session = null;
    resetChatState();
    showAuth(notice);
  }

  function resetChatState() {
    state.users.clear();
    state.presence.clear();
    state.userItems.clear();
    state.preview.clear();
    state.unread.clear();
    state.typingUntil.forEach((t) => clearTimeout(t));
    state.typingUntil.clear();
    state.readUpTo.clear();
    state.readSent.clear();
    state.readLoading.clear();
    state.peerId = null;
    state.shown.clear();
    state.outbox = [];
    state.pendingEls.clear();
    state.lastSeq = 0;
    state.aheadSeqs.clear();
    $('users').replaceChildren();
    $('message-list').replaceChildren();
    $('conversation').hidden = true;
    $('empty-state').hidden = false;
    $('chat').classList.remove('has-peer');
    $('reconnect-banner').hidden = true;
    hideError();
  }

  function startSession(session, { fresh }) {
    state.session = session;
    store.set(KEY_SESSION, session);
    const uid = session.user.id;
    if (fresh) {
      // A brand-new user: nothing stored anywhere yet.
      store.del(keySeq(uid));
      store.del(keyOutbox(uid));
      store.del(keyPeer(uid));
    }
    state.lastSeq = Number(store.get(keySeq(uid))) || 0;
    state.outbox = (store.get(keyOutbox(uid)) || []).filter((m) => m && m.client_id && m.receiver_id);
    state.outbox.forEach((m) => {
      m.transmitted = true; // may have reached the server before the page was closed
      if (m.status !== 'failed') m.status = 'pending';
    });
    $('auth').hidden = true;
    $('chat').hidden = false;
    state.users.set(uid, session.user);
    paintAvatar($('me-avatar'), session.user);
    $('me-name').textContent = displayName(session.user);
    $('me-name').title = `@${session.user.username || ''} · id ${uid}`;
    state.closing = false;
    state.attempt = 0;
    connect();
    loadUsers().then(() => {
      const saved = Number(store.get(keyPeer(uid)));
      if (saved && state.users.has(saved) && state.peerId === null && window.innerWidth > 760) openConversation(saved);
    });
  }

  // ---------------------------------------------------------------------------------------------
  // People

  async function loadUsers() {
    if (!state.session) return;
    try {
      const list = await api('GET', 'users/?limit=1000');
      if (!state.session) return;
      const before = new Set(state.users.keys());
      let added = false;
      for (const user of list) {
        state.users.set(user.id, user);
        if (!before.has(user.id)) added = true;
      }
      renderUsers();
      if (added) sendWatch();
    } catch (e) {
      if (e.status !== 401) showError(`Could not load people: ${e.message}`);
    }
  }

  /** Learns about a user first seen in a message (signed up after the list was loaded). */
  async function ensureUser(id, hint) {
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

  function renderUsers() {
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
      const match = !filter || `${user.username} ${user.display_name}`.toLowerCase().includes(filter);
      item.hidden = !match;
      if (match) visible += 1;
      if (list.children[index] !== item) list.insertBefore(item, list.children[index] || null);
    });
    $('users-empty').hidden = visible > 0 || Boolean(filter);
    updateTitle();
  }

  function buildUserItem(id) {
    const item = h(
      'button',
      { type: 'button', class: 'user', dataset: { testid: 'user-item', userId: String(id) }, onclick: () => openConversation(id) },
      h('span', { class: 'avatar-wrap' }, h('span', { class: 'avatar' }), h('span', { class: 'presence', dataset: { testid: 'presence-dot', online: 'false' } })),
      h('span', { class: 'user-text' }, h('span', { class: 'user-name' }), h('span', { class: 'user-sub' })),
      h('span', { class: 'user-side' }, h('span', { class: 'user-time' }), h('span', { class: 'badge', dataset: { testid: 'unread-badge' }, hidden: true })),
    );
    return item;
  }

  function updateUserItem(id) {
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

  function shortTime(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return '';
    return d.toDateString() === new Date().toDateString() ? timeFmt.format(d) : dayFmt.format(d).split(',')[0];
  }

  function lastSeenText(presence) {
    if (!presence) return '';
    if (presence.online) return 'online';
    return presence.last_seen ? `last seen ${ago(presence.last_seen)}` : 'offline';
  }

  function updateTitle() {
    let total = 0;
    state.unread.forEach((n) => (total += n));
    document.title = total ? `(${total}) Minichat` : 'Minichat';
  }

  // ---------------------------------------------------------------------------------------------
  // Conversation

  function renderPeerHeader() {
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

  async function openConversation(id) {
    if (!state.session || id === myId()) return;
    const switching = state.peerId !== id;
    state.peerId = id;
    store.set(keyPeer(myId()), id);
    state.unread.delete(id);
    $('chat').classList.add('has-peer');
    $('empty-state').hidden = true;
    $('conversation').hidden = false;
    state.userItems.forEach((_, uid) => updateUserItem(uid));
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

  function closeConversation() {
    state.peerId = null;
    state.historyToken += 1;
    $('chat').classList.remove('has-peer');
    $('conversation').hidden = true;
    $('empty-state').hidden = false;
    state.userItems.forEach((_, uid) => updateUserItem(uid));
  }

  async function loadOlder() {
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

  function isNearBottom() {
    const pane = $('messages');
    return pane.scrollHeight - pane.scrollTop - pane.clientHeight < 80;
  }

  function scrollToBottom() {
    const pane = $('messages');
    pane.scrollTop = pane.scrollHeight;
    $('jump').hidden = true;
  }

  function buildMessage(m) {
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

  function setStatus(node, status, error) {
    node.dataset.status = status;
    const tick = node.querySelector('.tick');
    if (tick) {
      tick.textContent = { sent: '✓', read: '✓✓', failed: '!' }[status] || ''; // pending: a CSS clock
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
  function insertMessage(m) {
    if (state.shown.has(m.id)) return false;
    const node = buildMessage(m);
    state.shown.set(m.id, node);
    placeById(node, m.id);
    if (state.oldestId === null || m.id < state.oldestId) state.oldestId = m.id;
    $('history-note').hidden = true;
    return true;
  }

  function placeById(node, id) {
    const list = $('message-list');
    // Walk back over pending messages (always last) and newer stored ones.
    let after = list.lastElementChild;
    while (after && (after.dataset.id === undefined || Number(after.dataset.id) > id)) {
      after = after.previousElementSibling;
    }
    list.insertBefore(node, after ? after.nextSibling : list.firstChild);
  }

  /** Marks day changes and runs of messages from one sender (for the bubble shapes). */
  function regroup() {
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

  function notePreview(peer, m) {
    const current = state.preview.get(peer);
    if (current && Date.parse(current.timestamp) > Date.parse(m.timestamp)) return;
    state.preview.set(peer, { text: m.content, timestamp: m.timestamp, mine: m.sender_id === myId() });
  }

  /** A message frame (live or replayed after `since`). */
  function onMessage(m) {
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

  // ---------------------------------------------------------------------------------------------
  // Sending

  function saveOutbox() {
    const uid = myId();
    if (uid === null) return;
    store.set(
      keyOutbox(uid),
      state.outbox.map(({ client_id, receiver_id, content, created, status, error }) => ({ client_id, receiver_id, content, created, status, error })),
    );
  }

  function renderPending(entry) {
    if (entry.receiver_id !== state.peerId || state.pendingEls.has(entry.client_id)) return;
    const node = buildMessage({
      id: undefined,
      sender_id: myId(),
      receiver_id: entry.receiver_id,
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
    if (!state.ready || !state.ws) return false;
    try {
      state.ws.send(JSON.stringify({ type: 'message', receiver_id: entry.receiver_id, content: entry.content, client_id: entry.client_id }));
      entry.transmitted = true;
      return true;
    } catch {
      return false;
    }
  }

  function onSend(event) {
    event.preventDefault();
    const input = $('composer-input');
    const content = input.value.trim();
    if (!content || state.peerId === null) return;
    if (content.length > MAX_CONTENT) {
      showError(`Messages can be at most ${MAX_CONTENT} characters (this one has ${content.length}).`);
      return;
    }
    const entry = {
      client_id: newClientId(),
      receiver_id: state.peerId,
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
    if (!transmit(entry)) setHint('You are offline: the message will be sent when the connection is back.');
  }

  function finishPending(entry, message) {
    state.outbox = state.outbox.filter((e) => e !== entry);
    saveOutbox();
    const node = state.pendingEls.get(entry.client_id);
    state.pendingEls.delete(entry.client_id);
    notePreview(entry.receiver_id, message);
    if (!node) {
      if (message.receiver_id === state.peerId) insertMessage(message);
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
    setStatus(node, (state.readUpTo.get(message.receiver_id) || 0) >= message.id ? 'read' : 'sent');
    state.shown.set(message.id, node);
    placeById(node, message.id);
    if (state.oldestId === null || message.id < state.oldestId) state.oldestId = message.id;
  }

  function onAck(frame) {
    const message = frame.message;
    if (!message) return;
    noteSeq(message.seq, true);
    const entry = state.outbox.find((e) => e.client_id === frame.client_id);
    if (entry) {
      finishPending(entry, message);
    } else if (message.receiver_id === state.peerId) {
      insertMessage(message);
    }
    if (message.receiver_id === state.peerId) {
      regroup();
      if (isNearBottom()) scrollToBottom();
    }
    if (!state.outbox.some((e) => e.status === 'pending')) setHint('');
    renderUsers();
  }

  /**
   * One of my messages arrived as an event (a replay after reconnecting, or another device):
   * if it is one this page sent and is still waiting for, it is that one, so it is not shown twice.
   */
  function adoptPending(m) {
    const entry = state.outbox.find(
      (e) => e.transmitted && e.status === 'pending' && e.receiver_id === m.receiver_id && e.content === m.content,
    );
    if (entry) finishPending(entry, m);
  }

  function onErrorFrame(frame) {
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

  function retryPending(clientId) {
    const entry = state.outbox.find((e) => e.client_id === clientId);
    if (!entry) return;
    entry.status = 'pending';
    entry.error = null;
    saveOutbox();
    const node = state.pendingEls.get(clientId);
    if (node) setStatus(node, 'pending');
    if (!transmit(entry)) setHint('You are offline: the message will be sent when the connection is back.');
  }

  function discardPending(clientId) {
    state.outbox = state.outbox.filter((e) => e.client_id !== clientId);
    saveOutbox();
    const node = state.pendingEls.get(clientId);
    if (node) node.remove();
    state.pendingEls.delete(clientId);
    regroup();
  }

  function flushOutbox() {
    let any = false;
    for (const entry of state.outbox) {
      if (entry.status === 'pending') any = transmit(entry) || any;
    }
    if (any) setHint('Sending queued messages…');
  }

  // ---------------------------------------------------------------------------------------------
  // Typing and read receipts

  function onComposerInput() {
    autosize();
    const len = $('composer-input').value.trim().length;
    if (len > MAX_CONTENT - 100) setHint(`${len} / ${MAX_CONTENT}`);
    else if (/^\d+ \/ \d+$/.test($('composer-hint').textContent)) setHint('');
    if (!len || state.peerId === null || !state.ready) return;
    const now = Date.now();
    if (now - state.lastTypingSent >= TYPING_SEND_EVERY_MS) {
      state.lastTypingSent = now;
      sendFrame({ type: 'typing', receiver_id: state.peerId });
    }
  }

  function onTyping(frame) {
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

  function stopTyping(id) {
    if (!state.typingUntil.has(id)) return;
    clearTimeout(state.typingUntil.get(id));
    state.typingUntil.delete(id);
    updateUserItem(id);
    renderTyping();
  }

  function renderTyping() {
    const box = $('typing');
    const on = state.peerId !== null && state.typingUntil.has(state.peerId);
    box.hidden = !on;
    if (on) $('typing-text').textContent = `${nameOf(state.peerId)} is typing…`;
  }

  /**
   * Asks the server how far the conversation with `peer` has been read both ways (after a reload,
   * a new sign-in or a reconnect the live read frames may be long gone): my messages the peer read
   * get ✓✓, and what I already read is not announced again. Until it answers, no read frame is
   * sent to that peer; then one is, if something newer from them is on screen. `fresh` asks again
   * even when a request is under way (it may have gone out over a connection that has since died).
   */
  function loadReadState(peer, fresh = false) {
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
  function maybeSendRead() {
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
    if (peer === null || !state.ready || document.visibilityState === 'hidden' || !isNearBottom()) return;
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

  function onRead(frame) {
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

  /** Offline ourselves, we no longer know who is online; the next watch answers afresh. */
  function forgetPresence() {
    state.presence.clear();
    state.userItems.forEach((_, id) => updateUserItem(id));
    renderPeerHeader();
  }

  function onPresence(frame) {
    if (typeof frame.user_id !== 'number') return;
    state.presence.set(frame.user_id, { online: Boolean(frame.online), last_seen: frame.last_seen || null });
    updateUserItem(frame.user_id);
    if (frame.user_id === state.peerId) renderPeerHeader();
  }

  // ---------------------------------------------------------------------------------------------
  // The socket

  function sendFrame(frame) {
    if (!state.ready || !state.ws) return false;
    try {
      state.ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  /** Subscribes this connection to the presence of everyone listed it does not watch yet. */
  function sendWatch() {
    if (!state.ready) return;
    const room = MAX_WATCHED - state.watched.size;
    const ids = [...state.users.keys()].filter((id) => id !== myId() && !state.watched.has(id)).slice(0, Math.max(0, room));
    if (ids.length && sendFrame({ type: 'watch', user_ids: ids })) ids.forEach((id) => state.watched.add(id));
  }

  /**
   * Records a seq. Events on one socket arrive in seq order, so a message frame's seq is the new
   * high-water mark. An ack's seq is taken only once everything below it was seen: an event
   * numbered just before it may still be on its way, and resuming after it would skip that one.
   */
  function noteSeq(seq, fromAck) {
    if (!Number.isSafeInteger(seq) || seq <= state.lastSeq) return;
    if (fromAck) state.aheadSeqs.add(seq);
    else state.lastSeq = seq;
    while (state.aheadSeqs.has(state.lastSeq + 1)) state.lastSeq += 1;
    for (const s of state.aheadSeqs) if (s <= state.lastSeq) state.aheadSeqs.delete(s);
    store.set(keySeq(myId()), state.lastSeq);
  }

  function setConnection(status, text) {
    const conn = $('conn');
    conn.dataset.status = status;
    $('conn-text').textContent = text;
    const banner = $('reconnect-banner');
    banner.hidden = status !== 'reconnecting';
    document.body.dataset.connection = status;
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    clearInterval(state.countdownTimer);
    state.reconnectTimer = null;
    const session = state.session;
    if (!session || state.closing) return;
    if (state.ws) {
      const old = state.ws;
      state.ws = null;
      old.onclose = old.onmessage = old.onopen = old.onerror = null;
      try {
        old.close();
      } catch {
        /* ignore */
      }
    }
    const url = new URL(`ws/${session.user.id}`, BASE);
    url.protocol = BASE.protocol === 'https:' ? 'wss:' : 'ws:';
    if (session.token) url.searchParams.set('token', session.token);
    url.searchParams.set('since', String(state.lastSeq));
    if (state.attempt === 0) setConnection('connecting', 'Connecting…');
    else {
      setConnection('reconnecting', 'Reconnecting…');
      $('reconnect-text').textContent = 'Connection lost. Reconnecting…';
    }
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      showError(`Cannot open the connection: ${e.message}`);
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    state.ready = false;
    state.watched.clear();
    let opened = false;
    ws.onopen = () => {
      opened = true;
      state.lastHeard = Date.now();
    };
    ws.onmessage = (event) => {
      if (state.ws !== ws) return;
      state.lastHeard = Date.now();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame && typeof frame === 'object') onFrame(frame);
    };
    ws.onerror = () => {
      /* a close event follows */
    };
    ws.onclose = (event) => {
      if (state.ws !== ws) return;
      state.ws = null;
      state.ready = false;
      forgetPresence();
      onClosed(event, opened);
    };
  }

  function onFrame(frame) {
    switch (frame.type) {
      case 'system':
        onReady();
        break;
      case 'message':
        noteSeq(frame.seq, false);
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
        noteSeq(frame.seq, false);
        onRead(frame);
        break;
      case 'presence':
        onPresence(frame);
        break;
      default:
        break; // pong and anything newer than this page
    }
  }

  function onReady() {
    state.ready = true;
    state.attempt = 0;
    setConnection('online', 'Connected');
    sendWatch();
    flushOutbox();
    // Receipts may have come and gone while the socket was down: ask again for the open chat.
    if (state.peerId !== null) loadReadState(state.peerId, true);
    maybeSendRead();
  }

  async function onClosed(event, opened) {
    if (state.closing || !state.session) return;
    if (event.code === 4004) {
      signOut('Your account no longer exists on this server. Sign up again to keep chatting.');
      return;
    }
    scheduleReconnect();
    if (!opened) {
      // The upgrade was refused: a browser cannot see why, so ask the REST API who we are.
      // A 401 signs out (in api()); a missing user goes back to sign-up too.
      try {
        await api('GET', `users/${myId()}`);
      } catch (e) {
        if (e.status === 404 && state.session) signOut('Your account no longer exists on this server. Sign up again to keep chatting.');
      }
    }
  }

  function scheduleReconnect() {
    if (state.closing || !state.session) return;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * 2 ** state.attempt);
    const delay = Math.round(base / 2 + Math.random() * (base / 2));
    state.attempt += 1;
    state.reconnectAt = Date.now() + delay;
    setConnection('reconnecting', 'Reconnecting…');
    const text = $('reconnect-text');
    const tick = () => {
      const left = Math.max(0, Math.ceil((state.reconnectAt - Date.now()) / 1000));
      text.textContent = left > 0 ? `Connection lost. Reconnecting in ${left} s…` : 'Connection lost. Reconnecting…';
    };
    tick();
    clearInterval(state.countdownTimer);
    state.countdownTimer = setInterval(tick, 500);
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = setTimeout(connect, delay);
  }

  function reconnectNow() {
    if (!state.session || state.ready) return;
    connect();
  }

  function stopSocket() {
    state.closing = true;
    clearTimeout(state.reconnectTimer);
    clearInterval(state.countdownTimer);
    state.ready = false;
    if (state.ws) {
      const ws = state.ws;
      state.ws = null;
      ws.onclose = ws.onmessage = ws.onopen = ws.onerror = null;
      try {
        ws.close(1000, 'log out');
      } catch {
        /* ignore */
      }
    }
  }

  /** Keeps a quiet socket honest: ping it, and reconnect when nothing at all comes back. */
  function heartbeat() {
    if (!state.ready || !state.ws) return;
    const quiet = Date.now() - state.lastHeard;
    if (quiet > 2 * QUIET_MS) {
      const ws = state.ws;
      state.ws = null;
      state.ready = false;
      forgetPresence();
      ws.onclose = ws.onmessage = ws.onopen = ws.onerror = null;
      try {
        ws.close();
      } catch {
        /* ignore */
      }
      scheduleReconnect();
    } else if (quiet > QUIET_MS) {
      sendFrame({ type: 'ping' });
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Wiring

  function autosize() {
    const input = $('composer-input');
    input.style.height = 'auto';
    input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
    input.style.overflowY = input.scrollHeight > 160 ? 'auto' : 'hidden';
  }

  function openDeviceDialog() {
    if (!state.session) return;
    $('device-user-id').value = String(state.session.user.id);
    $('device-token').value = state.session.token || '(auth is off on this server: no token needed)';
    const dialog = $('device-dialog');
    if (typeof dialog.showModal === 'function') dialog.showModal();
  }

  async function copyToken() {
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

  function init() {
    $('tab-signup').addEventListener('click', () => selectTab('signup'));
    $('tab-token').addEventListener('click', () => selectTab('token'));
    $('signup-form').addEventListener('submit', onSignup);
    $('token-form').addEventListener('submit', onTokenSignin);
    $('logout').addEventListener('click', () => signOut(''));
    $('search').addEventListener('input', renderUsers);
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
    document.addEventListener('visibilitychange', maybeSendRead);
    window.addEventListener('online', reconnectNow);
    window.addEventListener('focus', maybeSendRead);
    setInterval(heartbeat, 5000);
    // Relative times ("last seen 3 min ago") and the directory (new sign-ups) stay fresh.
    setInterval(() => {
      if (!state.session) return;
      state.userItems.forEach((_, id) => updateUserItem(id));
      renderPeerHeader();
    }, 30000);
    setInterval(loadUsers, 60000);

    const saved = store.get(KEY_SESSION);
    if (saved && saved.user && typeof saved.user.id === 'number') {
      startSession(saved, { fresh: false });
    } else {
      showAuth('');
    }
  }

  init();
})();
