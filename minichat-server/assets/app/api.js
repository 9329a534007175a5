// The REST API as the page uses it: the server root, the bearer token, and errors carrying the
// server's own `detail` (a sentence, or for 422 the list of `msg`s) so the page can show it.

import { state } from './state.js';

/** The server root, resolved from this page's address (`…/app/` → `…/`). */
export const BASE = new URL('..', location.href);

/** The `detail` of an error body as one line: a string, or for 422 the list of `msg`s. */
export function describeDetail(detail, status) {
  if (typeof detail === 'string' && detail) return detail;
  if (Array.isArray(detail)) {
    const msgs = detail.map((d) => (d && typeof d.msg === 'string' ? d.msg : JSON.stringify(d)));
    if (msgs.length) return msgs.join('; ');
  }
  if (detail && typeof detail === 'object') return JSON.stringify(detail);
  return status ? `Request failed (HTTP ${status})` : 'Request failed';
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/** What a 401 does to the signed-in session (main.js: sign out with the detail). */
let unauthorized = () => {};
export function onUnauthorized(handler) {
  unauthorized = handler;
}

/**
 * Calls the REST API as the signed-in user. Throws ApiError with the server's detail; a 401
 * ends the session and goes back to the sign-up screen with that detail.
 */
export async function api(method, path, body, { session = state.session, logoutOn401 = true } = {}) {
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
      unauthorized(`Signed out: ${detail}`);
    }
    throw new ApiError(response.status, detail);
  }
  return data;
}
