"""The report's inline stylesheet and script (kept apart from the HTML builder for readability)."""

PAGE_CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d1d9e0;--bg:#fff;--soft:#f6f8fa;--ok:#1a7f37;--no:#cf222e;--band:#bf8700}
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);
 background:var(--soft);margin:0;padding:24px 32px;max-width:1100px}
h1{font-size:24px;margin:0 0 4px}h1 .plan{font-weight:400;color:var(--muted);font-size:16px;margin-left:8px}
h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid var(--line);padding-bottom:4px}
header,section>article,section>table{background:var(--bg);border:1px solid var(--line);border-radius:8px}
header{padding:16px 20px}
.summary{font-size:16px;font-weight:600;margin:6px 0 12px}
table{border-collapse:collapse;width:100%}
.facts th{text-align:left;color:var(--muted);font-weight:500;padding:2px 16px 2px 0;width:90px;vertical-align:top}
.facts td{padding:2px 0}
.ranked th,.ranked td{padding:6px 12px;border-bottom:1px solid var(--line);text-align:left}
.ranked th{background:var(--soft);font-weight:600;font-size:13px}
.ranked td.n{text-align:right;font-variant-numeric:tabular-nums;padding-right:4px}
.ranked svg.mini{vertical-align:middle}
ul.take li{margin:4px 0}
.ranked tr.rejected td{color:var(--muted)}
.ranked td:last-child{white-space:nowrap}
a{color:#0969da;text-decoration:none}a:hover{text-decoration:underline}
.ok{color:var(--ok);font-weight:600}.no{color:var(--no);font-weight:600}
article.plan{padding:14px 18px;margin:0 0 16px}
article.plan.rejected{border-left:4px solid var(--no)}
article.plan h3{margin:0 0 8px;font-size:16px;display:flex;align-items:baseline;gap:10px;flex-wrap:wrap}
.rank{color:var(--muted);font-weight:500}.meta{color:var(--muted);font-weight:400;font-size:13px;margin-left:auto}
.badge{font-size:12px;border-radius:10px;padding:1px 8px;font-weight:600}
.badge.ok{background:#dafbe1;color:var(--ok)}.badge.no{background:#ffebe9;color:var(--no)}
.whynot{margin:0 0 8px;color:var(--no);font-size:14px}
svg.chart{display:block;margin:4px 0}
svg .side{font:600 13px system-ui,sans-serif;fill:var(--fg)}
svg .tick{font:11px system-ui,sans-serif;fill:var(--muted)}
svg .peak{font:600 12px system-ui,sans-serif;fill:var(--ok)}svg .peak.over{fill:var(--no)}
svg rect.capacity{fill:#fff;stroke:#8c959f;stroke-width:1}
svg rect.seg{stroke:#fff;stroke-width:0.5}
svg rect.band{fill:rgba(191,135,0,.18);stroke:var(--band);stroke-width:1}
svg path.whisker{stroke:var(--band);stroke-width:1.5;fill:none}
svg line.budget{stroke:var(--no);stroke-width:1.5;stroke-dasharray:4 3}
svg line.cap{stroke:#24292f;stroke-width:1.5}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;color:var(--muted);margin:2px 0 8px}
.lg i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px;vertical-align:-1px}
.lg i.hatch{background:repeating-linear-gradient(45deg,#fdecea 0 3px,#e57373 3px 5px)}
details{margin:6px 0}summary{cursor:pointer;font-weight:600;font-size:14px}
ul.why{margin:6px 0;padding-left:18px;font-size:14px}ul.why li{margin:4px 0}
.eff{font:600 11px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;border-radius:4px;padding:1px 5px;background:#eaeef2}
.eff.plus{background:#dafbe1;color:var(--ok)}.eff.minus{background:#fff8c5;color:#7d4e00}.eff.reject{background:#ffebe9;color:var(--no)}
.src,.note,.advice{color:var(--muted);font-size:13px}.advice{color:var(--fg)}
.code{position:relative;margin:8px 0}
pre{background:#0d1117;color:#e6edf3;border-radius:6px;padding:12px 14px;margin:0;overflow:auto;max-height:360px;
 font:12.5px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
button.copy{position:absolute;top:8px;right:8px;font:12px system-ui,sans-serif;padding:3px 10px;border-radius:5px;
 border:1px solid #3d444d;background:#21262d;color:#e6edf3;cursor:pointer}
button.copy:hover{background:#30363d}button.copy.done{background:var(--ok);border-color:var(--ok)}
footer{color:var(--muted);font-size:12px;margin:24px 0 8px}
"""

# Copy buttons (the Clipboard API where the page is a secure context, a hidden textarea otherwise),
# then every chart rect's drawn width recorded as data-drawn-px: the browser test compares those
# with data-gib (what the chart means) to check the drawing, not just the markup.
PAGE_JS = """
(function(){
  function copy(text, button){
    function done(){button.textContent='copied';button.classList.add('done');
      setTimeout(function(){button.textContent='copy';button.classList.remove('done');},1500);}
    if(navigator.clipboard && window.isSecureContext){navigator.clipboard.writeText(text).then(done,fallback);}
    else{fallback();}
    function fallback(){var t=document.createElement('textarea');t.value=text;document.body.appendChild(t);
      t.select();try{document.execCommand('copy');done();}finally{document.body.removeChild(t);}}
  }
  document.querySelectorAll('button.copy').forEach(function(b){
    b.addEventListener('click',function(){copy(b.parentNode.querySelector('code').textContent,b);});
  });
  document.querySelectorAll('svg.chart rect[data-gib]').forEach(function(r){
    r.setAttribute('data-drawn-px', r.getBoundingClientRect().width.toFixed(3));
  });
  document.documentElement.setAttribute('data-measured','1');
})();
"""
