// Package browser drives a headless Chromium for the tests that need a real
// browser's behaviour: the end-to-end browser session (e2e/lifecycle) and
// the origin isolation of host mode (api-server/test). scripts/ensure-browser.sh
// installs Debian's Chromium when none is on PATH; `make e2e` and
// `make test-cluster` run it.
package browser

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// ChromiumPath finds the browser: SPAWNER_E2E_CHROMIUM, else chromium or
// google-chrome on PATH.
func ChromiumPath(t testing.TB) string {
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

// New starts a headless Chromium with a fresh profile for the test, for as
// long as the test runs. flags are extra command-line switches, e.g.
// chromedp.Flag("host-resolver-rules", "MAP *.backends.test 127.0.0.1").
func New(t testing.TB, flags ...chromedp.ExecAllocatorOption) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(ChromiumPath(t)),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.NoSandbox, // CI runs as root
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
	)
	opts = append(opts, flags...)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	browser, cancelBrowser := chromedp.NewContext(alloc, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() { cancelBrowser(); cancelAlloc() })
	// The first run starts the browser, for as long as this context lives.
	if err := chromedp.Do(browser); err != nil {
		t.Fatalf("starting Chromium: %v", err)
	}
	return browser
}

// NewTab opens a tab; closeTab closes it, ending its page's connections.
func NewTab(t testing.TB, browser context.Context) (tab context.Context, closeTab func()) {
	t.Helper()
	tab, closeTab = chromedp.NewContext(browser)
	t.Cleanup(closeTab)
	if err := chromedp.Do(tab); err != nil {
		t.Fatalf("opening a tab: %v", err)
	}
	return tab, closeTab
}

// Run runs browser steps in a tab with a deadline and fails the test with
// what was being waited for and what the tab shows.
func Run(t testing.TB, tab context.Context, timeout time.Duration, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tab, timeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v (the tab shows %.300q)", what, err, Shown(tab))
	}
}

// Shown is the tab's location and text, for failure messages.
func Shown(tab context.Context) string {
	ctx, cancel := context.WithTimeout(tab, 5*time.Second)
	defer cancel()
	shown, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.location.href + " :: " + (document.body ? document.body.innerText : "")`))
	return shown
}

// WaitFor evaluates a JavaScript expression in the tab every 50 ms until it
// is true; the deadline is Run's. Unlike chromedp.Poll it carries on across
// navigations, which spawner's waiting pages do by design.
func WaitFor(expression string) chromedp.Action[chromedp.Void] {
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

// DemoRoomShown is true once the tab shows the demo app's room page
// (e2e/demo/chat/index.html). Its title is "spawner demo room" as served and
// becomes "spawner demo: <room>" as soon as the page's script has fetched its
// session, which can be before a poll of the title: waiting for the first
// title alone failed CI once (the tab showed the room, connected).
const DemoRoomShown = `document.title === "spawner demo room" || document.title.startsWith("spawner demo: ")`
