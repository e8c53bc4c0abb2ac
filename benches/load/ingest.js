// k6 load for the harness (`just load`, benches/harness): an open model, so a stalled
// server shows in the tail latency, not as a politely slower client. Every request carries
// `X-Scenario`; every event has a unique id, so each one is new and must be committed.
//
//   SCENARIO   ingest_single  one ~1.5 KB event per request (POST /v1/events)
//              ingest_batch   BATCH events per request (POST /v1/batch)
//              mixed          ingest_single, plus QUERY_SHARE of the requests GET /v1/metrics
//                             (per-minute counts over the last hour)
//              burst          ingest_single at RATE, then BURST_FACTOR x RATE for BURST_S
//                             seconds in the middle of the step, then RATE again
//   RATE       requests/s offered (constant arrival rate; the base rate for burst)
//   DURATION   seconds          BATCH  events per batch (500)
//   BASE_URL   WRITE_KEY  READ_KEY  SIGNING_SECRET (as printed, the HMAC key; sign every ingest body when set)
//   MAX_VUS    cap on concurrent requests (k6 counts what it could not start as dropped)
//   PRE_VUS    VUs started before the step
//   TIMEOUT    per-request timeout (10s)   SUMMARY  where handleSummary writes its JSON
//
// Run through `just load` (benches/harness), which starts the server, reads this script's
// summary and the server's /metrics around each step.
import http from "k6/http";
import crypto from "k6/crypto";
import exec from "k6/execution";
import { Counter } from "k6/metrics";

const BASE = __ENV.BASE_URL || "http://127.0.0.1:8000";
const SCENARIO = __ENV.SCENARIO || "ingest_single";
const RATE = parseInt(__ENV.RATE || "1000", 10);
const DURATION = parseInt(__ENV.DURATION || "20", 10);
const BATCH = parseInt(__ENV.BATCH || "500", 10);
const BURST_FACTOR = parseInt(__ENV.BURST_FACTOR || "5", 10);
const BURST_S = parseInt(__ENV.BURST_S || "10", 10);
const QUERY_SHARE = parseFloat(__ENV.QUERY_SHARE || "0.1");
const MAX_VUS = parseInt(__ENV.MAX_VUS || "1000", 10);
const TIMEOUT = __ENV.TIMEOUT || "10s";
const BATCHED = SCENARIO === "ingest_batch";

// Statuses counted one by one in the summary (k6 reports a submetric per threshold);
// 0 is a request that got no HTTP answer (timeout, connection refused or reset).
const STATUSES = [0, 200, 400, 401, 403, 408, 413, 415, 429, 500, 502, 503, 504];

// Before the burst: ramps of 1 s at either end of the BURST_S seconds at the peak.
const BURST_START = Math.max(1, Math.floor((DURATION - BURST_S - 2) / 2));

function executor() {
  const common = {
    timeUnit: "1s",
    // Started up front: a VU started mid-step takes a while, and meanwhile k6 drops iterations.
    preAllocatedVUs: Math.min(MAX_VUS, parseInt(__ENV.PRE_VUS || "50", 10)),
    maxVUs: MAX_VUS,
    gracefulStop: "3s",
  };
  if (SCENARIO !== "burst") {
    return { executor: "constant-arrival-rate", rate: RATE, duration: `${DURATION}s`, ...common };
  }
  const peak = RATE * BURST_FACTOR;
  const after = Math.max(1, DURATION - BURST_START - BURST_S - 2);
  return {
    executor: "ramping-arrival-rate",
    startRate: RATE,
    stages: [
      { target: RATE, duration: `${BURST_START}s` },
      { target: peak, duration: "1s" },
      { target: peak, duration: `${BURST_S}s` },
      { target: RATE, duration: "1s" },
      { target: RATE, duration: `${after}s` },
    ],
    ...common,
  };
}

const thresholds = {};
for (const s of STATUSES) thresholds[`http_reqs{status:${s}}`] = ["count>=0"];
for (const kind of ["ingest", "query"]) thresholds[`http_req_duration{kind:${kind}}`] = ["max>=0"];
for (const phase of ["base", "burst"]) thresholds[`http_req_duration{phase:${phase}}`] = ["max>=0"];

