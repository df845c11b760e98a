// The live page: camera (getUserMedia) or a video file -> JPEG frames over /ws, one at a time (the next frame
// is sent when the answer to the previous one arrives, so the rate follows what the server sustains) -> boxes,
// the closest match, emotion and the crowd level drawn over the video. Reconnects with backoff after a drop.
import { storedKey } from "./common.js";
(() => {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const video = $("video"), view = $("view"), ctx = view.getContext("2d");
  const statusLine = $("status"), readout = $("result"), alertList = $("alerts");
  const grab = document.createElement("canvas");
  const MAX_SIDE = 640;  // frames are sent at most this wide or high
  const state = { ws: null, running: false, waiting: false, retry: 0, busyUntil: 0, reconnectTimer: 0,
                  result: null, answered: 0, sentAt: 0, roundTrip: 0, stream: null };

  const setStatus = (text) => { statusLine.textContent = text; };

  function connect() {
    clearTimeout(state.reconnectTimer);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    // With AUTH_READS=key the search page's key (kept for this tab) goes in the handshake as the subprotocol
    // `oceano.key.KEY` (a browser cannot set headers), never in the URL, which servers and proxies log. The
    // service answers with the plain `oceano` subprotocol.
    // A key that is not a token (mistyped) cannot be a subprotocol: it goes in the first message instead.
    const key = storedKey();
    const token = /^[A-Za-z0-9_.~-]+$/.test(key);
    const protocols = key && token ? ["oceano", `oceano.key.${key}`] : ["oceano"];
    const ws = new WebSocket(`${scheme}//${location.host}/ws`, protocols);
    state.ws = ws;
    ws.onopen = () => {
      if (key && !token) ws.send(JSON.stringify({ command: "auth", key }));
      state.retry = 0; state.waiting = false; setStatus("connected"); pump();
    };
    ws.onmessage = (event) => handle(JSON.parse(event.data));
    ws.onclose = (event) => {
      if (state.ws !== ws) return;
      state.ws = null;
      state.waiting = false;
      if (!state.running) { setStatus("stopped"); return; }
      const delay = Math.min(10000, 500 * 2 ** state.retry++) * (0.8 + 0.4 * Math.random());
      const why = event.reason ? `: ${event.reason}` : "";
      setStatus(`connection closed (${event.code}${why}); reconnecting in ${(delay / 1000).toFixed(1)} s`);
      state.reconnectTimer = setTimeout(connect, delay);
    };
  }

  function handle(message) {
    if (message.event === "connected") {
      setStatus(`connected to ${message.data.model} (client ${message.data.client_id.slice(0, 8)})`);
    } else if (message.event === "detection_result") {
      state.waiting = false;
      state.result = message.data;
      state.answered += 1;
      state.roundTrip = performance.now() - state.sentAt;
      showAlerts(message.data.alerts);
      pump();
    } else if (message.event === "error") {
      state.waiting = false;
      const data = message.data;
      if (data.code === "busy") state.busyUntil = performance.now() + 1000 * (data.details.retry_after || 1);
      setStatus(`server: ${data.message}`);
      pump();
    }
  }

  function showAlerts(alerts) {
    for (const alert of alerts || []) {
      const item = document.createElement("li");
      item.className = alert.level;
      item.textContent = `${new Date(alert.timestamp).toLocaleTimeString()} ${alert.level}: ${alert.message}`;
      alertList.prepend(item);
      while (alertList.children.length > 8) alertList.lastChild.remove();
    }
  }

  // One frame at a time: the next goes out when the answer to this one is in.
  function pump() {
    const ws = state.ws;
    if (!state.running || state.waiting || !ws || ws.readyState !== WebSocket.OPEN) return;
    if (video.readyState < 2 || !video.videoWidth) { setTimeout(pump, 100); return; }
    const wait = state.busyUntil - performance.now();
    if (wait > 0) { setTimeout(pump, wait); return; }
    const scale = Math.min(1, MAX_SIDE / Math.max(video.videoWidth, video.videoHeight));
    grab.width = Math.round(video.videoWidth * scale);
    grab.height = Math.round(video.videoHeight * scale);
    grab.getContext("2d").drawImage(video, 0, 0, grab.width, grab.height);
    const url = grab.toDataURL("image/jpeg", 0.8);
    const settings = { search: $("search").checked, top_k: 1, crowd_threshold: Number($("threshold").value) || 0 };
    state.waiting = true;
    state.sentAt = performance.now();
    ws.send(JSON.stringify({ event: "process_frame",
                             data: { frame: url.slice(url.indexOf(",") + 1), timestamp: Date.now(), settings } }));
  }

  function label(face) {
    const parts = [];
    const match = face.matches && face.matches[0];
    if (match) parts.push(`${match.subject || match.file || "?"} ${match.score.toFixed(2)}`);
    if (face.emotion) parts.push(`${face.emotion.label} ${face.emotion.confidence.toFixed(2)}`);
    return parts.join(" · ");
  }

  function draw() {
    if (video.videoWidth) {
      if (view.width !== video.videoWidth || view.height !== video.videoHeight) {
        view.width = video.videoWidth;
        view.height = video.videoHeight;
      }
      ctx.drawImage(video, 0, 0, view.width, view.height);
    }
    const result = state.result;
    let boxes = 0;
    if (result) {
      const sx = view.width / result.frame_size[0], sy = view.height / result.frame_size[1];
      ctx.lineWidth = Math.max(2, view.width / 320);
      ctx.font = `${Math.max(12, Math.round(view.width / 40))}px system-ui, sans-serif`;
      for (const face of result.faces) {
        const [x1, y1, x2, y2] = face.bbox;
        ctx.strokeStyle = "#2ee86b";
        ctx.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
        const text = label(face);
        if (text) {
          const h = parseInt(ctx.font, 10) + 6, w = ctx.measureText(text).width + 8;
          const top = Math.max(0, y1 * sy - h);
          ctx.fillStyle = "rgba(0,0,0,.65)";
          ctx.fillRect(x1 * sx, top, w, h);
          ctx.fillStyle = "#fff";
          ctx.fillText(text, x1 * sx + 4, top + h - 6);
        }
        boxes += 1;
      }
      const crowd = result.crowd_analysis;
      const banner = `crowd: ${crowd.crowd_level} · ${crowd.face_count} face${crowd.face_count === 1 ? "" : "s"}` +
                     ` · density ${crowd.density_score.toFixed(2)}`;
      ctx.fillStyle = "rgba(0,0,0,.65)";
      ctx.fillRect(0, 0, ctx.measureText(banner).width + 16, parseInt(ctx.font, 10) + 12);
      ctx.fillStyle = "#fff";
      ctx.fillText(banner, 8, parseInt(ctx.font, 10) + 4);
      readout.dataset.frames = String(state.answered);
      readout.dataset.faces = String(result.faces.length);
      readout.dataset.boxes = String(boxes);
      readout.dataset.crowd = crowd.crowd_level;
      readout.dataset.dropped = String(result.frames_dropped);
      const first = result.faces[0], top = first && first.matches && first.matches[0];
      readout.dataset.match = top ? (top.subject || top.file || "") : "";
      readout.textContent = `${state.answered} frames · ${result.faces.length} faces · ${crowd.crowd_level} · ` +
        `server ${result.processing_time.toFixed(0)} ms · round trip ${state.roundTrip.toFixed(0)} ms`;
    }
    requestAnimationFrame(draw);
  }

  async function start(source) {
    stop();
    try {
      if (source === "camera") {
        state.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
        video.srcObject = state.stream;
      } else {
        video.srcObject = null;
        video.src = URL.createObjectURL(source);
        video.loop = true;
      }
      await video.play();
    } catch (err) {
      setStatus(`cannot open the ${source === "camera" ? "camera" : "video"}: ${err.message || err}`);
      return;
    }
    state.running = true;
    $("stop").disabled = false;
    if (state.ws && state.ws.readyState === WebSocket.OPEN) pump(); else if (!state.ws) connect();
  }

  function stop() {
    state.running = false;
    clearTimeout(state.reconnectTimer);
    if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
    state.stream = null;
    video.pause();
    $("stop").disabled = true;
  }

  window.oceanoLive = state;  // for the console (and the browser test, which drops the socket to see it come back)
  $("camera").addEventListener("click", () => start("camera"));
  $("file").addEventListener("change", (e) => { if (e.target.files.length) start(e.target.files[0]); });
  $("stop").addEventListener("click", () => { stop(); if (state.ws) state.ws.close(1000, "stopped"); });
  requestAnimationFrame(draw);
})();
