// twinrank's result grid: one Streamlit element draws every result of an answer.
//
// The data comes from ui/results_grid.py: columns of cards, each with a thumbnail (a data
// URI the server made from a collection file), a caption, a movement mark and a point id.
// Everything the page shows from the data is set as text or as an attribute, never parsed
// as HTML, so a file name is shown exactly as it is spelled. "Similar" and "Details" send
// the card's point id back to Python as trigger values; Python acts only on ids it showed.

function card(item, send) {
  const figure = document.createElement("figure");
  figure.className = `card ${item.move ? "moved-" + item.move : ""}`;
  figure.dataset.card = item.key;
  figure.dataset.id = item.id;
  const frame = document.createElement("div");
  frame.className = "frame";
  if (item.src) {
    const img = document.createElement("img");
    img.src = item.src;
    img.alt = item.name;
    img.decoding = "sync";
    frame.appendChild(img);
  } else {
    const missing = document.createElement("div");
    missing.className = "missing";
    missing.textContent = "file missing or unreadable (moved since ingest?)";
    frame.appendChild(missing);
  }
  if (item.badge) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = item.badge;
    frame.appendChild(badge);
  }
  figure.appendChild(frame);
  const caption = document.createElement("figcaption");
  caption.textContent = item.caption;
  caption.title = item.caption;
  figure.appendChild(caption);
  const actions = document.createElement("div");
  actions.className = "actions";
  for (const [label, event, help] of [
    ["Similar", "similar", "More like this: search the collection with this image."],
    ["Details", "details", "The full image and its facts."],
  ]) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.title = help;
    button.onclick = () => send(event, item.id);
    actions.appendChild(button);
  }
  figure.appendChild(actions);
  return figure;
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  let root = parentElement.querySelector(".twinrank-results");
  if (!root) {
    root = document.createElement("div");
    root.className = "twinrank-results";
    parentElement.appendChild(root);
  }
  const columns = (data && data.columns) || [];
  const perRow = (data && data.per_row) || 4;
  const body = document.createElement("div");
  body.className = "columns";
  body.style.setProperty("--count", columns.length);
  for (const column of columns) {
    const section = document.createElement("section");
    section.className = "column";
    section.dataset.stage = column.stage;
    if (column.title) {
      const title = document.createElement("h3");
      title.textContent = column.title;
      section.appendChild(title);
    }
    const grid = document.createElement("div");
    grid.className = "grid";
    grid.style.setProperty("--per-row", perRow);
    for (const item of column.cards) {
      grid.appendChild(card(item, setTriggerValue));
    }
    section.appendChild(grid);
    body.appendChild(section);
  }
  root.replaceChildren(body);
}