export const options = {
  scenarios: { load: executor() },
  thresholds,
  summaryTrendStats: ["count", "avg", "min", "med", "p(95)", "p(99)", "max"],
  discardResponseBodies: false,
};

const accepted = new Counter("events_accepted");

// A ~1.5 KB page-view event; @@ID / @@TS are replaced per request.
function event(i) {
  return {
    name: "Page View",
    event_id: `@@ID-${i}`,
    ts: "@@TS",
    user_id: `user-${i % 997}`,
    value: i % 100,
    properties: {
      path: `/products/${i % 50}/details`,
      referrer: "https://www.example.com/search?q=running+shoes&page=2",
      utm: { source: "newsletter", medium: "email", campaign: "winter-sale" },
      country: ["DE", "FR", "US", "BR", "JP"][i % 5],
      browser: "Firefox",
      screen: { width: 1920, height: 1080, density: 1.5 },
      user_agent:
        "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0 AppleWebKit/537.36",
      title: "Trail Running Shoes, Waterproof, Men's Size 44 - Example Store Products",
      description: "x".repeat(700),
    },
  };
}

// Built once per VU (init context), cut at the placeholders, so a request is one join.
const TEMPLATE = JSON.stringify(
  BATCHED ? { events: Array.from({ length: BATCH }, (_, i) => event(i)) } : event(0),
).replaceAll('"@@TS"', "@@TS");
const PIECES = TEMPLATE.split("@@");
const HEAD = PIECES[0];
const IS_ID = PIECES.slice(1).map((p) => p.startsWith("ID"));
const TAILS = PIECES.slice(1).map((p) => p.slice(2));

function body(id, ts) {
  const out = [HEAD];
  for (let j = 0; j < TAILS.length; j++) out.push(IS_ID[j] ? id : ts, TAILS[j]);
  return out.join("");
}

const SECRET = __ENV.SIGNING_SECRET || null; // the secret's text is the HMAC key

const INGEST_URL = `${BASE}/v1/${BATCHED ? "batch" : "events"}`;
const QUERY_EVENT = encodeURIComponent("Page View");

function phase() {
  if (SCENARIO !== "burst") return "base";
  const t = (Date.now() - exec.scenario.startTime) / 1000;
  return t >= BURST_START && t < BURST_START + BURST_S + 2 ? "burst" : "base";
}

function ingest(ph) {
  const now = Date.now();
  const payload = body(`${exec.vu.idInTest}-${exec.scenario.iterationInTest}-${now}`, `${now}`);
  const headers = {
    Authorization: `Bearer ${__ENV.WRITE_KEY}`,
    "Content-Type": "application/json",
    "X-Scenario": SCENARIO,
  };
  if (SECRET !== null) {
    const t = Math.floor(now / 1000);
    headers["X-Signature"] = `t=${t},v1=${crypto.hmac("sha256", SECRET, `${t}.${payload}`, "hex")}`;
  }
  const r = http.post(INGEST_URL, payload, {
    headers,
    timeout: TIMEOUT,
    tags: { kind: "ingest", phase: ph, name: "ingest" },
  });
  if (r.status === 200) {
    try {
      accepted.add(r.json("accepted"));
    } catch (_) {
      // not JSON: counted by status only
    }
  }
}

function query(ph) {
  const from = Date.now() - 3600 * 1000;
  const url = `${BASE}/v1/metrics?event=${QUERY_EVENT}&interval=minute&from=${from}`;
  http.get(url, {
    headers: { Authorization: `Bearer ${__ENV.READ_KEY}`, "X-Scenario": SCENARIO },
    timeout: TIMEOUT,
    tags: { kind: "query", phase: ph, name: "query" },
  });
}

export default function () {
  const ph = phase();
  if (SCENARIO === "mixed" && Math.random() < QUERY_SHARE) {
    query(ph);
  } else {
    ingest(ph);
  }
}

export function handleSummary(data) {
  return { [__ENV.SUMMARY || "k6-summary.json"]: JSON.stringify(data) };
}
