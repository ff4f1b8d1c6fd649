// The review-sentiment page: no framework, no build step, no request to any host but the function URLs that
// config.json names (written by Terraform in the cloud and by `make up` locally).
"use strict";

const MAX_CHARS = 5000;
const PAGE_SIZE = 10;
// An Analyze that meets a 503 or no answer at all is sent again, at most this often, with the same
// Idempotency-Key: predict then stores it once, and answers a repeat with what it stored the first time.
const MAX_RETRIES = 2;
// Retry-After beyond this is longer than anyone waits for a click: the page says when to try instead.
const MAX_RETRY_WAIT_S = 10;

const $ = (id) => document.getElementById(id);
const state = { config: null, prediction: null, pageTokens: [null], page: 0 };

class ServiceError extends Error {
  constructor(status, code, message, retryAfterS) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfterS = retryAfterS; // null when the answer named no wait
  }
}

// Every error on the page reads the same way, "<what went wrong>. <what to do>.", and is rendered by showError.
const ERROR_BY_CODE = {
  invalid_text: ["The review must be 1 to 5,000 characters of ordinary text", "Edit it and try again"],
  body_too_large: ["The review is too long: the limit is 5,000 characters", "Shorten it and try again"],
  feedback_conflict: ["This prediction already has a different answer", "Only the first answer counts"],
  invalid_feedback_token: ["This answer could not be verified", "Analyze the review again"],
  prediction_not_found: ["This prediction no longer exists", "Analyze the review again"],
  idempotency_key_reused: ["The service took this for a repeat of another review", "Analyze the review again"],
};

function describe(error, service) {
  if (!(error instanceof ServiceError)) {
    const action = "Check your connection (or that the service is running) and try again";
    return { problem: `Cannot reach the ${service} service`, action };
  }
  if (ERROR_BY_CODE[error.code]) {
    const [problem, action] = ERROR_BY_CODE[error.code];
    return { problem, action };
  }
  if (error.status === 503) {
    const wait = error.retryAfterS ? `in ${plural(error.retryAfterS, "second")}` : "in a few seconds";
    return { problem: `The ${service} service is unavailable right now`, action: `Try again ${wait}` };
  }
  const detail = error.code ? `${error.code}: ${error.message}` : `HTTP ${error.status}`;
  return { problem: `The ${service} service answered with an error (${detail})`, action: "Try again later" };
}

function showError(element, { problem, action }) {
  const what = document.createElement("strong");
  what.textContent = `${problem}.`;
  element.replaceChildren(what, ` ${action}.`);
  element.hidden = false;
}

function clearError(element) {
  element.replaceChildren();
  element.hidden = true;
}

// Seconds from a Retry-After header (delta-seconds or an HTTP date); null if absent or unreadable.
function retryAfterSeconds(value) {
  if (!value) return null;
  const seconds = /^\d+$/.test(value.trim()) ? Number(value) : (Date.parse(value) - Date.now()) / 1000;
  return Number.isFinite(seconds) ? Math.max(0, Math.ceil(seconds)) : null;
}

