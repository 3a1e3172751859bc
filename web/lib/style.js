// The pack's stylesheet, added to the page once by whichever extension needs it first. Importing this
// module does nothing; `ensureStyles()` does.

const STYLE_ID = "lora-lab-styles";

const CSS = `
.lora-lab-panel {
  position: fixed; top: 72px; right: 16px; z-index: 1000; width: min(640px, calc(100vw - 32px));
  max-height: calc(100vh - 96px); display: flex; flex-direction: column;
  background: var(--comfy-menu-bg, #202020); color: var(--input-text, #ddd);
  border: 1px solid var(--border-color, #555); border-radius: 8px; box-shadow: 0 6px 24px rgba(0,0,0,.5);
  font: 12px/1.35 system-ui, sans-serif;
}
.lora-lab-panel[hidden] { display: none; }
.lora-lab-panel header { display: flex; align-items: center; gap: 8px; padding: 8px 10px;
  border-bottom: 1px solid var(--border-color, #555); }
.lora-lab-panel header .ll-title { font-weight: 600; flex: 1; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.lora-lab-panel select, .lora-lab-panel input[type=number], .lora-lab-panel button {
  background: var(--comfy-input-bg, #333); color: var(--input-text, #ddd);
  border: 1px solid var(--border-color, #555); border-radius: 4px; font: inherit; padding: 1px 4px; }
.lora-lab-panel button { cursor: pointer; }
.lora-lab-panel .ll-toolbar { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; padding: 6px 10px; }
.lora-lab-panel .ll-family { color: var(--descrip-text, #999); }
.lora-lab-panel .ll-status { padding: 0 10px; }
.lora-lab-panel .ll-status div { margin: 4px 0; }
.lora-lab-panel .ll-status .ll-warning, .lora-lab-report .ll-warning { color: #f0b429; }
.lora-lab-panel .ll-status .ll-error { color: var(--error-text, #ff6b6b); }
.lora-lab-panel .ll-status .ll-note { color: var(--descrip-text, #999); }
.lora-lab-panel .ll-groups { display: flex; flex-wrap: wrap; gap: 10px; padding: 6px 10px 10px; overflow: auto; }
.lora-lab-panel fieldset { border: 1px solid var(--border-color, #555); border-radius: 6px; padding: 4px 6px;
  margin: 0; min-width: 180px; flex: 1 1 180px; }
.lora-lab-panel legend { padding: 0 4px; font-weight: 600; }
.lora-lab-panel .ll-row { display: grid; grid-template-columns: 46px 1fr 58px; gap: 4px; align-items: center; }
.lora-lab-panel .ll-row label { font-family: ui-monospace, monospace; }
.lora-lab-panel .ll-row input[type=range] { width: 100%; margin: 0; }
.lora-lab-panel .ll-row input[type=number] { width: 100%; box-sizing: border-box; }
.lora-lab-panel .ll-row.ll-symbolic label::after { content: " =" attr(data-token); color: #7fb3ff; }
.lora-lab-panel .ll-row.ll-follows { opacity: .6; }
.lora-lab-panel .ll-row.ll-changed label { color: #7fb3ff; }
.lora-lab-panel.ll-readonly .ll-row { opacity: .5; }
.lora-lab-report[hidden], .lora-lab-sweep[hidden], .lora-lab-rows[hidden], .lora-lab-triggers[hidden] { display: none !important; }
.lora-lab-report { box-sizing: border-box; width: 100%; max-width: 100%; min-width: 0; height: 100%; max-height: 220px;
  overflow: auto; padding: 4px 6px; background: var(--comfy-input-bg, #222); color: var(--input-text, #ddd);
  border-radius: 4px; font: 11px/1.3 ui-monospace, SFMono-Regular, Menlo, monospace; white-space: pre-wrap;
  overflow-wrap: anywhere; }
.lora-lab-report .ll-note { color: var(--descrip-text, #999); font-style: italic; }
.lg-node .lora-lab-report { max-height: 160px; }
.lora-lab-report .ll-title { font-weight: 700; }
.lora-lab-report .ll-heading { color: var(--descrip-text, #aaa); }
.lora-lab-report .ll-table-head { color: var(--descrip-text, #aaa); text-decoration: underline; }
.lora-lab-report .ll-table-total { font-weight: 700; }
.lora-lab-report .ll-warning { font-weight: 600; }
.lora-lab-sweep { box-sizing: border-box; width: 100%; max-width: 100%; min-width: 0; display: flex; flex-direction: column; gap: 4px;
  font: 11px/1.35 system-ui, sans-serif; color: var(--input-text, #ddd); }
.lora-lab-sweep .ll-stage { position: relative; width: 100%; line-height: 0; cursor: crosshair; }
.lora-lab-sweep .ll-stage img { display: block; width: 100%; height: auto; image-rendering: auto; }
.lora-lab-sweep .ll-mark { position: absolute; box-sizing: border-box; pointer-events: none; }
.lora-lab-sweep .ll-hover { border: 2px solid #7fb3ff; }
.lora-lab-sweep .ll-pinned { border: 2px solid #ffffff; }
.lora-lab-sweep .ll-break { border: 3px solid #ff4d4f; }
.lora-lab-sweep .ll-break::after { content: "break"; position: absolute; left: 0; top: 0; line-height: 1.2;
  font-size: 10px; padding: 0 3px; background: #ff4d4f; color: #fff; }
.lora-lab-sweep .ll-info { box-sizing: border-box; white-space: pre-wrap; overflow: auto; padding: 3px 5px;
  border-radius: 4px; line-height: 15px; background: var(--comfy-input-bg, #222); font-family: ui-monospace, monospace; }
.lora-lab-sweep .ll-bp { color: var(--descrip-text, #aaa); }
.lora-lab-sweep .ll-bp[data-kind=found] { color: #ff7875; }
.lora-lab-panel .ll-row.ll-untouched label { color: var(--descrip-text, #777); text-decoration: line-through; }
.lora-lab-panel .ll-row .ll-energy { height: 4px; grid-column: 2; background: #7fb3ff; border-radius: 2px; opacity: .8; }
.lora-lab-panel.ll-has-lora .ll-row .ll-energy[hidden] { display: block; visibility: hidden; }
.lora-lab-panel .ll-row .ll-energy[data-unknown] { background: repeating-linear-gradient(90deg, #7fb3ff 0 4px, transparent 4px 8px); }
.lora-lab-panel .ll-lora { color: var(--descrip-text, #999); padding: 0 10px; }
.lora-lab-rows { box-sizing: border-box; width: 100%; min-width: 0; display: flex; flex-direction: column; gap: 4px;
  font: 12px/1.3 system-ui, sans-serif; color: var(--input-text, #ddd); }
.lora-lab-rows .ll-lrow { display: grid; grid-template-columns: 18px minmax(60px, 1fr) 52px 52px 22px 22px 22px;
  gap: 3px; align-items: center; }
.lora-lab-rows .ll-lrow.ll-off > :not(input[type=checkbox]) { opacity: .45; }
.lora-lab-rows select, .lora-lab-rows input[type=number], .lora-lab-rows input[type=text], .lora-lab-rows button {
  box-sizing: border-box; min-width: 0; width: 100%; background: var(--comfy-input-bg, #333); color: var(--input-text, #ddd);
  border: 1px solid var(--border-color, #555); border-radius: 4px; font: inherit; padding: 1px 3px; }
.lora-lab-rows button { cursor: pointer; padding: 1px 0; }
.lora-lab-rows .ll-bw { grid-column: 2 / -1; display: grid; grid-template-columns: 1fr 22px; gap: 3px; }
.lora-lab-rows .ll-head { display: grid; grid-template-columns: 18px minmax(60px, 1fr) 52px 52px 72px; gap: 3px;
  color: var(--descrip-text, #999); font-size: 10px; }
.lora-lab-rows .ll-add { width: 100%; padding: 3px; }
.lora-lab-rows .ll-list { display: flex; flex-direction: column; gap: 4px; }
.lora-lab-rows .ll-rowwrap { display: flex; flex-direction: column; gap: 2px; }
.lora-lab-rows .ll-rowwrap .lora-lab-triggers { padding-left: 21px; }
.lora-lab-rows .ll-error { color: var(--error-text, #ff6b6b); }
.lora-lab-triggers { display: flex; flex-wrap: wrap; gap: 3px; align-items: center; min-width: 0;
  font: 11px/1.3 system-ui, sans-serif; color: var(--descrip-text, #aaa); }
.lora-lab-triggers button, .lora-lab-rows .lora-lab-triggers button { width: auto; background: #2d3b52; color: #cfe0ff;
  border: 1px solid #4a6285; border-radius: 10px; padding: 0 6px; cursor: pointer; font: inherit; }
.lora-lab-triggers button[data-inserted] { background: #2f4a2f; border-color: #4f7f4f; color: #d5f5d5; }
`;

export function ensureStyles(doc = document) {
  if (doc.getElementById(STYLE_ID)) return;
  const style = doc.createElement("style");
  style.id = STYLE_ID;
  style.textContent = CSS;
  doc.head.appendChild(style);
}
