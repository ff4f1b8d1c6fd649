// The review-sentiment page: no framework, no build step, no request to any host but the function URLs that
// config.json names (written by Terraform in the cloud and by `make up` locally).
"use strict";

const MAX_CHARS = 5000;
// "Your recent predictions": this browser's own, kept in localStorage with their feedback tokens (so they can
// still be answered after a reload), newest first, at most this many. Nobody else's reviews are ever fetched.
const RECENT_KEY = "review-sentiment.recent";
const MAX_RECENT = 20;
const DAY_MS = 24 * 60 * 60 * 1000;
// An Analyze that meets a 503 or no answer at all is sent again, at most this often, with the same
// Idempotency-Key: predict then stores it once, and answers a repeat with what it stored the first time.
const MAX_RETRIES = 2;
// Retry-After beyond this is longer than anyone waits for a click: the page says when to try instead.
const MAX_RETRY_WAIT_S = 10;

const $ = (id) => document.getElementById(id);
// roles: {version: "stable" | "candidate"} from /statistics' deployment; monitoring: the last /monitoring answer.
const state = { config: null, prediction: null, roles: {}, monitoring: null };

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
  // explain: the answer also says which words weighed most (shown under the verdict).
  const options = { method: "POST", body: JSON.stringify({ text, explain: true }), headers };
  const onRetry = (error, waitS, retry) => {
    const why = error instanceof ServiceError ? "is unavailable" : "did not answer";
    busy(button, true, "Retrying…");
    const when = `retrying in ${plural(waitS, "second")} (retry ${retry} of ${MAX_RETRIES})`;
    show(progress, `The prediction service ${why}; ${when}…`);
  };
  try {
    const prediction = await callWithRetries(state.config.predict_url, options, onRetry);
    renderPrediction(prediction);
    remember(prediction);
    refreshStatistics();
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
  renderExplanation(prediction.text, details.explanation);
  for (const id of ["feedback-yes", "feedback-no"]) $(id).disabled = false;
  show($("feedback-status"), "");
  clearError($("feedback-error"));
  $("result").hidden = false;
}

// The model's tokens: what training.preprocess's default Tokenizer keeps (SPLIT_APOSTROPHES_PATTERN: "didn't" gives
// "didn", "'t"), lower-cased. A term of a model that kept "didn't" whole is split the same way before matching, so
// both highlight. toLowerCase differs from the graph's StringNormalizer on a few characters (e.g. 'İ'): such a word
// is then just not highlighted.
const TOKEN = /[\p{L}\p{N}_]+|'[\p{L}\p{N}_]+/gu;

function signed(weight) {
  return `${weight >= 0 ? "+" : "−"}${Math.abs(weight).toFixed(2)}`;
}

// The review text with each token of the explanation's terms marked, in the direction of the heaviest term that
// covers it (a token may be a term alone and part of a bigram term); and the terms as a list, for reading out.
function renderExplanation(text, explanation) {
  const box = $("explanation");
  const list = $("explanation-terms");
  const shown = $("explanation-text");
  list.replaceChildren();
  shown.replaceChildren();
  // Absent when the serving model cannot explain (exported before explanations), or on a replay by another model.
  if (!explanation || explanation.terms.length === 0) {
    box.hidden = true;
    return;
  }
  const tokens = [...text.matchAll(TOKEN)].map((m) => ({ start: m.index, end: m.index + m[0].length, word: m[0].toLowerCase() }));
  const cover = new Array(tokens.length).fill(null); // the heaviest term on each token
  const claim = (i, term) => {
    if (!cover[i] || Math.abs(term.weight) > Math.abs(cover[i].weight)) cover[i] = term;
  };
  for (const term of explanation.terms) {
    const parts = term.term.split(" ").flatMap((part) => part.match(TOKEN) ?? []);
    for (let i = 0; i + parts.length <= tokens.length; i += 1) {
      if (parts.every((part, k) => tokens[i + k].word === part)) parts.forEach((_, k) => claim(i + k, term));
    }
  }
  let at = 0;
  tokens.forEach((token, i) => {
    const term = cover[i];
    if (!term) return;
    shown.append(text.slice(at, token.start));
    const mark = document.createElement("mark");
    mark.className = term.weight >= 0 ? "toward-positive" : "toward-negative";
    mark.title = `${term.term}: ${signed(term.weight)}`;
    mark.textContent = text.slice(token.start, token.end);
    shown.append(mark);
    at = token.end;
  });
  shown.append(text.slice(at));
  for (const term of explanation.terms) {
    const item = document.createElement("li");
    item.className = term.weight >= 0 ? "toward-positive" : "toward-negative";
    const direction = term.weight >= 0 ? "towards positive" : "towards negative";
    item.textContent = `“${term.term}” ${signed(term.weight)} (${direction})`;
    list.append(item);
  }
  box.hidden = false;
}

