// The live map: overlays of the best-available products, a time slider, borders, rivers, basins and alert areas.
// Everything comes from this server (no tiles, no CDN); the page only reads.
"use strict";

const map = L.map("map", { zoomSnap: 0.25 });
const slider = document.getElementById("slider");
const kind = document.getElementById("kind");
let state = null;
let overlay = null;

function overlayUrl() {
  const valid = state.valid_times[Number(slider.value)];
  return `/api/overlay/${kind.value}/${valid}.png`;
}

function show() {
  if (!state || state.valid_times.length === 0) return;
  const valid = state.valid_times[Number(slider.value)];
  document.getElementById("valid").textContent = `${valid} (lead ${state.leads[valid] * 30} min)`;
  if (overlay) overlay.setUrl(overlayUrl());
  else overlay = L.imageOverlay(overlayUrl(), state.bounds, { opacity: 0.8, interactive: false }).addTo(map);
}

async function load() {
  state = await (await fetch("/api/state.json")).json();
  const status = document.getElementById("status");
  if (state.cycle) {
    const flags = state.cycle.degraded.length ? ` (${state.cycle.degraded.join(", ")})` : "";
    status.textContent = `cycle ${state.cycle.cycle_time}: ${state.cycle.state}${flags}`;
    status.className = state.cycle.degraded.length || state.cycle.state === "failed" ? "degraded" : "";
  }
  if (state.valid_times.length === 0) {
    document.getElementById("valid").textContent = "no products yet";
    return;
  }
  map.fitBounds(state.bounds);
  slider.max = String(state.valid_times.length - 1);
  slider.value = slider.max;
  const borders = await (await fetch("/api/borders.geojson")).json();
  const style = { counties: { color: "#999", weight: 0.5 }, states: { color: "#222", weight: 1.2 },
                  rivers: { color: "#1f78b4", weight: 1 }, coast: { color: "navy", weight: 1 },
                  countries: { color: "#000", weight: 1.5 }, basin: { color: "#1b7837", weight: 2 } };
  L.geoJSON(borders, { style: (f) => style[f.properties.layer], interactive: false }).addTo(map);
  for (const f of borders.features.filter((f) => f.properties.layer === "basin")) {  // named at the northernmost point, as on the quicklooks
    const [lon, lat] = f.properties.label_at;
    L.tooltip({ permanent: true, direction: "top", className: "basin" }).setLatLng([lat, lon]).setContent(f.properties.name).addTo(map);
  }
  const list = document.getElementById("alerts");
  for (const a of state.alerts) {
    const p = a.probability === null ? "no data" : a.probability.toFixed(2);
    const active = a.probability !== null && a.probability >= a.level;
    L.rectangle(a.bounds, { color: "crimson", weight: 2, fill: false })
      .bindTooltip(`${a.name}: P(> ${a.threshold} mm/h) = ${p}`, { permanent: true, direction: "top" }).addTo(map);
    const item = document.createElement("span");
    item.textContent = `${a.name} P(>${a.threshold}) = ${p}${active ? " ALERT" : ""} `;
    if (active) item.className = "degraded";
    list.appendChild(item);
  }
  show();
}

slider.addEventListener("input", show);
kind.addEventListener("change", show);
load();
