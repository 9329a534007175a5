// Groups: the "New group" dialog (a title and people picked from the directory search,
// POST /conversations/), the open group's header and member list (rename, add and remove for
// its owner and admins, leave for anyone), and the membership events of the stream (created, renamed,
// member_added, member_removed), which keep the inbox, the header and the list current.

import { api } from './api.js';
import { openChat, renderMembership } from './conversation.js';
import { convTitle, fetchConversation, markLeft, renderInbox, upsertConv } from './inbox.js';
import { mergeUsers } from './people.js';
import { renderTyping } from './receipts.js';
import { displayName, myId, nameOf, openConv, state } from './state.js';
import { $, h, paintAvatar, showError } from './view.js';

/** How long typing in a people search must pause before the directory is asked (ms). */
const SEARCH_DEBOUNCE_MS = 250;
const SEARCH_LIMIT = 20;
const ROLE_LABEL = { owner: 'Owner', admin: 'Admin', member: '' };

// ---------------------------------------------------------------------------------------------
// Picking people from the directory

/**
 * A people search: `input` asks the directory (`users/?q=`) once typing pauses, and lists the
 * matches in `results` as buttons (testid `testid`), leaving out `exclude()`; a click is `pick(user)`.
 */
function picker({ input, results, testid, exclude, pick }) {
  let timer = null;
  let generation = 0;
  const render = (users) => {
    const skip = exclude();
    results.replaceChildren(
      ...users
        .filter((u) => u.id !== myId() && !skip.has(u.id))
        .map((u) => {
          const button = h(
            'button',
            { type: 'button', class: 'pick', dataset: { testid, userId: String(u.id) }, onclick: () => pick(u) },
            h('span', { class: 'avatar small' }),
            h('span', { class: 'pick-name', text: displayName(u) }),
            h('span', { class: 'muted', text: `@${u.username}` }),
          );
          paintAvatar(button.querySelector('.avatar'), u);
          return button;
        }),
    );
  };
  const search = async () => {
    const q = input.value.trim();
    const mine = ++generation;
    if (!q) {
      results.replaceChildren();
      return;
    }
    try {
      const found = await api('GET', `users/?q=${encodeURIComponent(q)}&limit=${SEARCH_LIMIT}`);
      if (mine !== generation) return;
      mergeUsers(found);
      render(found);
    } catch (e) {
      if (e.status !== 401) showError(`Could not search people: ${e.message}`);
    }
  };
  input.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(search, SEARCH_DEBOUNCE_MS);
  });
  return {
    refresh: search,
    reset() {
      input.value = '';
      generation += 1;
      results.replaceChildren();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The "New group" dialog

/** People picked for the new group: id -> user. */
const chosen = new Map();
let groupPicker = null;

function renderChosen() {
  $('group-chosen').replaceChildren(
    ...[...chosen.values()].map((u) =>
      h(
        'span',
        { class: 'chip', dataset: { testid: 'group-chosen-item', userId: String(u.id) } },
        h('span', { text: displayName(u) }),
        h('button', { type: 'button', class: 'chip-x', 'aria-label': `Remove ${displayName(u)}`, text: '×', onclick: () => unchoose(u.id) }),
      ),
    ),
  );
}

function unchoose(id) {
  chosen.delete(id);
  renderChosen();
  groupPicker.refresh();
}

export function openGroupDialog() {
  if (!state.session) return;
  chosen.clear();
  renderChosen();
  groupPicker.reset();
  $('group-title').value = '';
  groupError('');
  const dialog = $('group-dialog');
  if (typeof dialog.showModal === 'function') dialog.showModal();
  $('group-title').focus();
}

function groupError(text) {
  const box = $('group-error');
  box.textContent = text || '';
  box.hidden = !text;
}

async function onCreateGroup(event) {
  event.preventDefault();
  const title = $('group-title').value.trim();
  if (!title) {
    groupError('Give the group a title.');
    return;
  }
  const button = $('group-create');
  button.disabled = true;
  groupError('');
  try {
    const conversation = await api('POST', 'conversations/', { creator_id: myId(), title, member_ids: [...chosen.keys()] });
    upsertConv(conversation);
    renderInbox();
    $('group-dialog').close();
    openChat({ conversationId: conversation.id });
  } catch (e) {
    groupError(e.message);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// The open group: header and member list

let memberPicker = null;

export function renderGroupHeader() {
  const entry = openConv();
  if (!entry) return;
  paintAvatar($('peer-avatar'), { id: -entry.id, display_name: convTitle(entry) });
  $('peer-name').textContent = convTitle(entry);
  $('peer-name').title = '';
  const status = $('peer-status');
  status.classList.remove('online');
  status.textContent = entry.left ? 'You are no longer a member' : `${entry.member_count} members`;
}

/** Fetches the open group's members (a summary has only their count). */
export async function loadMembers(id) {
  await fetchConversation(id);
  if (state.convId === id) {
    renderGroupHeader();
    renderMembers();
    renderMembership();
  }
}

function myRole(entry) {
  const me = entry && entry.members ? entry.members.find((m) => m.user_id === myId()) : null;
  return me ? me.role : null;
}

const canManage = (entry) => ['owner', 'admin'].includes(myRole(entry));

export function toggleMembers() {
  const panel = $('members-panel');
  const entry = openConv();
  if (panel.hidden && entry) {
    panel.hidden = false;
    $('conversation').classList.add('members-open');
    memberPicker.reset();
    $('rename-title').value = entry.title || '';
    renderMembers();
  } else {
    closeMembers();
  }
}

export function closeMembers() {
  $('members-panel').hidden = true;
  $('conversation').classList.remove('members-open');
}

export function renderMembers() {
  const entry = openConv();
  if (!entry || entry.kind !== 'group' || $('members-panel').hidden) return;
  const me = myId();
  const manage = canManage(entry) && !entry.left;
  const members = entry.members || [];
  $('members-count').textContent = entry.members ? `${members.length} members` : 'Loading…';
  $('member-list').replaceChildren(
    ...members.map((m) => {
      const row = h(
        'div',
        { class: 'member', dataset: { testid: 'member-item', userId: String(m.user_id), role: m.role } },
        h('span', { class: 'avatar small' }),
        h('span', { class: 'member-name', text: m.user_id === me ? `${nameOf(me)} (you)` : nameOf(m.user_id) }),
        h('span', { class: 'member-role muted', text: ROLE_LABEL[m.role] ?? m.role }),
        manage && m.user_id !== me && m.role !== 'owner'
          ? h('button', { type: 'button', class: 'link danger', dataset: { testid: 'member-remove' }, text: 'Remove', onclick: () => removeMember(entry.id, m.user_id) })
          : null,
      );
      paintAvatar(row.querySelector('.avatar'), state.users.get(m.user_id) || { id: m.user_id });
      return row;
    }),
  );
  $('member-add').hidden = !manage;
  $('rename-form').hidden = !manage;
  // The owner cannot leave while others remain (the server's rule): no button for it.
  $('leave-group').hidden = entry.left || (myRole(entry) === 'owner' && members.length > 1);
}

async function addMember(user) {
  const entry = openConv();
  if (!entry) return;
  try {
    const conversation = await api('POST', `conversations/${entry.id}/members`, { user_id: myId(), member_ids: [user.id] });
    upsertConv(conversation);
    memberPicker.reset();
    refreshOpenGroup();
  } catch (e) {
    showError(`Could not add ${displayName(user)}: ${e.message}`);
  }
}

async function removeMember(convId, memberId) {
  try {
    const result = await api('DELETE', `conversations/${convId}/members/${memberId}?user_id=${myId()}`);
    if (result && result.left) markLeft(convId);
    else if (result) upsertConv(result);
    refreshOpenGroup();
  } catch (e) {
    showError(memberId === myId() ? `Could not leave the group: ${e.message}` : `Could not remove ${nameOf(memberId)}: ${e.message}`);
  }
}

async function onRename(event) {
  event.preventDefault();
  const entry = openConv();
  const title = $('rename-title').value.trim();
  if (!entry || !title || title === entry.title) return;
  try {
    upsertConv(await api('PATCH', `conversations/${entry.id}`, { user_id: myId(), title }));
    refreshOpenGroup();
  } catch (e) {
    showError(`Could not rename the group: ${e.message}`);
  }
}

function leaveGroup() {
  const entry = openConv();
  if (entry) removeMember(entry.id, myId());
}

function refreshOpenGroup() {
  renderInbox();
  if (state.peerId !== null || state.convId === null) return;
  renderGroupHeader();
  renderMembers();
  renderMembership();
  renderTyping();
}

// ---------------------------------------------------------------------------------------------
// Membership events

/** `{"type": "conversation", "event", "conversation", "user_ids", "by", "seq"}`. */
export function onConversationEvent(frame) {
  const c = frame.conversation;
  if (!c || typeof c.id !== 'number') return;
  const ids = Array.isArray(frame.user_ids) ? frame.user_ids : [];
  if (frame.event === 'member_removed' && ids.includes(myId())) {
    markLeft(c.id);
  } else {
    upsertConv(c);
  }
  refreshOpenGroup();
}

export function initGroups() {
  groupPicker = picker({
    input: $('group-search'),
    results: $('group-results'),
    testid: 'group-candidate',
    exclude: () => new Set(chosen.keys()),
    pick(user) {
      chosen.set(user.id, user);
      renderChosen();
      groupPicker.refresh();
    },
  });
  memberPicker = picker({
    input: $('member-search'),
    results: $('member-results'),
    testid: 'member-candidate',
    exclude: () => new Set(((openConv() || {}).members || []).map((m) => m.user_id)),
    pick: addMember,
  });
  $('new-group').addEventListener('click', openGroupDialog);
  $('group-form').addEventListener('submit', onCreateGroup);
  $('group-cancel').addEventListener('click', () => $('group-dialog').close());
  $('members-button').addEventListener('click', toggleMembers);
  $('members-close').addEventListener('click', closeMembers);
  $('leave-group').addEventListener('click', leaveGroup);
  $('rename-form').addEventListener('submit', onRename);
}
