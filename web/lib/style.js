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
.lora-lab-report { box-sizing: border-box; width: 100%; height: 100%; overflow: auto; padding: 4px 6px;
  background: var(--comfy-input-bg, #222); color: var(--input-text, #ddd); border-radius: 4px;
  font: 11px/1.3 ui-monospace, SFMono-Regular, Menlo, monospace; white-space: pre; }
.lora-lab-report .ll-title { font-weight: 700; }
.lora-lab-report .ll-heading { color: var(--descrip-text, #aaa); }
.lora-lab-report .ll-table-head { color: var(--descrip-text, #aaa); text-decoration: underline; }
.lora-lab-report .ll-table-total { font-weight: 700; }
.lora-lab-report .ll-warning { font-weight: 600; }
.lora-lab-sweep { box-sizing: border-box; width: 100%; display: flex; flex-direction: column; gap: 4px;
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
.lora-lab-sweep .ll-bp { color: #ff7875; }
`;

export function ensureStyles(doc = document) {
  if (doc.getElementById(STYLE_ID)) return;
  const style = doc.createElement("style");
  style.id = STYLE_ID;
  style.textContent = CSS;
  doc.head.appendChild(style);
}
