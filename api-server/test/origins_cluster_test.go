//go:build cluster

package test

import (
	"context"
	"encoding/json"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"spawner.dev/common/clustertest/browser"
)

// open loads a demo room page (a backend URL, token included: the browser
// then holds the backend's access-token cookie).
func open(t *testing.T, tab context.Context, backendURL string) {
	t.Helper()
	browser.Run(t, tab, 30*time.Second, "the demo room at "+backendURL, chromedp.Navigate(backendURL),
		browser.WaitFor(browser.DemoRoomShown))
}

// fetchFrom loads the /fetch page of the backend at backendURL (the demo's,
// e2e/demo/chat/fetch.html), whose script fetches target with the browser's
// cookies, and returns the page's outcome ("read" or "blocked") and what it
// shows (the status and answer, or the error).
func fetchFrom(t *testing.T, tab context.Context, backendURL, target string) (outcome, shown string) {
	t.Helper()
	page := strings.SplitN(backendURL, "?", 2)[0] + "fetch?url=" + url.QueryEscape(target)
	browser.Run(t, tab, 30*time.Second, "the fetch page reporting an outcome", chromedp.Navigate(page),
		browser.WaitFor(`document.getElementById("outcome").textContent !== "pending"`))
	got, err := chromedp.Run(tab, chromedp.Evaluate[[]string](`[document.getElementById("outcome").textContent, document.getElementById("body").textContent]`))
	if err != nil || len(got) != 2 {
		t.Fatalf("reading the fetch page: %v %v", got, err)
	}
	return got[0], got[1]
}

// requests is the demo's request counts of a backend, asked through the
// host-mode router with the backend's own token.
func (h hostModeAPI) requests(t *testing.T, backendURL string) int64 {
	t.Helper()
	base, tok, _ := strings.Cut(backendURL, "?")
	code, body, _ := getBody(t, h.client(), base+"stats?"+tok, nil)
	var s struct{ Requests int64 }
	if code != 200 || json.Unmarshal([]byte(body), &s) != nil {
		t.Fatalf("stats of %s: %d %s", base, code, body)
	}
	return s.Requests
}

// TestHostModeIsolatesOriginsInChromium: a real browser, where a user has
// backend B open, loads a page served by backend A whose script fetches B.
// In path mode (/p/<name>/, one origin for every backend) the script reads
// B's answer: the browser sends B's cookie (same origin) and hands the
// response over. In host mode (<name>.backends.test, Chromium resolving the
// wildcard to the router with --host-resolver-rules, as wildcard DNS would)
// the same fetch is cross-origin: the request still reaches B, but the
// browser withholds the answer from A's script (the router adds no CORS
// header), while A's page reads its own origin as before. docs/production.md,
// "Origins", describes the difference this shows.
func TestHostModeIsolatesOriginsInChromium(t *testing.T) {
	e := setup(t)
	h := e.startHostMode()
	routerIP, _, _ := net.SplitHostPort(h.routerAddr)
	chromium := browser.New(t,
		chromedp.Flag("host-resolver-rules", "MAP *."+hostSuffix+" "+routerIP),
		// Navigations to http:// are tried on https:// first otherwise,
		// which costs a failed connection per page here.
		chromedp.Flag("disable-features", "HttpsUpgrades"),
	)

	_, pa := e.spawn(e.a.control, demoBody(""))
	_, pb := e.spawn(e.a.control, demoBody(""))
	_, ha := e.spawn(h.control, demoBody(""))
	_, hb := e.spawn(h.control, demoBody(""))
	for _, sr := range []spawnResp{pa, pb} {
		e.waitReady(e.a.control, sr.Name)
	}
	for _, sr := range []spawnResp{ha, hb} {
		e.waitReady(h.control, sr.Name)
	}

	// Path mode: A's script reads B (B's /headers shows B's prefix).
	tab, _ := browser.NewTab(t, chromium)
	open(t, tab, pb.URL)
	open(t, tab, pa.URL)
	pathB := strings.SplitN(pb.URL, "?", 2)[0]
	outcome, shown := fetchFrom(t, tab, pa.URL, pathB+"headers")
	t.Logf("path mode, a page of %s fetching %sheaders: %s, %.200s", pa.Name, pathB, outcome, shown)
	if outcome != "read" || !strings.HasPrefix(shown, "200 ") || !strings.Contains(shown, "/p/"+pb.Name) {
		t.Errorf("path mode: A's page got %s %.300q, want to read B's 200 answer (one origin: path mode does not isolate)", outcome, shown)
	}

	// Host mode: the same fetch reaches B, with B's cookie, and B answers,
	// but A's script cannot read it.
	hostB := strings.SplitN(hb.URL, "?", 2)[0]
	tab, _ = browser.NewTab(t, chromium)
	open(t, tab, hb.URL)
	open(t, tab, ha.URL) // B's page, and its WebSocket, are gone
	before := h.requests(t, hb.URL)
	outcome, shown = fetchFrom(t, tab, ha.URL, hostB+"headers")
	t.Logf("host mode, a page of %s fetching %sheaders: %s, %.200s", ha.Name, hostB, outcome, shown)
	if outcome != "blocked" || !strings.Contains(shown, "TypeError") {
		t.Errorf("host mode: A's page got %s %.300q, want the browser to block the read (TypeError)", outcome, shown)
	}
	if after := h.requests(t, hb.URL); after < before+1 {
		t.Errorf("host mode: B served %d requests before A's fetch and %d after: the fetch never reached B, so the test shows a refusal, not the browser's block", before, after)
	}

	// The page does read its own origin in host mode: what blocks the fetch
	// above is the origin, not the page or the router.
	hostA := strings.SplitN(ha.URL, "?", 2)[0]
	outcome, shown = fetchFrom(t, tab, ha.URL, hostA+"headers")
	if outcome != "read" || !strings.HasPrefix(shown, "200 ") || !strings.Contains(shown, ha.Name+"."+hostSuffix) {
		t.Errorf("host mode: A's page fetching its own /headers got %s %.300q, want to read it", outcome, shown)
	}
}
