// k6 ingest load at a constant arrival rate (open model: a stalled server shows in the tail,
// not as a politely slower client). Each request carries unique event ids, so every event is
// new and must be committed. Run through benches/load/run.py, which starts the server.
//
//   MODE=single|batch  RATE=<requests/s>  DURATION=20s  BATCH=500  BASE_URL  WRITE_KEY
import http from "k6/http";
import { check } from "k6";
import { Counter } from "k6/metrics";

const BASE = __ENV.BASE_URL || "http://127.0.0.1:8000";
const MODE = __ENV.MODE || "single";
const RATE = parseInt(__ENV.RATE || "2000", 10);
const BATCH = parseInt(__ENV.BATCH || "500", 10);
const SCENARIO = __ENV.SCENARIO || `ingest_${MODE}`;

export const options = {
  scenarios: {
    ingest: {
      executor: "constant-arrival-rate",
      rate: RATE,
      timeUnit: "1s",
      duration: __ENV.DURATION || "20s",
      preAllocatedVUs: Math.min(400, Math.max(20, Math.ceil(RATE / 20))),
      maxVUs: 1000,
      gracefulStop: "5s",
    },
  },
  summaryTrendStats: ["avg", "med", "p(95)", "p(99)", "max"],
};

const accepted = new Counter("events_accepted");

// A ~1.5 KB page-view event; "@@" is replaced by a per-request unique prefix.
function event(i) {
  return {
    name: "Page View",
    event_id: `@@-${i}`,
    ts: 1700000000000,
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

// Built once per VU in the init context; only the ids change per request.
const TEMPLATE =
  MODE === "single"
    ? JSON.stringify(event(0))
    : JSON.stringify({ events: Array.from({ length: BATCH }, (_, i) => event(i)) });
const URL = `${BASE}/v1/${MODE === "single" ? "events" : "batch"}`;
const PARAMS = {
  headers: {
    Authorization: `Bearer ${__ENV.WRITE_KEY}`,
    "Content-Type": "application/json",
    "X-Scenario": SCENARIO,
  },
  tags: { scenario_name: SCENARIO },
};

export default function () {
  const now = Date.now();
  const body = TEMPLATE.replaceAll("@@", `${__VU}-${__ITER}-${now}`).replaceAll(
    "1700000000000",
    String(now),
  );
  const r = http.post(URL, body, PARAMS);
  if (check(r, { "status 200": (res) => res.status === 200 })) {
    accepted.add(r.json("accepted"));
  }
}

export function handleSummary(data) {
  return { [__ENV.SUMMARY || "k6-summary.json"]: JSON.stringify(data) };
}