// POST the user's answer for one prediction (its own feedback token proves it was made here); remembered on success.
async function postFeedback(prediction, agrees) {
  const modelSaid = prediction.is_positive.model_answered;
  const answer = agrees ? modelSaid : !modelSaid;
  const body = { prediction_id: prediction.id, is_positive_user_answered: answer, feedback_token: prediction.feedback_token };
  await call(state.config.feedback_url, { method: "POST", body: JSON.stringify(body) });
  rememberAnswer(prediction.id, answer);
}

async function sendFeedback(agrees) {
  const prediction = state.prediction;
  if (!prediction) return;
  const buttons = [$("feedback-yes"), $("feedback-no")];
  buttons.forEach((b) => busy(b, true));
  clearError($("feedback-error"));
  show($("feedback-status"), "Sending…");
  try {
    await postFeedback(prediction, agrees);
    show($("feedback-status"), "Thanks, your answer counted.");
    await refreshStatistics();
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
  state.roles = roles;
  renderMonitoring(); // the versions in front of traffic come first there
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

// --- Monitoring --------------------------------------------------------------------------------------------

const SVG_NS = "http://www.w3.org/2000/svg";
const HOUR_MS = 3600 * 1000;

// An SVG element with attributes, and text if given.
function svgNode(tag, attributes = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

// A chart's SVG: an image to assistive technology, named by its <title> and described by its <desc>.
function chartSvg(className, id, titleText, description, height) {
  const svg = svgNode("svg", {
    class: `chart ${className}`,
    role: "img",
    viewBox: `0 0 400 ${height}`,
    "aria-labelledby": `${id}-title`,
    "aria-describedby": `${id}-desc`,
  });
  svg.append(svgNode("title", { id: `${id}-title` }, titleText), svgNode("desc", { id: `${id}-desc` }, description));
  return svg;
}

// A legend in HTML: one swatch (a CSS class gives its colour or line) and a label per series.
function legend(entries) {
  const list = document.createElement("ul");
  list.className = "legend";
  for (const [swatchClass, label] of entries) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = `swatch ${swatchClass}`;
    swatch.setAttribute("aria-hidden", "true");
    item.append(swatch, label);
    list.append(item);
  }
  return list;
}

function shares(counts) {
  const total = counts.reduce((sum, n) => sum + n, 0);
  return counts.map((n) => (total ? n / total : 0));
}

function clock(iso) {
  return new Date(iso).toLocaleString("en", { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

async function refreshMonitoring() {
  const button = $("monitoring-refresh");
  busy(button, true);
  try {
    const { monitoring } = await call(`${state.config.feedback_url}/monitoring`);
    state.monitoring = monitoring;
    clearError($("monitoring-error"));
    renderMonitoring();
  } catch (error) {
    // As for the statistics: numbers from an earlier answer would read as current.
    state.monitoring = null;
    $("monitoring-summary").hidden = true;
    $("monitoring-versions").hidden = true;
    showError($("monitoring-error"), describe(error, "monitoring"));
  } finally {
    busy(button, false);
  }
}

// The versions in front of traffic first (stable, then the candidate), then the others, newest first.
function monitoredOrder(versions, roles) {
  const rank = (v) => ({ stable: 0, candidate: 1 })[roles[v]] ?? 2;
  const newestFirst = (a, b) => {
    const [x, y] = [Number(a), Number(b)];
    return Number.isNaN(x) || Number.isNaN(y) ? b.localeCompare(a) : y - x;
  };
  return versions.sort((a, b) => rank(a) - rank(b) || newestFirst(a, b));
}

function renderMonitoring() {
  const monitoring = state.monitoring;
  if (!monitoring) return;
  const hours = plural(monitoring.window_hours, "hour");
  // A version in front of traffic with no prediction in these hours is listed too: its silence is news.
  const versions = monitoredOrder(
    [...new Set([...Object.keys(monitoring.versions), ...Object.keys(state.roles)])],
    state.roles,
  );
  show(
    $("monitoring-summary"),
    versions.length === 0
      ? `No predictions in the last ${hours}.`
      : `Each version's answers in the last ${hours}, compared with its answers on the validation set.`,
  );
  const list = $("monitoring-versions");
  list.replaceChildren(...versions.map((version, index) => versionPanel(version, index, monitoring)));
  list.hidden = versions.length === 0;
}

// The drift state in words: {kind: "ok" | "drift" | "waiting" | "unknown", text}.
function driftState(statistics, minPredictions) {
  if (statistics.reference_probability_histogram === null) {
    return { kind: "unknown", text: "No reference: this version was staged before monitoring, so nothing is compared" };
  }
  if (!statistics.enough_data) {
    const counted = `${statistics.predictions.toLocaleString("en")} of ${minPredictions.toLocaleString("en")}`;
    return { kind: "waiting", text: `Not enough predictions yet (${counted})` };
  }
  if (statistics.drift) return { kind: "drift", text: `Drift: ${statistics.reasons.join("; ")}` };
  return { kind: "ok", text: "No drift: scores look like validation" };
}

function versionPanel(version, index, monitoring) {
  const id = `monitor-${index}`;
  const panel = document.createElement("article");
  panel.className = "monitor";
  panel.setAttribute("aria-labelledby", `${id}-heading`);
  const heading = document.createElement("h3");
  heading.id = `${id}-heading`;
  heading.textContent = `Version ${version}`;
  if (state.roles[version]) {
    const role = document.createElement("span");
    role.className = `role ${state.roles[version]}`;
    role.textContent = state.roles[version];
    heading.append(" ", role);
  }
  panel.append(heading);
  const statistics = monitoring.versions[version];
  if (!statistics) {
    const none = document.createElement("p");
    none.className = "hint";
    none.textContent = `No predictions in the last ${plural(monitoring.window_hours, "hour")}.`;
    panel.append(none);
    return panel;
  }
  const { kind, text } = driftState(statistics, monitoring.min_predictions);
  const verdict = document.createElement("p");
  verdict.className = `drift-state ${kind}`;
  verdict.textContent = text;
  panel.append(verdict);
  if (kind === "drift") {
    // bench/drift.py: on traffic unlike validation the label-free estimate runs 6 to 20 points too high.
    const caveat = document.createElement("p");
    caveat.className = "hint estimate-caveat";
    caveat.textContent = "While traffic drifts the estimated accuracy is optimistic: trust the feedback accuracy.";
    panel.append(caveat);
  }
  if (statistics.alert && statistics.alert.drift) {
    const alert = document.createElement("p");
    alert.className = "hint";
    alert.textContent = `The scheduled check raised a drift alert on ${clock(statistics.alert.since)}.`;
    panel.append(alert);
  }
  const facts = [plural(statistics.predictions, "prediction")];
  if (statistics.positive_rate !== null) {
    const reference = statistics.reference_positive_rate;
    const validation = reference === null ? "" : ` (validation ${percent(reference)})`;
    facts.push(`${percent(statistics.positive_rate)} positive${validation}`);
  }
  if (statistics.score_psi !== null) facts.push(`score PSI ${statistics.score_psi.toFixed(3)}`);
  const numbers = document.createElement("p");
  numbers.className = "hint";
  numbers.textContent = facts.join(" · ");
  panel.append(numbers);
  if (statistics.predictions === 0) return panel;
  const charts = document.createElement("div");
  charts.className = "monitor-charts";
  charts.append(
    histogramFigure(`${id}-histogram`, version, statistics, monitoring.window_hours),
    accuracyFigure(`${id}-accuracy`, version, statistics, monitoring),
  );
  panel.append(charts);
  return panel;
}

// Live vs validation probabilities: two bars per bin of 0.05, heights as shares of each side's total.
function histogramFigure(id, version, statistics, windowHours) {
  const live = shares(statistics.probability_histogram);
  const reference = statistics.reference_probability_histogram && shares(statistics.reference_probability_histogram);
  const bins = live.length;
  const [left, right, top, bottom, height] = [40, 8, 8, 22, 150];
  const plotWidth = 400 - left - right;
  const plotHeight = height - top - bottom;
  const highest = Math.max(0.01, ...live, ...(reference || []));
  const svg = chartSvg(
    "histogram",
    id,
    `Probabilities version ${version} answered: live against validation`,
    `Share of answers in each of ${bins} probability bins from 0 to 1, live (last ${plural(windowHours, "hour")})` +
      (reference ? " beside the validation set." : "; this version has no validation reference."),
    height,
  );
  const y = (share) => top + plotHeight - (share / highest) * plotHeight;
  svg.append(
    svgNode("line", { class: "grid", x1: left, x2: left + plotWidth, y1: top, y2: top }),
    svgNode("text", { x: left - 4, y: top + 4, "text-anchor": "end" }, `${Math.round(highest * 100)}%`),
    svgNode("text", { x: left - 4, y: top + plotHeight, "text-anchor": "end" }, "0%"),
  );
  const binWidth = plotWidth / bins;
  const barWidth = (binWidth - 2) / (reference ? 2 : 1);
  for (let i = 0; i < bins; i += 1) {
    const range = `${(i / bins).toFixed(2)}–${((i + 1) / bins).toFixed(2)}`;
    const series = [["live", live[i], "live"]];
    if (reference) series.push(["reference", reference[i], "validation"]);
    series.forEach(([className, share, name], position) => {
      const bar = svgNode("rect", {
        class: className,
        x: left + i * binWidth + 1 + position * barWidth,
        y: y(share),
        width: barWidth,
        height: top + plotHeight - y(share),
      });
      bar.append(svgNode("title", {}, `${range}: ${percent(share)} ${name}`));
      svg.append(bar);
    });
  }
  const baseline = top + plotHeight;
  svg.append(svgNode("line", { class: "axis", x1: left, x2: left + plotWidth, y1: baseline, y2: baseline }));
  for (const [value, anchor] of [[0, "start"], [0.5, "middle"], [1, "end"]]) {
    svg.append(svgNode("text", { x: left + value * plotWidth, y: height - 6, "text-anchor": anchor }, String(value)));
  }
  const figure = document.createElement("figure");
  const caption = document.createElement("figcaption");
  caption.textContent = "Probability of a positive review";
  const entries = [["live", `Live, last ${plural(windowHours, "hour")}`]];
  if (reference) entries.push(["reference", "Validation set"]);
  figure.append(caption, svg, legend(entries));
  return figure;
}

// Estimated (mean confidence) and realised (users' feedback) accuracy per hour, as two lines over the window.
function accuracyFigure(id, version, statistics, monitoring) {
  const [left, right, top, bottom, height] = [40, 8, 8, 22, 150];
  const plotWidth = 400 - left - right;
  const plotHeight = height - top - bottom;
  const since = Date.parse(monitoring.since);
  const span = monitoring.window_hours * HOUR_MS;
  const x = (iso) => left + ((Date.parse(iso) + HOUR_MS / 2 - since) / span) * plotWidth; // the hour's middle
  const y = (rate) => top + (1 - rate) * plotHeight;
  const estimated = statistics.estimated_accuracy;
  const realised = statistics.feedback_accuracy;
  const answered = `realised ${percent(realised)} on ${plural(statistics.feedback, "answer")}.`;
  const said =
    `Estimated ${percent(estimated)} over the ${plural(monitoring.window_hours, "hour")}; ` +
    (realised === null ? "no feedback yet." : answered);
  const svg = chartSvg("accuracy", id, `Estimated and realised accuracy of version ${version} per hour`, said, height);
  for (const rate of [0, 0.5, 1]) {
    svg.append(
      svgNode("line", { class: rate ? "grid" : "axis", x1: left, x2: left + plotWidth, y1: y(rate), y2: y(rate) }),
      svgNode("text", { x: left - 4, y: y(rate) + 4, "text-anchor": "end" }, `${rate * 100}%`),
    );
  }
  // Realised first: where the two agree, the estimate's dashes stay visible on top of it.
  for (const [className, field, name, radius] of [
    ["realised", "feedback_accuracy", "realised", 4],
    ["estimated", "estimated_accuracy", "estimated", 2.5],
  ]) {
    const hours = statistics.hourly.filter((hour) => hour[field] !== null);
    if (hours.length === 0) continue;
    const points = hours.map((hour) => `${x(hour.start).toFixed(1)},${y(hour[field]).toFixed(1)}`).join(" ");
    svg.append(svgNode("polyline", { class: className, points }));
    for (const hour of hours) {
      const dot = svgNode("circle", { class: className, cx: x(hour.start), cy: y(hour[field]), r: radius });
      const answers = field === "feedback_accuracy" ? ` on ${plural(hour.feedback, "answer")}` : "";
      dot.append(svgNode("title", {}, `${clock(hour.start)}: ${percent(hour[field])} ${name}${answers}`));
      svg.append(dot);
    }
  }
  svg.append(
    svgNode("text", { x: left, y: height - 6, "text-anchor": "start" }, clock(monitoring.since)),
    svgNode("text", { x: left + plotWidth, y: height - 6, "text-anchor": "end" }, "now"),
  );
  const figure = document.createElement("figure");
  const caption = document.createElement("figcaption");
  caption.textContent = "Accuracy per hour";
  const summary = document.createElement("p");
  summary.className = "hint";
  summary.textContent = said;
  figure.append(
    caption,
    svg,
    legend([
      ["line estimated", "Estimated (mean confidence)"],
      ["line realised", "Realised (users' feedback)"],
    ]),
    summary,
  );
  return figure;
}

// --- Recent predictions ------------------------------------------------------------------------------------

// Stored in this browser only: what the page needs to show and answer a prediction, not its explanation.
function recentEntry(prediction) {
  const { id, text, probability, is_positive: answered, details, feedback_token: token } = prediction;
  const { model_name: name, model_version: version, mlflow_run_id: run, timestamp } = details;
  return {
    id,
    text,
    probability,
    is_positive: { model_answered: answered.model_answered, user_answered: answered.user_answered },
    details: { model_name: name, model_version: version, mlflow_run_id: run, timestamp },
    feedback_token: token,
  };
}

function isRecentEntry(item) {
  return (
    item !== null &&
    typeof item === "object" &&
    typeof item.id === "string" &&
    typeof item.text === "string" &&
    typeof item.feedback_token === "string" &&
    typeof item.probability === "number" &&
    item.is_positive !== null &&
    typeof item.is_positive === "object" &&
    item.details !== null &&
    typeof item.details === "object" &&
    Number.isFinite(Date.parse(item.details.timestamp))
  );
}

// This browser's predictions, newest first; those past the retention period are left out (the service has
// deleted them, so they could not be answered any more). Unreadable storage reads as none.
function readRecent() {
  let items;
  try {
    items = JSON.parse(localStorage.getItem(RECENT_KEY) || "[]");
  } catch (exc) {
    return [];
  }
  if (!Array.isArray(items)) return [];
  const days = retentionDays();
  const oldest = days === null ? -Infinity : Date.now() - days * DAY_MS;
  return items.filter((item) => isRecentEntry(item) && Date.parse(item.details.timestamp) >= oldest).slice(0, MAX_RECENT);
}

function writeRecent(items) {
  try {
    localStorage.setItem(RECENT_KEY, JSON.stringify(items.slice(0, MAX_RECENT)));
  } catch (exc) {
    // Storage disabled or full: the list is simply not kept across reloads.
  }
}

function remember(prediction) {
  // A replayed answer (same Idempotency-Key) has the id of the one stored: listed once.
  const others = readRecent().filter((item) => item.id !== prediction.id);
  writeRecent([recentEntry(prediction), ...others]);
  renderRecent();
}

function rememberAnswer(id, answer) {
  const items = readRecent();
  for (const item of items) if (item.id === id) item.is_positive.user_answered = answer;
  writeRecent(items);
  renderRecent();
}

function renderRecent() {
  const items = readRecent();
  const list = $("recent-list");
  list.replaceChildren(...items.map(recentItem));
  $("recent-empty").hidden = items.length > 0;
}

function recentItem(prediction) {
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
  const verdict = user === null ? "no feedback" : user === positive ? "you agreed" : "you disagreed";
  const when = new Date(prediction.details.timestamp).toLocaleString();
  meta.append(tag, ` ${percent(prediction.probability)} · v${prediction.details.model_version} · ${verdict} · ${when}`);
  item.append(text, meta);
  if (user === null) item.append(recentFeedback(prediction));
  return item;
}

// "Was this right? Yes / No" for a listed prediction not answered yet, with its own error line.
function recentFeedback(prediction) {
  const box = document.createElement("div");
  box.className = "recent-feedback";
  const question = document.createElement("span");
  question.className = "hint";
  question.textContent = "Was this right?";
  const error = document.createElement("p");
  error.className = "error";
  error.setAttribute("role", "alert");
  error.hidden = true;
  const buttons = [true, false].map((agrees) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary";
    button.textContent = agrees ? "Yes" : "No";
    // Each list item has a Yes and a No: the accessible name says which review they answer.
    const excerpt = prediction.text.length > 40 ? `${prediction.text.slice(0, 40)}…` : prediction.text;
    button.setAttribute("aria-label", `${agrees ? "Yes" : "No"}, the answer to “${excerpt}” was ${agrees ? "right" : "wrong"}`);
    button.addEventListener("click", async () => {
      buttons.forEach((b) => busy(b, true));
      clearError(error);
      try {
        await postFeedback(prediction, agrees); // re-renders the list: this item loses its buttons
        if (state.prediction && state.prediction.id === prediction.id) {
          [$("feedback-yes"), $("feedback-no")].forEach((b) => busy(b, true));
          show($("feedback-status"), "Thanks, your answer counted.");
        }
        refreshStatistics();
      } catch (failure) {
        showError(error, describe(failure, "feedback"));
        buttons.forEach((b) => busy(b, false));
      }
    });
    return button;
  });
  box.append(question, " ", ...buttons, error);
  return box;
}

// Whole days from config.json (written with the function URLs); null when it has none.
function retentionDays() {
  const days = state.config && state.config.prediction_retention_days;
  return Number.isInteger(days) && days > 0 ? days : null;
}

// One line saying what the service keeps, and for how long; nothing said when the config does not know.
function renderRetention() {
  const days = retentionDays();
  show(
    $("retention"),
    days === null
      ? ""
      : `Stored: each review you analyze, with the model's answer and yours, for ${plural(days, "day")}, then deleted; the list of your recent predictions stays in this browser.`,
  );
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
    for (const id of ["analyze-error", "stats-error", "monitoring-error", "recent-error"]) showError($(id), message);
    $("stats-overall").hidden = true;
    $("monitoring-summary").hidden = true;
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
  $("monitoring-refresh").addEventListener("click", refreshMonitoring);
  updateCount();
  refreshStatistics();
  // Not refreshed after each answer like the statistics: it reads up to hours x 16 counters per version.
  refreshMonitoring();
  renderRetention();
  renderRecent();
}

document.addEventListener("DOMContentLoaded", start);
