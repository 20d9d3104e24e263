// The fedrec demo page: pick a user, show their history, the server's recommendations and the
// on-device scores (private rows fetched from the demo endpoint, then sent to POST /score).
"use strict";

const $ = (selector) => document.querySelector(selector);

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json();
  if (!response.ok) {
    throw new Error(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
  }
  return body;
}

function fillTable(table, rows) {
  const tbody = table.querySelector("tbody");
  tbody.replaceChildren();
  for (const cells of rows) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      const numeric = typeof cell === "number" || (cell !== null && typeof cell === "object");
      td.textContent = typeof cell === "object" && cell !== null ? cell.text : cell;
      if (numeric) td.className = "num";
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
}

function rankedRows(items) {
  return items.map((entry) => [entry.rank, entry.item, entry.title, { text: entry.score.toFixed(4) }]);
}

async function showUser(user, k) {
  $("#error").hidden = true;
  try {
    const q = encodeURIComponent(user);
    const [history, recommended, device] = await Promise.all([
      getJSON(`/history?user=${q}&limit=50`),
      getJSON(`/recommend?user=${q}&k=${k}`),
      getJSON(`/demo/private-rows?user=${q}`),
    ]);
    fillTable($("#history"), history.items.map((entry) => [entry.item, entry.title, entry.rating]));
    fillTable($("#recommendations"), rankedRows(recommended.items));
    // On-device mode: only the client's own rows and its own seen items leave the "device".
    const scored = await getJSON("/score", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ rows: device.rows, exclude: device.seen, k: k }),
    });
    fillTable($("#on-device"), rankedRows(scored.items));
    document.body.dataset.shownUser = user;
  } catch (error) {
    $("#error").textContent = error.message;
    $("#error").hidden = false;
  }
}

async function start() {
  const health = await getJSON("/health");
  $("#run-info").textContent = `${health.model} model of run ${health.run} on ${health.dataset}: ` +
    `${health.users} users, ${health.items} items`;
  const users = await getJSON("/users?limit=10000");
  const select = $("#user-select");
  for (const id of users.users) {
    const option = document.createElement("option");
    option.value = id;
    option.textContent = id;
    select.appendChild(option);
  }
  $("#pick-user").addEventListener("submit", (event) => {
    event.preventDefault();
    showUser(select.value, Number($("#k-input").value) || 10);
  });
  document.body.dataset.ready = "true";
}

start().catch((error) => {
  $("#error").textContent = error.message;
  $("#error").hidden = false;
});