async function call(url, options = {}) {
  let response;
  try {
    // Only requests with a body say JSON: a plain GET stays a "simple" request, with no CORS preflight.
    const headers = { ...(options.body ? { "Content-Type": "application/json" } : {}), ...options.headers };
    response = await fetch(url, { ...options, headers });
  } catch (exc) {
    throw new TypeError(`network: ${exc}`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (exc) {
    body = null;
  }
  if (!response.ok) {
    const error = (body && body.error) || {};
    const retryAfterS = retryAfterSeconds(response.headers.get("Retry-After"));
    throw new ServiceError(response.status, error.code || "", error.message || response.statusText, retryAfterS);
  }
  return body;
}

// How long to wait before sending again, or null to give up: only a 503 or no answer is worth repeating.
function retryDelayS(error, retriesDone) {
  if (retriesDone >= MAX_RETRIES) return null;
  if (error instanceof ServiceError && error.status !== 503) return null;
  const told = error instanceof ServiceError ? error.retryAfterS : null;
  const wait = told === null ? retriesDone + 1 : told;
  return wait <= MAX_RETRY_WAIT_S ? wait : null;
}

// call(), repeated with the very same options (so the same Idempotency-Key) while retryDelayS allows.
async function callWithRetries(url, options, onRetry) {
  for (let retriesDone = 0; ; retriesDone += 1) {
    try {
      return await call(url, options);
    } catch (error) {
      const waitS = retryDelayS(error, retriesDone);
      if (waitS === null) throw error;
      onRetry(error, waitS, retriesDone + 1);
      await new Promise((resolve) => setTimeout(resolve, waitS * 1000));
    }
  }
}

// 32 hex characters from the browser's CSPRNG (crypto.randomUUID needs a secure context; this does not).
function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

function show(element, text) {
  element.textContent = text;
  element.hidden = !text;
}

function busy(button, isBusy, label) {
  button.disabled = isBusy;
  button.setAttribute("aria-busy", String(isBusy));
  if (label) button.textContent = label;
}

function percent(value) {
  return value === null || value === undefined ? "–" : `${(value * 100).toFixed(1)}%`;
}

function plural(count, noun) {
  return `${count.toLocaleString("en")} ${count === 1 ? noun : `${noun}s`}`;
}

// --- Analyze -----------------------------------------------------------------------------------------------

function updateCount() {
  const length = $("review").value.trim().length;
  $("review-count").textContent = `${length} / ${MAX_CHARS}`;
}

async function analyze(event) {
  event.preventDefault();
  const text = $("review").value.trim();
  // The answer on screen belongs to the previous text: whatever this click leads to, it no longer applies.
  clearError($("analyze-error"));
  $("result").hidden = true;
  state.prediction = null;
  if (!text) {
    showError($("analyze-error"), { problem: "There is no review to analyze", action: "Write a review first" });
    $("review").focus();
    return;
  }
  if (text.length > MAX_CHARS) {
    const problem = `The review is too long: ${text.length.toLocaleString("en")} characters, the limit is 5,000`;
    showError($("analyze-error"), { problem, action: "Shorten it and try again" });
    $("review").focus();
    return;
  }
  const button = $("analyze");
  const progress = $("analyze-progress");
  busy(button, true, "Analyzing…");
  // One key per click, kept for this click's retries: a retry of a request that was stored replays it.
  const headers = { "Idempotency-Key": newIdempotencyKey() };
  const options = { method: "POST", body: JSON.stringify({ text }), headers };
  const onRetry = (error, waitS, retry) => {
    const why = error instanceof ServiceError ? "is unavailable" : "did not answer";
    busy(button, true, "Retrying…");
    const when = `retrying in ${plural(waitS, "second")} (retry ${retry} of ${MAX_RETRIES})`;
    show(progress, `The prediction service ${why}; ${when}…`);
  };
  try {
    const prediction = await callWithRetries(state.config.predict_url, options, onRetry);
    renderPrediction(prediction);
    refreshStatistics();
    loadPage(0);
  } catch (error) {
    showError($("analyze-error"), describe(error, "prediction"));
  } finally {
    show(progress, "");
    busy(button, false, "Analyze");
  }
}

function renderPrediction(prediction) {
  state.prediction = prediction;
  const positive = prediction.is_positive.model_answered;
  const label = $("result-label");
  label.textContent = positive ? "Positive" : "Negative";
  label.className = positive ? "positive" : "negative";
  const bar = $("result-bar");
  bar.style.width = `${(prediction.probability * 100).toFixed(1)}%`;
  bar.className = positive ? "bar-fill" : "bar-fill negative";
  $("result-bar-label").setAttribute("aria-label", `probability positive ${percent(prediction.probability)}`);
  $("result-probability").textContent = `Probability that the review is positive: ${percent(prediction.probability)}`;
  const details = prediction.details;
  $("result-model").textContent =
    `Answered by ${details.model_name} version ${details.model_version} (run ${details.mlflow_run_id.slice(0, 12)})`;
  for (const id of ["feedback-yes", "feedback-no"]) $(id).disabled = false;
  show($("feedback-status"), "");
  clearError($("feedback-error"));
  $("result").hidden = false;
}

async function sendFeedback(agrees) {
  const prediction = state.prediction;
  if (!prediction) return;
  const modelSaid = prediction.is_positive.model_answered;
  const body = {
    prediction_id: prediction.id,
    is_positive_user_answered: agrees ? modelSaid : !modelSaid,
    feedback_token: prediction.feedback_token,
  };
  const buttons = [$("feedback-yes"), $("feedback-no")];
  buttons.forEach((b) => busy(b, true));
  clearError($("feedback-error"));
  show($("feedback-status"), "Sending…");
  try {
    await call(state.config.feedback_url, { method: "POST", body: JSON.stringify(body) });
    show($("feedback-status"), "Thanks, your answer counted.");
    await refreshStatistics();
    loadPage(state.page);
  } catch (error) {
    show($("feedback-status"), "");
    showError($("feedback-error"), describe(error, "feedback"));
    buttons.forEach((b) => busy(b, false));
    return;
  }
  buttons.forEach((b) => b.setAttribute("aria-busy", "false"));
}

// --- Statistics --------------------------------------------------------------------------------------------

async function refreshStatistics() {
  try {
    const { statistics, deployment } = await call(`${state.config.feedback_url}/statistics`);
    clearError($("stats-error"));
    renderStatistics(statistics, deployment);
  } catch (error) {
    // Numbers from an earlier answer would read as current: the card shows the error alone. (toggleAttribute:
    // the chart is an SVG element, which has no `hidden` property.)
    for (const id of ["stats-overall", "stats-counts", "stats-deployment", "stats-chart", "stats-table"]) {
      $(id).toggleAttribute("hidden", true);
    }
    showError($("stats-error"), describe(error, "statistics"));
  }
}

// The versions in front of traffic ({version: "stable" | "candidate"}) and a sentence saying how traffic is
// split; nothing when the answer has no deployment (its document could not be read) or no version serves yet.
function trafficSplit(deployment) {
  if (!deployment || deployment.stable_version === null) return { roles: {}, sentence: "" };
  const { stable_version: stable, candidate_version: candidate, candidate_percent: share } = deployment;
  if (candidate === null) return { roles: { [stable]: "stable" }, sentence: `Version ${stable} serves all traffic.` };
  return {
    roles: { [stable]: "stable", [candidate]: "candidate" },
    sentence: `Version ${stable} is stable (${100 - share}%); version ${candidate} is being rolled out (${share}%).`,
  };
}

function renderStatistics(statistics, deployment) {
  const rate = statistics.feedback === 0 ? "No feedback yet" : `${percent(statistics.correctness_rate)} right`;
  show($("stats-overall"), rate);
  const predictions = plural(statistics.predictions, "prediction");
  show($("stats-counts"), `${predictions}, ${statistics.feedback} with feedback, ${statistics.correct} correct.`);
  const { roles, sentence } = trafficSplit(deployment);
  show($("stats-deployment"), sentence);
  const versions = Object.keys(statistics.by_model_version).sort((a, b) => Number(a) - Number(b));
  const tbody = $("stats-table").querySelector("tbody");
  tbody.replaceChildren();
  for (const version of versions) {
    const s = statistics.by_model_version[version];
    const row = document.createElement("tr");
    for (const value of [`v${version}`, s.predictions, s.feedback, s.correct, percent(s.correctness_rate)]) {
      const cell = document.createElement("td");
      cell.textContent = String(value);
      row.append(cell);
    }
    if (roles[version]) {
      // A word, not only a colour: read out with the version ("v4 candidate") and legible without colour.
      const role = document.createElement("span");
      role.className = `role ${roles[version]}`;
      role.textContent = roles[version];
      row.firstChild.append(" ", role);
    }
    tbody.append(row);
  }
  $("stats-table").hidden = versions.length === 0;
  drawChart(versions, statistics.by_model_version);
}

// A bar per version: the share of its answered predictions that the model got right.
function drawChart(versions, byVersion) {
  const svg = $("stats-chart");
  const title = svg.querySelector("title");
  svg.replaceChildren(title);
  const rated = versions.filter((v) => byVersion[v].correctness_rate !== null);
  // An SVG element has no `hidden` property: the attribute itself is set.
  svg.toggleAttribute("hidden", rated.length === 0);
  if (rated.length === 0) return;
  const ns = "http://www.w3.org/2000/svg";
  const rowHeight = 26;
  const left = 56;
  const width = 400;
  const barWidth = width - left - 60;
  svg.setAttribute("viewBox", `0 0 ${width} ${rated.length * rowHeight + 8}`);
  rated.forEach((version, index) => {
    const rate = byVersion[version].correctness_rate;
    const y = index * rowHeight + 4;
    const add = (tag, attributes, text) => {
      const node = document.createElementNS(ns, tag);
      for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
      if (text !== undefined) node.textContent = text;
      svg.append(node);
    };
    add("text", { x: 0, y: y + 15 }, `v${version}`);
    add("rect", { x: left, y, width: barWidth, height: 18, class: "axis", fill: "#e6e9ee" });
    add("rect", { x: left, y, width: Math.max(1, rate * barWidth), height: 18, class: "value" });
    add("text", { x: left + barWidth + 6, y: y + 15 }, percent(rate));
  });
}

// --- Recent predictions ------------------------------------------------------------------------------------

async function loadPage(page) {
  clearError($("recent-error"));
  const token = state.pageTokens[page];
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (token) query.set("page_token", token);
  const more = $("recent-more");
  busy(more, true);
  try {
    const body = await call(`${state.config.feedback_url}/predictions?${query}`);
    state.page = page;
    state.pageTokens[page + 1] = body.next_page_token;
    renderRecent(body.predictions, page);
    more.hidden = !body.next_page_token;
  } catch (error) {
    showError($("recent-error"), describe(error, "feedback"));
  } finally {
    busy(more, false);
  }
}

function renderRecent(predictions, page) {
  const list = $("recent-list");
  list.replaceChildren();
  $("recent-empty").hidden = !(predictions.length === 0 && page === 0);
  $("recent-newest").hidden = page === 0;
  list.start = page * PAGE_SIZE + 1;
  for (const prediction of predictions) {
    const item = document.createElement("li");
    const text = document.createElement("p");
    text.className = "text";
    text.textContent = prediction.text; // textContent: reviews are data, never markup
    const meta = document.createElement("p");
    meta.className = "meta";
    const positive = prediction.is_positive.model_answered;
    const tag = document.createElement("span");
    tag.className = positive ? "tag positive" : "tag negative";
    tag.textContent = positive ? "Positive" : "Negative";
    const user = prediction.is_positive.user_answered;
    const verdict = user === null ? "no feedback" : user === positive ? "user agreed" : "user disagreed";
    const when = new Date(prediction.details.timestamp).toLocaleString();
    meta.append(tag, ` ${percent(prediction.probability)} · v${prediction.details.model_version} · ${verdict} · ${when}`);
    item.append(text, meta);
    list.append(item);
  }
}

// --- Start -------------------------------------------------------------------------------------------------

async function start() {
  try {
    const response = await fetch("config.json", { cache: "no-store" });
    state.config = await response.json();
    if (!state.config.predict_url || !state.config.feedback_url) throw new Error("incomplete");
  } catch (exc) {
    const message = {
      problem: "The page cannot read its configuration (config.json), so it cannot reach the services",
      action: "Reload the page; if that does not help, the site was deployed without it",
    };
    for (const id of ["analyze-error", "stats-error", "recent-error"]) showError($(id), message);
    $("stats-overall").hidden = true;
    $("analyze").disabled = true;
    return;
  }
  state.config.predict_url = state.config.predict_url.replace(/\/+$/, "");
  state.config.feedback_url = state.config.feedback_url.replace(/\/+$/, "");
  $("analyze-form").addEventListener("submit", analyze);
  $("review").addEventListener("input", updateCount);
  $("review").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("analyze-form").requestSubmit();
  });
  $("feedback-yes").addEventListener("click", () => sendFeedback(true));
  $("feedback-no").addEventListener("click", () => sendFeedback(false));
  $("stats-refresh").addEventListener("click", refreshStatistics);
  $("recent-more").addEventListener("click", () => loadPage(state.page + 1));
  $("recent-newest").addEventListener("click", () => loadPage(0));
  updateCount();
  refreshStatistics();
  loadPage(0);
}

document.addEventListener("DOMContentLoaded", start);
