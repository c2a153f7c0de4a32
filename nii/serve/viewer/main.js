// The page: login, then the queue, the viewer and the decision panel wired
// together, the live event stream, and the keyboard shortcuts.

import { api, whenUnauthorized } from "./api.js";
import { CasePanel } from "./cases.js";
import { DecisionPanel } from "./decisions.js";
import { showAlerts, showFacts } from "./details.js";
import { $, $$, errorBanner } from "./dom.js";
import { bindShortcuts, shortcutHint, shortcuts } from "./keys.js";
import { Queue, followScans } from "./queue.js";
import { TOOLS, Viewer } from "./viewer.js";

const state = { user: null, live: null, openToken: 0 };

// -- messages ---------------------------------------------------------------------------------------------------------

const showError = errorBanner();

// -- the parts --------------------------------------------------------------------------------------------------------

const details = $("#details");
const viewer = new Viewer($("#viewer"), {
  onError: showError,
  // Keep the shortcut hint honest: CT keys only show for a CT scan.
  onChange: () => $$(".hint.ct-only").forEach((hint) => (hint.hidden = !viewer.isCt)),
});
const decisions = new DecisionPanel($("#decision"), $("#decision-dialog"), {
  user: () => state.user,
  onDecided: (scanId) => refresh(scanId),
});
const casePanel = new CasePanel($("#case"), $("#case-dialog"));
const queue = new Queue($("#queue"), { onSelect: (scan) => open(scan.scan_id), onError: showError });

/** Open a scan: its result and decisions first, so the boxes and the image arrive together. */
async function open(scanId) {
  const token = ++state.openToken;
  try {
    const detail = await api.scan(scanId);
    if (token === state.openToken) render(detail);
  } catch (err) {
    if (token !== state.openToken || err.status === 401) return;
    // The queue has moved to this scan: the panels must not go on offering
    // decisions on the one still drawn, which is no longer the selected one.
    viewer.clear();
    decisions.show(null, []);
    casePanel.show(null);
    showError(`The scan could not be opened: ${err.message}`);
  }
}

/** The open scan changed (analysed, decided): show it again, keeping the operator's view. */
function refresh(scanId) {
  if (queue.selectedId === scanId) open(scanId);
}

function render({ scan, result, decisions: history }) {
  viewer.show(scan, result);
  showFacts(details, scan, result);
  showAlerts(details, scan, result, { onFocus: focusAlert, highlighted: viewer.highlighted });
  decisions.show(scan, history);
  casePanel.show(scan);
}

function focusAlert(alert) {
  viewer.focusAlert(alert);
  for (const item of $$(".alert-item", details)) {
    item.setAttribute("aria-pressed", String(Number(item.dataset.alert) === alert.id));
  }
}

// -- keyboard ---------------------------------------------------------------------------------------------------------

const table = shortcuts({ viewer, queue, decisions, tools: TOOLS });
bindShortcuts(table, { enabled: () => state.user !== null && !$("#decision-dialog").open });
$("#shortcuts").replaceChildren(...shortcutHint(table));
viewer.onChange();

// -- live events ------------------------------------------------------------------------------------------------------

const LIVE_WORDS = { live: "Live", reconnecting: "Reconnecting…", offline: "Offline" };

function startLive() {
  state.live = followScans({
    onScan(scan) {
      queue.upsert(scan);
      if (scan.scan_id === queue.selectedId) refresh(scan.scan_id);
    },
    // On each (re)connection reload the list: changes while disconnected are not replayed.
    onOpen: () => queue.reload(),
    onState(live) {
      $("#live").dataset.state = live;
      $("#live").textContent = LIVE_WORDS[live];
      // Refused outright: perhaps the session ended; asking /api/me tells (and shows the login if so).
      if (live === "offline") api.me().catch((err) => err.status === 401 && leave("Your session has ended. Please log in again."));
    },
  });
}

// -- logging in and out -----------------------------------------------------------------------------------------------

function enter(user) {
  state.user = user;
  $("#who-name").textContent = user.username;
  $("#who-role").textContent = user.role.replaceAll("_", " ");
  $("#who").hidden = $("#logout").hidden = false;
  $("#report-link").hidden = !user.permissions.includes("read_reports");
  $("#login-view").hidden = true;
  $("#app").hidden = false;
  queue.reload();
  startLive();
}

// Carries the login form's message across the reload that ends a session.
const LOGIN_MESSAGE = "nii-login-message";

function leave(message = "") {
  if (state.user) {
    // A fresh page: nothing of this user's (open scan, panels, filters) is
    // left for the next one to act on.
    sessionStorage.setItem(LOGIN_MESSAGE, message);
    state.user = null;
    state.live?.close();
    window.location.reload();
    return;
  }
  state.live?.close();
  state.live = null;
  state.openToken += 1;
  if ($("#decision-dialog").open) $("#decision-dialog").close();
  queue.reset();
  viewer.clear();
  $("#live").dataset.state = "offline";
  $("#live").textContent = LIVE_WORDS.offline;
  $("#who").hidden = $("#logout").hidden = $("#report-link").hidden = true;
  $("#app").hidden = true;
  $("#login-view").hidden = false;
  $("#login-error").textContent = message;
  $("#login-error").hidden = !message;
  $("#login-password").value = "";
  $("#login-user").focus();
}

whenUnauthorized(() => state.user && leave("Your session has ended. Please log in again."));

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    enter(await api.login(form.username.value.trim(), form.password.value));
  } catch (err) {
    $("#login-error").textContent = err.status === 401 ? "Wrong user name or password." : err.message;
    $("#login-error").hidden = false;
  } finally {
    button.disabled = false;
  }
});

$("#logout").addEventListener("click", async () => {
  try {
    await api.logout();
  } catch {
    /* logged out here either way */
  }
  leave();
});

// Already logged in (the cookie lives on across reloads)?
api.me().then(enter, () => {
  const message = sessionStorage.getItem(LOGIN_MESSAGE) ?? "";
  sessionStorage.removeItem(LOGIN_MESSAGE);
  leave(message);
});
