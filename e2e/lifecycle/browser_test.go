//go:build cluster

package lifecycle

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"spawner.dev/common/clustertest/browser"
	"spawner.dev/e2e/framework"
)

// TestBrowserSession is the lifecycle as a real browser lives it: it opens
// the ready URL before the backend is up and waits on its page, lands on the
// app with the token turned into a cookie, chats over WebSocket with a second
// tab, keeps the backend alive past its grace period while the tabs are
// open, and finds it ended once they are closed.
func TestBrowserSession(t *testing.T) {
	e := framework.Deployed(t)
	const grace = 5
	chromium := browser.New(t)
	// The app listens 3 s after it starts, so the browser surely waits.
	backend := e.Spawn(t, framework.SpawnRequest{
		Image:              framework.DemoImage,
		Env:                map[string]string{"DEMO_LISTEN_DELAY_MS": "3000"},
		GracePeriodSeconds: framework.Seconds(grace),
	})

	// Straight to the ready URL: the waiting page follows the status stream
	// with EventSource, shows the phases, and reloads itself into a redirect
	// to the app once Ready.
	first, closeFirst := browser.NewTab(t, chromium)
	browser.Run(t, first, 90*time.Second, "the waiting page showing the Running phase",
		chromedp.Navigate(backend.ReadyURL),
		browser.WaitFor(`document.body.innerText.includes("Starting your backend") && document.getElementById("state").textContent.startsWith("Running")`),
	)
	browser.Run(t, first, 90*time.Second, "the waiting page turning into the demo room",
		browser.WaitFor(browser.DemoRoomShown),
	)
	browser.Run(t, first, 20*time.Second, "the demo room's WebSocket connecting",
		browser.WaitFor(`document.getElementById("state").textContent === "connected"`),
	)
	landed, err := chromedp.Run(first, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(landed, strings.SplitN(backend.URL, "?", 2)[0]) {
		t.Fatalf("the browser landed on %s, want the backend URL %s", landed, backend.URL)
	}

	// The second tab has no token in its URL: the cookie scoped to
	// /p/<name>/ lets it in, WebSocket included.
	second, closeSecond := browser.NewTab(t, chromium)
	bare := strings.SplitN(backend.URL, "?", 2)[0]
	browser.Run(t, second, 30*time.Second, "a second tab on the bare URL (cookie only)",
		chromedp.Navigate(bare),
		browser.WaitFor(`document.getElementById("state").textContent === "connected"`),
	)
	waitForMembers(t, backend.URL, 2)

	browser.Run(t, first, 10*time.Second, "sending from the first tab",
		chromedp.SendKeys("#text", "hello from a real browser"),
		chromedp.Click("#form button"), // a real click, so the page's submit handler runs
	)
	for name, tab := range map[string]context.Context{"first": first, "second": second} {
		browser.Run(t, tab, 10*time.Second, fmt.Sprintf("the message shown in the %s tab", name),
			browser.WaitFor(`document.getElementById("log").textContent.includes("hello from a real browser")`))
	}

	// Open tabs are use, however quiet: the backend outlives its grace period.
	time.Sleep((grace + 3) * time.Second)
	var status framework.StatusEvent
	e.Do(t, "GET", "/backend/"+backend.Name+"/status", nil, &status)
	if status.State != "Ready" {
		t.Fatalf("with two tabs open for %ds past a %ds grace period the backend is %+v", grace+3, grace, status)
	}

	// Closing the tabs ends the sockets; after the grace period the backend
	// is swept and deleted, and the browser finds it ended.
	closeFirst()
	closeSecond()
	e.WaitForState(t, backend.Name, "Swept", (grace+30)*time.Second)
	e.WaitGone(t, backend.Name, 60*time.Second)
	third, _ := browser.NewTab(t, chromium)
	browser.Run(t, third, 30*time.Second, "the bare URL after the backend ended",
		chromedp.Navigate(bare),
		browser.WaitFor(`document.body && document.body.innerText.includes("This backend is not available")`),
	)
}
