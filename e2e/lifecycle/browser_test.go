//go:build cluster

package lifecycle

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"spawner.dev/e2e/framework"
)

// chromiumPath finds the browser: SPAWNER_E2E_CHROMIUM, else chromium or
// google-chrome on PATH (scripts/ensure-browser.sh installs Debian's).
func chromiumPath(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("SPAWNER_E2E_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no Chromium found: install it (scripts/ensure-browser.sh does, with apt) or set SPAWNER_E2E_CHROMIUM to a Chrome/Chromium binary")
	return ""
}

// newBrowser starts a headless Chromium with a fresh profile for the test.
func newBrowser(t testing.TB) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.NoSandbox, // CI runs as root
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
	)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	browser, cancelBrowser := chromedp.NewContext(alloc, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() { cancelBrowser(); cancelAlloc() })
	// The first run starts the browser, for as long as this context lives.
	if err := chromedp.Do(browser); err != nil {
		t.Fatalf("starting Chromium: %v", err)
	}
	return browser
}

// newTab opens a tab; closeTab closes it, ending its page's connections.
func newTab(t testing.TB, browser context.Context) (tab context.Context, closeTab func()) {
	t.Helper()
	tab, closeTab = chromedp.NewContext(browser)
	t.Cleanup(closeTab)
	if err := chromedp.Do(tab); err != nil {
		t.Fatalf("opening a tab: %v", err)
	}
	return tab, closeTab
}

// run runs browser steps in a tab with a deadline and fails the test with
// what was being waited for and what the tab shows.
func run(t testing.TB, tab context.Context, timeout time.Duration, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tab, timeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		shown, _ := chromedp.Run(tab, chromedp.Evaluate[string](`document.location.href + " :: " + (document.body ? document.body.innerText : "")`))
		t.Fatalf("%s: %v (the tab shows %.300q)", what, err, shown)
	}
}

// waitFor evaluates a JavaScript expression in the tab every 50 ms until it
// is true; the deadline is run's. Unlike chromedp.Poll it carries on across
// navigations, which the waiting pages do by design.
func waitFor(expression string) chromedp.Action[chromedp.Void] {
	evaluate := chromedp.Evaluate[bool](expression)
	return func(ctx context.Context, target *chromedp.Target) (chromedp.Void, error) {
		for {
			ok, err := evaluate(ctx, target)
			if err == nil && ok {
				return chromedp.Void{}, nil
			}
			select {
			case <-ctx.Done():
				return chromedp.Void{}, fmt.Errorf("%s still not true (last evaluation: %v, %v): %w", expression, ok, err, ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}

// TestBrowserSession is the lifecycle as a real browser lives it: it opens
// the ready URL before the backend is up and waits on its page, lands on the
// app with the token turned into a cookie, chats over WebSocket with a second
// tab, keeps the backend alive past its grace period while the tabs are
// open, and finds it ended once they are closed.
func TestBrowserSession(t *testing.T) {
	e := framework.Deployed(t)
	const grace = 5
	browser := newBrowser(t)
	// The app listens 3 s after it starts, so the browser surely waits.
	backend := e.Spawn(t, framework.SpawnRequest{
		Image:              framework.DemoImage,
		Env:                map[string]string{"DEMO_LISTEN_DELAY_MS": "3000"},
		GracePeriodSeconds: framework.Seconds(grace),
	})

	// Straight to the ready URL: the waiting page follows the status stream
	// with EventSource, shows the phases, and reloads itself into a redirect
	// to the app once Ready.
	first, closeFirst := newTab(t, browser)
	run(t, first, 90*time.Second, "the waiting page showing the Running phase",
		chromedp.Navigate(backend.ReadyURL),
		waitFor(`document.body.innerText.includes("Starting your backend") && document.getElementById("state").textContent.startsWith("Running")`),
	)
	run(t, first, 90*time.Second, "the waiting page turning into the demo room",
		waitFor(`document.title === "spawner demo room"`),
	)
	run(t, first, 20*time.Second, "the demo room's WebSocket connecting",
		waitFor(`document.getElementById("state").textContent === "connected"`),
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
	second, closeSecond := newTab(t, browser)
	bare := strings.SplitN(backend.URL, "?", 2)[0]
	run(t, second, 30*time.Second, "a second tab on the bare URL (cookie only)",
		chromedp.Navigate(bare),
		waitFor(`document.getElementById("state").textContent === "connected"`),
	)
	waitForMembers(t, backend.URL, 2)

	run(t, first, 10*time.Second, "sending from the first tab",
		chromedp.SendKeys("#text", "hello from a real browser"),
		chromedp.Click("#form button"), // a real click, so the page's submit handler runs
	)
	for name, tab := range map[string]context.Context{"first": first, "second": second} {
		run(t, tab, 10*time.Second, fmt.Sprintf("the message shown in the %s tab", name),
			waitFor(`document.getElementById("log").textContent.includes("hello from a real browser")`))
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
	third, _ := newTab(t, browser)
	run(t, third, 30*time.Second, "the bare URL after the backend ended",
		chromedp.Navigate(bare),
		waitFor(`document.body && document.body.innerText.includes("This backend is not available")`),
	)
}
