/* fedmq live dashboard. Subscribes over MQTT-over-WebSockets (mqtt.js) to one run's retained coordinator
   state, client presence (birth and last-will messages), round metrics and end, decodes their msgpack
   payloads (PROTOCOL.md) in the page, and draws them. Never subscribes to models or updates (megabytes).
   Settings: config.json from `python -m coordinator dashboard`, overridden by ?ws=URL&prefix=P&run=R. */
(function () {
  "use strict";

  var PROTOCOL_VERSION = 1;
  var SVG_NS = "http://www.w3.org/2000/svg";
  var MAX_ROUND_ROWS = 12;

  var state = {
    config: null,
    topics: null,
    connection: "connecting",
    coordinator: null,      // the last coordinator_state message
    clients: {},            // client id -> last client_status message (+ receivedAt)
    rounds: {},             // round -> {round, test_accuracy, test_loss, ...} (full rows when seen live)
    xAxis: "round",         // the charts' x axis: "round" or "time" (wall-clock, from elapsed_s)
    totalRounds: 0,
    end: null,              // the run_end message, while retained
    received: 0,
    rejected: [],           // messages that could not be used, with the reason
    lastMessageAt: null,
    renders: 0
  };
  // For people poking around in the console, and for the browser test.
  window.fedmqDashboard = { state: state };

  function $(id) { return document.getElementById(id); }

  function setText(id, text) {
    var el = $(id);
    if (el.textContent !== text) el.textContent = text;
  }

  // ---- settings ------------------------------------------------------------------------------------

  function loadConfig() {
    var defaults = { ws_url: "", ws_port: 9001, topic_prefix: "fedmq", run: "demo" };
    return fetch("config.json", { cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : {}; })
      .catch(function () { return {}; })  // served by another web server: defaults and the query string
      .then(function (served) {
        var cfg = Object.assign({}, defaults, served);
        var q = new URLSearchParams(window.location.search);
        if (q.get("ws")) cfg.ws_url = q.get("ws");
        if (q.get("prefix")) cfg.topic_prefix = q.get("prefix");
        if (q.get("run")) cfg.run = q.get("run");
        if (!cfg.ws_url) {
          var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
          cfg.ws_url = scheme + (window.location.hostname || "localhost") + ":" + cfg.ws_port;
        }
        return cfg;
      });
  }

  function runTopics(cfg) {
    var base = cfg.topic_prefix + "/" + cfg.run;
    return {
      base: base,
      state: base + "/coordinator/state",
      statuses: base + "/client/+/status",
      metrics: base + "/metrics",
      end: base + "/end"
    };
  }

  function clientOf(topic) {
    var prefix = state.topics.base + "/client/";
    if (topic.indexOf(prefix) !== 0 || topic.slice(-7) !== "/status") return null;
    var id = topic.slice(prefix.length, -7);
    return id && id.indexOf("/") < 0 ? id : null;
  }

  // ---- MQTT ----------------------------------------------------------------------------------------

  function connect(cfg) {
    var t = state.topics;
    var client = window.mqtt.connect(cfg.ws_url, {
      clientId: "fedmq-dashboard-" + Math.random().toString(16).slice(2, 10),
      protocolVersion: 4, clean: true, keepalive: 30, reconnectPeriod: 2000, connectTimeout: 10000
    });
    client.on("connect", function () {
      setConnection("connected", "");
      client.subscribe([t.state, t.statuses, t.metrics, t.end], { qos: 1 }, function (err, granted) {
        var refused = (granted || []).filter(function (g) { return g.qos === 128; });
        if (err || refused.length) {
          showError("the broker refused the subscription" + (err ? ": " + err.message : " to " +
            refused.map(function (g) { return g.topic; }).join(", ")));
        }
      });
    });
    client.on("reconnect", function () { setConnection("connecting", ""); });
    client.on("close", function () {
      if (state.connection !== "error") setConnection("disconnected", "cannot reach the broker at " + cfg.ws_url +
        " (MQTT over WebSockets); retrying every 2 s");
    });
    client.on("error", function (err) { setConnection("error", "broker at " + cfg.ws_url + ": " + err.message); });
    client.on("message", function (topic, payload) { handleMessage(topic, payload); });
    window.fedmqDashboard.client = client;
  }

  function setConnection(connection, problem) {
    state.connection = connection;
    var badge = $("broker");
    badge.dataset.state = connection;
    badge.textContent = "broker: " + connection;
    badge.title = state.config ? state.config.ws_url : "";
    showError(problem);
  }

  function showError(text) {
    var el = $("error");
    el.hidden = !text;
    el.textContent = text || "";
  }

  // ---- messages ------------------------------------------------------------------------------------

  function handleMessage(topic, payload) {
    state.received += 1;
    state.lastMessageAt = Date.now();
    if (!payload || payload.length === 0) {  // a cleared retained message: "nothing here any more"
      cleared(topic);
      scheduleRender();
      return;
    }
    var msg;
    try {
      msg = window.MessagePack.decode(payload);
    } catch (e) {
      return reject(topic, "not msgpack: " + e.message);
    }
    if (!msg || typeof msg !== "object" || Array.isArray(msg)) return reject(topic, "not a msgpack map");
    if (msg.version !== PROTOCOL_VERSION) return reject(topic, "protocol version " + msg.version);
    if (msg.run !== state.config.run) return reject(topic, "message of run " + msg.run);
    var problem = invalid(msg);
    if (problem) return reject(topic, msg.type + ": " + problem);
    var t = state.topics;
    if (msg.type === "coordinator_state" && topic === t.state) {
      state.coordinator = msg;
      if (msg.total_rounds) state.totalRounds = msg.total_rounds;
    } else if (msg.type === "client_status" && clientOf(topic) !== null && msg.sender === clientOf(topic)) {
      msg.receivedAt = Date.now();
      state.clients[msg.sender] = msg;
    } else if (msg.type === "round_metrics" && topic === t.metrics) {
      addMetrics(msg);
    } else if (msg.type === "run_end" && topic === t.end) {
      state.end = msg;
    } else {
      return reject(topic, "unexpected " + msg.type + " message");
    }
    scheduleRender();
  }

  /* What render() relies on, per type; null when the message is usable. */
  function invalid(msg) {
    function num(k) { return typeof msg[k] === "number"; }
    function str(k) { return typeof msg[k] === "string"; }
    if (!num("round") || !str("type")) return "no round or type";
    switch (msg.type) {
      case "coordinator_state": return str("status") && str("phase") ? null : "no status or phase";
      case "client_status": return str("status") ? null : "no status";
      case "round_metrics": return num("test_accuracy") && num("test_loss") ? null : "no accuracy or loss";
      case "run_end": return str("reason") ? null : "no reason";
      default: return null;
    }
  }

  function cleared(topic) {
    var t = state.topics;
    if (topic === t.metrics) {
      state.rounds = {};          // a new run with this id starts
    } else if (topic === t.end) {
      state.end = null;
    } else if (topic === t.state) {
      state.coordinator = null;
    } else if (clientOf(topic) !== null) {
      delete state.clients[clientOf(topic)];
    }
  }

  function addMetrics(msg) {
    var history = Array.isArray(msg.history) ? msg.history : [];
    if (history.length) {
      // The retained message carries the whole curve: start from it, keep the full rows seen live.
      var rounds = {};
      history.forEach(function (p) {
        var old = state.rounds[p.round];
        var same = old && (isRegression(p) ? old.test_rmse === p.test_rmse : old.test_accuracy === p.test_accuracy);
        rounds[p.round] = same ? old : {
          round: p.round, test_accuracy: p.test_accuracy, test_loss: p.test_loss, elapsed_s: p.elapsed_s,
          test_mae: p.test_mae, test_rmse: p.test_rmse   // a regression's errors (PROTOCOL.md); else undefined
        };
      });
      state.rounds = rounds;
    }
    state.rounds[msg.round] = msg;
    if (msg.total_rounds) state.totalRounds = msg.total_rounds;
  }

  function reject(topic, why) {
    state.rejected.push({ topic: topic, reason: why });
    if (state.rejected.length > 50) state.rejected.shift();
    if (window.console) console.warn("fedmq dashboard: ignored a message on " + topic + ": " + why);
  }

  // ---- drawing -------------------------------------------------------------------------------------

  var renderQueued = false;

  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    setTimeout(function () { renderQueued = false; render(); }, 0);
  }

  function sortedRounds() {
    return Object.keys(state.rounds).map(Number).sort(function (a, b) { return a - b; })
      .map(function (r) { return state.rounds[r]; });
  }

  function render() {
    state.renders += 1;
    var c = state.coordinator;
    var rows = sortedRounds();
    var last = rows.length ? rows[rows.length - 1] : null;
    var total = state.totalRounds || (c && c.total_rounds) || 0;
    var round = c ? c.round : last ? last.round : 0;
    if (state.end) round = state.end.round;

    setText("run", state.config.run);
    setText("round", round ? round + " / " + (total || "?") : total ? "0 / " + total : "–");
    setText("phase", c ? c.phase.replace(/_/g, " ") : "–");
    setText("phase-detail", c && c.detail ? c.detail : "");
    setText("coordinator", c ? c.status : "not seen");
    $("coordinator").dataset.status = c ? c.status : "";
    // A regression run (its rounds carry test_mae and test_rmse) shows RMSE and MAE where accuracy would be.
    var regression = !!last && isRegression(last);
    setText("accuracy-label", regression ? "test RMSE" : "test accuracy");
    // Over rounds, or over wall-clock time (each round's elapsed_s: seconds since the run's first round started;
    // async runs step at their own pace, so time is the fair axis to compare them by).
    var overTime = state.xAxis === "time";
    var per = overTime ? " over time" : " per round";
    setText("accuracy-caption", (regression ? "test RMSE" : "test accuracy") + per);
    setText("loss-caption", "test loss" + per);
    $("x-round").setAttribute("aria-pressed", String(!overTime));
    $("x-time").setAttribute("aria-pressed", String(overTime));
    setText("rounds-accuracy", regression ? "RMSE" : "accuracy");
    setText("accuracy", last ? (regression ? significant(last.test_rmse) : fixed(last.test_accuracy, 4)) : "–");
    setText("accuracy-detail", last ? (regression ? "MAE " + significant(last.test_mae) + ", " : "") +
      "after round " + last.round : "");
    setText("loss", last ? fixed(last.test_loss, 4) : "–");

    var ids = Object.keys(state.clients).sort();
    var online = ids.filter(function (id) { return state.clients[id].status === "online"; });
    // Devices behind site relays: only their counts come, per site, in the coordinator's state (PROTOCOL.md).
    var sites = state.coordinator && state.coordinator.sites && typeof state.coordinator.sites === "object"
      ? state.coordinator.sites : {};
    var siteNames = Object.keys(sites).filter(function (s) { return typeof sites[s] === "number"; }).sort();
    var viaSites = siteNames.reduce(function (n, s) { return n + sites[s]; }, 0);
    setText("online-count", String(online.length + viaSites));
    setText("offline-count", [ids.length - online.length ? (ids.length - online.length) + " offline" : "",
      siteNames.length ? "via sites: " + siteNames.map(function (s) { return s + " " + sites[s]; }).join(", ") : ""]
      .filter(Boolean).join("; "));
    renderClients(ids);
    renderRounds(rows);
    renderEnd();

    // Over time, a round without elapsed_s (a coordinator before it) has no place on the axis: it is left out.
    var timed = overTime ? rows.filter(function (m) { return typeof m.elapsed_s === "number" && m.elapsed_s > 0; })
      : rows;
    function point(m, y) { return { x: overTime ? m.elapsed_s : m.round, y: y, round: m.round }; }
    var accuracy = timed.map(function (m) { return point(m, regression ? m.test_rmse : m.test_accuracy); });
    var loss = timed.map(function (m) { return point(m, m.test_loss); });
    drawChart($("chart-accuracy"), accuracy, { color: "#1f77b4", total: total, accuracy: !regression, time: overTime });
    drawChart($("chart-loss"), loss, { color: "#d62728", total: total, accuracy: false, time: overTime });
    renderFooter();
  }

  function renderClients(ids) {
    var body = $("clients").tBodies[0];
    body.textContent = "";
    ids.forEach(function (id) {
      var m = state.clients[id];
      var tr = document.createElement("tr");
      tr.dataset.client = id;
      tr.dataset.status = m.status;
      var status = cell(m.status);
      status.className = "status";
      status.dataset.status = m.status;
      // Inference-only devices (role "serve", PROTOCOL.md) are listed too, marked as such.
      // Why a device can't train the run's model (error) or rejected a deployment (deploy_error), PROTOCOL.md.
      var problem = typeof m.error === "string" && m.error ? "can't train: " + m.error
        : typeof m.deploy_error === "string" && m.deploy_error ? "deployment rejected: " + m.deploy_error : "";
      tr.append(cell(m.role === "serve" ? id + " (serve)" : id), status,
        cell(m.num_examples ? String(m.num_examples) : "", "num"),
        cell(m.device && m.device.host ? String(m.device.host) : ""), cell(ago(m.sent_at * 1000)),
        cell(problem.slice(0, 300), problem ? "problem" : ""));
      body.appendChild(tr);
    });
    $("no-clients").hidden = ids.length > 0;
  }

  function renderRounds(rows) {
    var body = $("rounds").tBodies[0];
    body.textContent = "";
    rows.slice(-MAX_ROUND_ROWS).reverse().forEach(function (m) {
      var tr = document.createElement("tr");
      tr.dataset.round = m.round;
      tr.append(cell(String(m.round), "num"), cell(m.clients !== undefined ? String(m.clients) : "", "num"),
        cell(isRegression(m) ? significant(m.test_rmse) : fixed(m.test_accuracy, 4), "num"),
        cell(fixed(m.test_loss, 4), "num"),
        cell(m.round_time_s !== undefined ? fixed(m.round_time_s, 1) : "", "num"),
        cell(m.bytes_in !== undefined ? fixed(m.bytes_in / 1e6, 2) : "", "num"));
      body.appendChild(tr);
    });
  }

  function renderEnd() {
    var el = $("run-end");
    var end = state.end;
    el.hidden = !end;
    if (!end) return;
    el.className = "banner" + (end.reason === "completed" ? "" : " stopped");
    var acc = typeof end.test_accuracy === "number" ? "; final test accuracy " + fixed(end.test_accuracy, 4)
      : isRegression(end) ? "; final test MAE " + significant(end.test_mae) + ", RMSE " + significant(end.test_rmse)
      : "";
    el.textContent = "Run " + end.run + " " + end.reason + " after round " + end.round + acc +
      (end.detail ? " (" + end.detail + ")" : "");
  }

  function renderFooter() {
    var t = state.topics;
    setText("topics", state.config.ws_url + " · " + [t.state, t.statuses, t.metrics, t.end].join(", "));
    setText("last-message", state.lastMessageAt ? state.received + " messages, last " +
      ago(state.lastMessageAt) : "no message yet");
  }

  function cell(text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function isRegression(m) {
    return typeof m.test_mae === "number";
  }

  /* A regression error, in whatever unit the targets have: 4 significant digits. */
  function significant(value) {
    return typeof value === "number" && isFinite(value) ? String(Number(value.toPrecision(4))) : "n/a";
  }

  function fixed(value, digits) {
    return typeof value === "number" && isFinite(value) ? value.toFixed(digits) : "n/a";
  }

  function ago(ms) {
    var s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    return Math.floor(s / 3600) + " h ago";
  }

  function svg(tag, attrs, parent) {
    var el = document.createElementNS(SVG_NS, tag);
    Object.keys(attrs).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    parent.appendChild(el);
    return el;
  }

  /* A line chart of {x, y, round} points in a 480 x 240 viewBox: y grid, x ticks, one series. x is the round, or
     with opt.time the seconds since the run's first round started (ticks read m:ss). */
  function drawChart(el, points, opt) {
    el.textContent = "";
    var W = 480, H = 240, L = 46, R = 12, T = 10, B = 30;
    var pts = points.filter(function (p) { return typeof p.y === "number" && isFinite(p.y); });
    if (!pts.length) {
      svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", "class": "empty" }, el)
        .textContent = "waiting for the first round";
      return;
    }
    var ys = pts.map(function (p) { return p.y; });
    var lo = Math.min.apply(null, ys), hi = Math.max.apply(null, ys);
    if (opt.accuracy) {
      lo = Math.max(0, lo - 0.02);
      hi = Math.min(1, hi + 0.02);
    } else {
      lo = 0;
      hi = hi > 0 ? hi * 1.05 : 1;
    }
    var step = niceStep(Math.max(hi - lo, 1e-6), 4);
    lo = Math.floor(lo / step + 1e-9) * step;
    hi = Math.ceil(hi / step - 1e-9) * step;
    if (hi <= lo) hi = lo + step;
    var digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9)) + (Math.round(step / Math.pow(10,
      Math.floor(Math.log10(step) + 1e-9)) * 10) % 10 ? 1 : 0);
    var xMax = opt.time ? Math.max(pts[pts.length - 1].x, 1) : Math.max(opt.total || 0, pts[pts.length - 1].x, 2);
    var xMin = opt.time ? 0 : 1;
    function px(x) { return L + (x - xMin) / (xMax - xMin) * (W - L - R); }
    function py(y) { return T + (1 - (y - lo) / (hi - lo)) * (H - T - B); }
    for (var yv = lo; yv <= hi + step / 2; yv += step) {
      svg("line", { x1: L, x2: W - R, y1: py(yv), y2: py(yv), "class": "grid" }, el);
      svg("text", { x: L - 6, y: py(yv) + 4, "text-anchor": "end" }, el).textContent = yv.toFixed(digits);
    }
    var xStep = opt.time ? Math.max(1, niceStep(xMax, 5)) : Math.max(1, Math.ceil((xMax - xMin + 1) / 10));
    for (var x = xMin; x <= xMax + 1e-9; x += xStep) {
      svg("text", { x: px(x), y: H - B + 16, "text-anchor": "middle" }, el).textContent =
        opt.time ? clock(x) : String(x);
    }
    svg("text", { x: (L + W - R) / 2, y: H - 2, "text-anchor": "middle", "class": "x-label" }, el).textContent =
      opt.time ? "time since round 1 started (m:ss)" : "round";
    svg("line", { x1: L, x2: L, y1: T, y2: H - B, "class": "axis" }, el);
    svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, "class": "axis" }, el);
    svg("polyline", {
      points: pts.map(function (p) { return px(p.x) + "," + py(p.y); }).join(" "),
      stroke: opt.color, "class": "series"
    }, el);
    pts.forEach(function (p) {
      var dot = svg("circle", { cx: px(p.x), cy: py(p.y), r: 3.5, fill: opt.color, "class": "point",
        "data-round": p.round, "data-value": p.y, "data-x": p.x }, el);
      svg("title", {}, dot).textContent = "round " + p.round + (opt.time ? " at " + clock(p.x) : "") + ": " +
        p.y.toFixed(4);
    });
  }

  /* Seconds as m:ss (h:mm:ss past an hour). */
  function clock(seconds) {
    var s = Math.round(seconds), h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), r = s % 60;
    var mm = h ? (m < 10 ? "0" : "") + m : String(m);
    return (h ? h + ":" : "") + mm + ":" + (r < 10 ? "0" : "") + r;
  }

  /* A round tick step (1, 2, 2.5 or 5 times a power of ten) giving about `count` intervals over `range`. */
  function niceStep(range, count) {
    var raw = range / count;
    var magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
    var f = raw / magnitude;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * magnitude;
  }

  // ---- start ---------------------------------------------------------------------------------------

  function start() {
    if (!window.mqtt || !window.MessagePack) {
      showError("the vendored libraries (vendor/mqtt.min.js, vendor/msgpack.min.js) did not load");
      return;
    }
    loadConfig().then(function (cfg) {
      state.config = cfg;
      state.topics = runTopics(cfg);
      document.title = "fedmq · " + cfg.run;
      $("x-round").addEventListener("click", function () { state.xAxis = "round"; render(); });
      $("x-time").addEventListener("click", function () { state.xAxis = "time"; render(); });
      render();
      connect(cfg);
      setInterval(render, 1000);  // the "… ago" texts
    });
  }

  start();
}());
