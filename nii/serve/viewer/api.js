// The service's REST API, as the viewer uses it. The session is the HttpOnly
// cookie set by POST /api/session, so no token is ever handled here.

/** An API answer that was not 2xx; `message` is the service's own words (its "detail"). */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Called on any 401 after login (the session expired or was revoked), so the
// page can show the login form again instead of failing piece by piece.
let onUnauthorized = () => {};
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

const scanPath = (id) => `/api/scans/${encodeURIComponent(id)}`;

async function request(method, path, { json, form, body, expect = "json", quiet401 = false, signal } = {}) {
  const init = { method, credentials: "same-origin", headers: {}, signal };
  if (body !== undefined) {
    init.body = body; // FormData: the browser sets the multipart boundary
  } else if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = new URLSearchParams(form);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err; // superseded by a newer request: not an error to show
    throw new ApiError(0, "the service cannot be reached; check the network and try again");
  }
  if (!response.ok) {
    const message = await errorText(response);
    if (response.status === 401 && !quiet401) onUnauthorized();
    throw new ApiError(response.status, message);
  }
  if (expect === "blob") return response.blob();
  if (response.status === 204) return null;
  return response.json();
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    // FastAPI's validation errors: a list of {loc, msg}.
    if (Array.isArray(body.detail)) return body.detail.map((d) => `${(d.loc ?? []).slice(1).join(".")}: ${d.msg}`).join("; ");
  } catch {
    /* not JSON: fall through */
  }
  return `${response.status} ${response.statusText}`.trim();
}

export const api = {
  login: (username, password) => request("POST", "/api/session", { form: { username, password }, quiet401: true }),
  logout: () => request("DELETE", "/api/session", { quiet401: true }),
  me: () => request("GET", "/api/me", { quiet401: true }),

  /** {scans, total}, newest first; `filters` is {decision, status, limit, offset}. */
  scans(filters = {}) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(filters)) if (value !== "" && value != null) query.set(key, value);
    return request("GET", `/api/scans?${query}`);
  },
  scan: (id) => request("GET", scanPath(id)),

  /** The scan rendered by one tool, without boxes, as a PNG blob. */
  image(id, params, signal) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) if (value !== null && value !== undefined) query.set(key, value);
    return request("GET", `${scanPath(id)}/image?${query}`, { expect: "blob", signal });
  },
  outputUrl: (id, name) => `${scanPath(id)}/${name}`,

  decide: (id, decision) => request("POST", `${scanPath(id)}/decisions`, { json: decision }),

  /** Cases: {cases} filtered by {scan_id, status}; one case; open, change, note, attach. */
  cases(filters = {}) {
    return request("GET", `/api/cases?${new URLSearchParams(filters)}`);
  },
  caseById: (id) => request("GET", `/api/cases/${id}`),
  openCase: (body) => request("POST", "/api/cases", { json: body }),
  changeCase: (id, body) => request("PATCH", `/api/cases/${id}`, { json: body }),
  addNote: (id, text) => request("POST", `/api/cases/${id}/notes`, { json: { text } }),
  attach(id, file) {
    const body = new FormData();
    body.append("file", file);
    return request("POST", `/api/cases/${id}/attachments`, { body });
  },

  /** Live scan changes (Server-Sent Events); the session cookie goes along. */
  events: () => new EventSource("/api/scans/events"),
};
