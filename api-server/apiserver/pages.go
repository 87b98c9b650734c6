package apiserver

import (
	"html/template"
	"net/http"

	"spawner.dev/apis/lifecycle"
)

var pageTemplates = template.Must(template.New("pages").Parse(`
{{define "head"}}<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}}</title>
<style>body{font-family:system-ui,sans-serif;display:flex;align-items:center;justify-content:center;min-height:90vh;color:#333}
main{text-align:center}.s{color:#888;font-size:.9em}</style></head><body><main>{{end}}

{{define "awaiting-router"}}{{template "head" .}}
<h1>Starting your backend…</h1>
<p class="s" id="state">{{.Status.State}}</p>
<noscript><meta http-equiv="refresh" content="2"></noscript>
<script>
(function poll(){
  setTimeout(function(){
    fetch(location.href, {method: "HEAD", credentials: "same-origin", cache: "no-store"})
      .then(function(r){ if (r.status !== 503) { location.reload(); } else { poll(); } })
      .catch(poll);
  }, 1000);
})();
</script></main></body></html>{{end}}

{{define "awaiting-control"}}{{template "head" .}}
<h1>Starting your backend…</h1>
<p class="s" id="state">{{.Status.State}}</p>
<noscript><meta http-equiv="refresh" content="2"></noscript>
<script>
(function(){
  var el = document.getElementById("state");
  var fallback = function(){ setTimeout(function(){ location.reload(); }, 2000); };
  if (!window.EventSource) { fallback(); return; }
  var es = new EventSource("status/stream" + location.search);
  es.onmessage = function(ev){
    var st = JSON.parse(ev.data);
    el.textContent = st.state + (st.message ? ": " + st.message : "");
    if (st.state === {{.ReadyState}}) { es.close(); location.reload(); }
    if ({{.EndStates}}.indexOf(st.state) >= 0) { es.close(); }
  };
  es.onerror = function(){ es.close(); fallback(); };
})();
</script></main></body></html>{{end}}

{{define "unavailable-router"}}{{template "head" .}}
<h1>This backend is not available</h1>
<p class="s">It has ended, or the link is wrong. Ask the app that sent you here for a new one.</p>
</main></body></html>{{end}}

{{define "ended"}}{{template "head" .}}
<h1>This backend has ended</h1>
<p class="s">{{.Status.State}}{{if .Status.Reason}} ({{.Status.Reason}}){{end}}{{if .Status.Message}}: {{.Status.Message}}{{end}}</p>
</main></body></html>{{end}}
`))

const (
	awaitingRouterPage  = "awaiting-router"
	awaitingControlPage = "awaiting-control"
	endedPage           = "ended"
	// unavailableRouterPage says nothing of the backend's state: the router
	// answers with it before any token is checked.
	unavailableRouterPage = "unavailable-router"
)

func writePage(w http.ResponseWriter, status int, page, name string, st StatusResponse) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	pageTemplates.ExecuteTemplate(w, page, map[string]any{
		"Title": "spawner: " + name, "Status": st, "ReadyState": string(lifecycle.Ready), "EndStates": endStates,
	})
}

// endStates are the states after which the waiting page stops listening: the
// ending phases (lifecycle.IsEnding) and StateDeleted.
var endStates = func() []string {
	var out []string
	for _, m := range lifecycle.Milestones() {
		if lifecycle.IsEnding(m.Phase) {
			out = append(out, string(m.Phase))
		}
	}
	return append(out, StateDeleted)
}()
