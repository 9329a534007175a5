// Small building blocks of the page's DOM shared by the other modules: element lookup and
// creation (user content only ever as textContent, never as HTML), dates and times, avatars,
// the error banner and composer hint, the connection status, and scrolling.

import { displayName } from './state.js';

export const $ = (id) => document.getElementById(id);

/** Creates an element; `text` is set with textContent, so it is never parsed as HTML. */
export function h(tag, props, ...children) {
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

// ---------------------------------------------------------------------------------------------
// Names, avatars, times

function initials(name) {
  // Words that start with a letter or digit ("Tea party (renamed)" is TP), else any word.
  const words = String(name || '?').trim().split(/\s+/).filter(Boolean);
  const named = words.filter((w) => /^[\p{L}\p{N}]/u.test(w));
  const parts = named.length ? named : words;
  const letters = parts.length > 1 ? parts[0][0] + parts[parts.length - 1][0] : (parts[0] || '?').slice(0, 2);
  return letters.toUpperCase();
}

function avatarColor(id) {
  const hues = [222, 262, 292, 330, 12, 32, 150, 178, 200];
  const hue = hues[Math.abs(Number(id) || 0) % hues.length];
  return `hsl(${hue} 65% 52%)`;
}

export function paintAvatar(node, user) {
  node.textContent = initials(displayName(user));
  node.style.background = avatarColor(user ? user.id : 0);
}

export const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric' });
export const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

export function dayLabel(date) {
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

export function shortTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  return d.toDateString() === new Date().toDateString() ? timeFmt.format(d) : dayFmt.format(d).split(',')[0];
}

export function lastSeenText(presence) {
  if (!presence) return '';
  if (presence.online) return 'online';
  return presence.last_seen ? `last seen ${ago(presence.last_seen)}` : 'offline';
}

// ---------------------------------------------------------------------------------------------
// Notices and the connection status

let errorTimer = null;
export function showError(text) {
  $('error-text').textContent = text;
  $('error-banner').hidden = false;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(hideError, 12000);
}

export function hideError() {
  $('error-banner').hidden = true;
}

export function setHint(text) {
  $('composer-hint').textContent = text || '';
}

/** `status` is connecting, online or reconnecting; the banner shows while reconnecting. */
export function setConnection(status, text) {
  const conn = $('conn');
  conn.dataset.status = status;
  $('conn-text').textContent = text;
  const banner = $('reconnect-banner');
  banner.hidden = status !== 'reconnecting';
  document.body.dataset.connection = status;
}

export function setReconnectText(text) {
  $('reconnect-text').textContent = text;
}

// ---------------------------------------------------------------------------------------------
// The message pane and the composer

export function isNearBottom() {
  const pane = $('messages');
  return pane.scrollHeight - pane.scrollTop - pane.clientHeight < 80;
}

export function scrollToBottom() {
  const pane = $('messages');
  pane.scrollTop = pane.scrollHeight;
  $('jump').hidden = true;
}

export function autosize() {
  const input = $('composer-input');
  input.style.height = 'auto';
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
  input.style.overflowY = input.scrollHeight > 160 ? 'auto' : 'hidden';
}
